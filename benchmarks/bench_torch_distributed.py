"""Cost of synchronizing RBN: a DDP training step of an RBN resnet18 with and without SyncRBN.

Two processes (gloo on CPU by default; ``--backend nccl --device cuda`` on GPUs) train the
same network under DistributedDataParallel, once with every RepresentativeBatchNorm2d
converted to SyncRepresentativeBatchNorm (batch statistics over both processes: one
all_reduce per layer forward and one backward) and once unsynchronized (each process
normalizes its own shard). Steps alternate round by round, on the same batch; each step's
time is the slowest process's (the step ends for the job when the last process ends it).
Medians and their ratio are printed side by side.

    python benchmarks/bench_torch_distributed.py [--processes 2] [--batch 16] [--size 64] \
        [--repeats 11] [--threads N] [--backend gloo] [--device cpu]

On a machine shared with other work the numbers move: compare the ratio, not the times.
"""

import argparse
import datetime
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from rbn_torch import SyncRepresentativeBatchNorm
from rbn_torch.models import resnet18

VARIANTS = ("sync", "local")


def step_time(model, optimizer, x, labels, device):
    """Seconds of one training step, the slowest process's."""
    dist.barrier()
    start = time.perf_counter()
    optimizer.zero_grad()
    F.cross_entropy(model(x), labels).backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64,
                           device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


def worker(rank, args, port):
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.processes, timeout=datetime.timedelta(seconds=300))
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device(args.device)
    models = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = resnet18(num_classes=10)
        if variant == "sync":
            model = SyncRepresentativeBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model.to(device),
                                                          device_ids=[rank] if device.type == "cuda" else None)
        models[variant] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    times = {variant: [] for variant in VARIANTS}
    for round_ in range(args.warmup + args.repeats):
        for variant in VARIANTS:
            seconds = step_time(*models[variant], x, labels, device)
            if round_ >= args.warmup:
                times[variant].append(seconds)
    if rank == 0:
        medians = {variant: statistics.median(values) for variant, values in times.items()}
        print(f"resnet18 training step, {args.processes} processes x batch {args.batch} x {args.size}x{args.size}, "
              f"{args.backend} on {args.device}, {torch.get_num_threads()} threads each, "
              f"median of {args.repeats}")
        print(f"{'SyncRBN (ms)':>14} {'RBN, unsynced (ms)':>20} {'ratio':>7}")
        print(f"{medians['sync'] * 1e3:14.1f} {medians['local'] * 1e3:20.1f} "
              f"{medians['sync'] / medians['local']:7.3f}")
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="per process")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(worker, args=(args, port), nprocs=args.processes, start_method="spawn")


if __name__ == "__main__":
    main()
