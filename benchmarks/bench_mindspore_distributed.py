"""Cost of synchronizing RBN in MindSpore: a data-parallel training step of an RBN resnet18 with and
without SyncRepresentativeBatchNorm, 2 processes on MindSpore's CPU collectives (mccl).

The script starts its own job (a scheduler and the workers, through the dynamic-cluster variables
MS_ROLE / MS_SCHED_HOST / MS_SCHED_PORT / MS_WORKER_NUM, bounded by ``--timeout``). Each worker
trains the same network in PyNative under ``ParallelMode.DATA_PARALLEL`` (``TrainOneStepCell``
averages the gradients over the processes), once with every RepresentativeBatchNorm2d converted
by ``SyncRepresentativeBatchNorm.convert_sync_batchnorm`` (batch statistics over both processes)
and once unsynchronized. Steps alternate round by round on the same batch; a step's time is the
slowest process's. Medians and their ratio are printed side by side.

    python benchmarks/bench_mindspore_distributed.py [--processes 2] [--batch 16] [--size 64] \
        [--repeats 11] [--warmup 3] [--timeout 1200]

On a machine shared with other work the numbers move: compare the ratio, not the times.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

VARIANTS = ("sync", "local")


def worker(args):
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops
    from mindspore.communication import get_group_size, get_rank, init

    from rbn_mindspore import SyncRepresentativeBatchNorm
    from rbn_mindspore.models import resnet18

    ms.set_context(mode=ms.PYNATIVE_MODE)
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    # Every process's time in its own slot, summed: on CPU, AllReduce takes SUM only
    # ("AllReduce only support reduce sum on CPU, but got max").
    total = ops.AllReduce(ops.ReduceOp.SUM)

    def slowest(seconds):
        slots = np.zeros(world, np.float32)
        slots[rank] = seconds
        return float(total(ms.Tensor(slots)).asnumpy().max())
    steps = {}
    for variant in VARIANTS:
        ms.set_seed(0)
        net = resnet18(num_classes=10)
        if variant == "sync":
            net = SyncRepresentativeBatchNorm.convert_sync_batchnorm(net)
        loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        steps[variant] = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9)).set_train()
    rng = np.random.default_rng(rank)
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, args.batch).astype(np.int32))
    times = {variant: [] for variant in VARIANTS}
    for round_ in range(args.warmup + args.repeats):
        for variant in VARIANTS:
            slowest(0.0)  # a barrier: every process starts together
            start = time.perf_counter()
            steps[variant](x, labels).asnumpy()
            elapsed = slowest(time.perf_counter() - start)
            if round_ >= args.warmup:
                times[variant].append(elapsed)
    if rank == 0:
        medians = {variant: statistics.median(values) for variant, values in times.items()}
        print(f"resnet18 training step (PyNative, data parallel), {args.processes} processes x batch {args.batch} x "
              f"{args.size}x{args.size}, mccl on CPU, median of {args.repeats}")
        print(f"{'SyncRBN (ms)':>14} {'RBN, unsynced (ms)':>20} {'ratio':>7}")
        print(f"{medians['sync'] * 1e3:14.1f} {medians['local'] * 1e3:20.1f} "
              f"{medians['sync'] / medians['local']:7.3f}", flush=True)


def launch(args):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A CPU collective waits MS_NODE_TIMEOUT (30 s by default) for a peer that may still be compiling.
    env = dict(os.environ, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(port), MS_WORKER_NUM=str(args.processes),
               MS_NODE_TIMEOUT=str(args.timeout),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    roles = [dict(MS_ROLE="MS_SCHED")] + [dict(MS_ROLE="MS_WORKER", MS_NODE_ID=str(rank))
                                          for rank in range(args.processes)]
    processes = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=dict(env, **role),
                                  stdout=None if role.get("MS_NODE_ID") == "0" else subprocess.DEVNULL)
                 for role in roles]
    try:
        for process in processes:
            process.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"the benchmark did not finish in {args.timeout} s")
    finally:
        for process in processes:
            process.kill()
    sys.exit(max(process.returncode for process in processes))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="per process")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds for the whole job")
    args = parser.parse_args()
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        from mindspore.communication import init
        init()
    elif os.environ.get("MS_ROLE") == "MS_WORKER":
        worker(args)
    else:
        launch(args)


if __name__ == "__main__":
    main()
