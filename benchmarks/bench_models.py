"""The cost of RBN in a whole training step: a zoo network with RBN against the same network with
the framework's own BatchNorm.

One step is forward, cross-entropy loss, backward and an SGD step with momentum 0.9, in float32
on CPU. Time: both networks step in the same process, interleaved round by round after a warm-up
(20 rounds for MindSpore Graph mode, whose compiled step with RBN's Cell ``bprop`` took ~15 calls
to settle while the kernel was inlined into every layer; 3 otherwise), and the table gives the
median of the per-round ratios rbn / bn and their spread (min-max).
Memory: each network steps alone in a fresh child process, and its peak resident set size is
reported (the frameworks' CPU allocators keep no peak figure of their own).

    python benchmarks/bench_models.py --framework torch --arch resnet50 [--batch 8 --size 112]
    python benchmarks/bench_models.py --framework mindspore --mode graph    # ms.jit on the step
    python benchmarks/bench_models.py --framework mindspore --launch-blocking  # PyNative, ops run synchronously
    python benchmarks/bench_models.py --framework jittor --arch resnet18 --size 64
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from rbn import checkpoint, frameworks

NUM_CLASSES = 10
LEARNING_RATE = 0.01


def torch_step(model):
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    model.train()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, lambda array: torch.from_numpy(array)


def jittor_step(model):
    import jittor as jt

    optimizer = jt.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
    model.train()

    def step(x, y):
        loss = jt.nn.cross_entropy_loss(model(x), y)
        optimizer.step(loss)
        return loss.item()  # synchronizes: Jittor is lazy

    return step, jt.array


def mindspore_step(model, graph):
    import mindspore as ms

    optimizer = ms.nn.Momentum(model.trainable_params(), learning_rate=LEARNING_RATE, momentum=0.9)
    model.set_train(True)

    def loss_of(x, y):  # not a lambda: ms.jit parses the source of what it compiles
        return ms.ops.cross_entropy(model(x), y)

    grad = ms.value_and_grad(loss_of, None, optimizer.parameters)

    def train(x, y):
        loss, grads = grad(x, y)
        optimizer(grads)
        return loss

    compiled = ms.jit(train) if graph else train

    def step(x, y):
        return float(compiled(x, y).asnumpy())

    return step, ms.Tensor


def make_step(args, batchnorm):
    model = checkpoint.build(args.framework, args.arch, NUM_CLASSES, batchnorm=batchnorm)
    if args.framework == "torch":
        step, tensor = torch_step(model)
    elif args.framework == "jittor":
        step, tensor = jittor_step(model)
    else:
        step, tensor = mindspore_step(model, args.mode == "graph")
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32))
    y = tensor(rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32 if args.framework == "mindspore" else np.int64))
    return lambda: step(x, y)


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def peak_memory(args, norm):
    """Peak RSS (MiB) of a fresh process that steps the ``norm`` network ``--memory-steps`` times."""
    command = [sys.executable, __file__, "--child", norm, *sys.argv[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{norm} child failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def prepare(args):
    """Import the framework in the safe order and apply ``--launch-blocking``."""
    frameworks.prepare_import(args.framework)
    if args.launch_blocking:
        import mindspore

        mindspore.runtime.launch_blocking()


def child(args):
    prepare(args)
    step = make_step(args, batchnorm=args.child == "bn")
    for _ in range(args.memory_steps):
        step()
    print(json.dumps({"peak_mib": peak_rss_mib()}))


def peak_rss_mib():
    """This process's peak RSS in MiB. Linux: VmHWM, which starts afresh at exec; ru_maxrss keeps
    the parent's RSS at fork as a floor, so every child of a large parent reported the parent's."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=frameworks.names(), default="torch")
    parser.add_argument("--arch", choices=checkpoint.ARCHITECTURES, default="resnet50")
    parser.add_argument("--mode", choices=("pynative", "graph"), default="pynative", help="MindSpore only")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=112, help="input height and width")
    parser.add_argument("--warmup", type=int, help="untimed interleaved rounds; default 3, MindSpore Graph mode 20 "
                        "(a fresh ms.jit step with RBN's kernel inlined ran 1.5-4x slower for its first ~15 calls)")
    parser.add_argument("--repeats", type=int, default=9, help="timed interleaved rounds")
    parser.add_argument("--launch-blocking", action="store_true",
                        help="MindSpore only: mindspore.runtime.launch_blocking() first, for both networks (in "
                        "PyNative on CPU RBN's step then waits on no asynchronous queue, docs/mindspore.md)")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--child", choices=("rbn", "bn"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.launch_blocking and args.framework != "mindspore":
        parser.error(f"--launch-blocking is a MindSpore setting (got --framework {args.framework})")
    if args.warmup is None:
        args.warmup = 20 if args.framework == "mindspore" and args.mode == "graph" else 3
    if args.child:
        return child(args)
    prepare(args)
    steps = {"rbn": make_step(args, batchnorm=False), "bn": make_step(args, batchnorm=True)}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for round_index in range(args.repeats):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))  # no fixed first
        for name in order:
            times[name].append(timed(steps[name]))
    ratios = [rbn / bn for rbn, bn in zip(times["rbn"], times["bn"])]
    mode = f" {args.mode}{' launch_blocking' if args.launch_blocking else ''}" if args.framework == "mindspore" else ""
    label = f"{args.framework}{mode} {args.arch}, " \
            f"batch {args.batch} at {args.size}x{args.size}"
    print(f"{label}: step rbn {statistics.median(times['rbn']) * 1e3:.1f} ms, "
          f"bn {statistics.median(times['bn']) * 1e3:.1f} ms; rbn / bn median {statistics.median(ratios):.3f}x "
          f"(spread {min(ratios):.3f}-{max(ratios):.3f}, {args.repeats} rounds)")
    if not args.no_memory:
        rbn, bn = peak_memory(args, "rbn"), peak_memory(args, "bn")
        print(f"{label}: peak RSS rbn {rbn:.0f} MiB, bn {bn:.0f} MiB; rbn / bn {rbn / bn:.3f}x")


if __name__ == "__main__":
    main()
