"""Speed of rbn_mindspore's RepresentativeBatchNorm2d against mindspore.nn.BatchNorm2d.

Forward + backward (gradients of sum(y * dy) w.r.t. the input and every trainable parameter,
in training mode), float32, CPU. Each implementation runs side by side in one process,
interleaved round by round; the table gives the median time of each relative to
nn.BatchNorm2d measured in the same rounds, in PyNative and in Graph mode (``ms.jit`` on the
gradient function):

- rbn: the layer users get (K_m = K_s = mu_c, the paper's default; the channel path);
- rbn*: K_s = sigma_c (the paper's RBN*; still the channel path);
- literal: Eq. 12 as the authors wrote it (mean pooling, BatchNorm, sigmoid gate, affine)
  through MindSpore's autodiff, for reference.

    python benchmarks/bench_mindspore.py [--repeats 7] [--number 2] [--warmup 10] [--shapes 32,64,56,56 ...]

The channel path runs on rbn_mindspore's fused CPU kernels; ``RBN_MINDSPORE_CPU_KERNELS=0`` in
the environment measures the BatchNorm-primitive fallback instead. The header says which.
"""

import argparse
import statistics
import time

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from rbn_mindspore import RepresentativeBatchNorm2d, cpu_kernels

SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112))


class AuthorsRBN2d(nn.Cell):
    """The released formulation, literally (minus its in-place ``input +=``); for timing only."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.weight = Parameter(ops.ones((1, channels, 1, 1), ms.float32), name="weight")
        self.bias = Parameter(ops.zeros((1, channels, 1, 1), ms.float32), name="bias")
        self.center_weight = Parameter(ops.zeros((1, channels, 1, 1), ms.float32), name="center_weight")
        self.scale_weight = Parameter(ops.zeros((1, channels, 1, 1), ms.float32), name="scale_weight")
        self.scale_bias = Parameter(ops.ones((1, channels, 1, 1), ms.float32), name="scale_bias")

    def construct(self, x):
        x = x + self.center_weight * x.mean(axis=(2, 3), keep_dims=True)
        out = self.bn(x)
        gate = ops.sigmoid(self.scale_weight * out.mean(axis=(2, 3), keep_dims=True) + self.scale_bias)
        return self.weight * out * gate + self.bias


def step_function(layer, dy, jit):
    """Forward + backward of ``layer`` as one callable of x (compiled with ms.jit if ``jit``)."""
    def objective(x):
        return (layer(x) * dy).sum()

    grad = ms.grad(objective, 0, layer.trainable_params())
    if not jit:
        return grad

    @ms.jit
    def compiled(x):
        return grad(x)

    return compiled


def block(step, x, number):
    start = time.perf_counter()
    for _ in range(number):
        dx, _ = step(x)
    dx.asnumpy()  # wait for the last call: MindSpore runs ops asynchronously
    return (time.perf_counter() - start) / number


def measure(steps, x, repeats, number, warmup=10):
    """Median seconds per call of each step: blocks of ``number`` calls, interleaved.

    ``warmup`` untimed interleaved rounds first. After compiling, MindSpore (2.10, CPU) runs a
    Graph-mode rbn step 1.5-4x slower than its settled speed for its first ~15 calls, whatever
    the time elapsed (nn.BatchNorm2d's step settles after 1-2): a 2-call warm-up reported
    2-4.7x ratios that a second measurement in the same process put at 1.3-1.9x.
    """
    times = {name: [] for name in steps}
    for step in steps.values():  # compile
        block(step, x, 1)
    for _ in range(warmup):
        for step in steps.values():
            block(step, x, number)
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(block(step, x, number))
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per implementation")
    parser.add_argument("--number", type=int, default=2, help="calls per timed block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed interleaved rounds before timing")
    parser.add_argument("--shapes", nargs="*", default=None, help="N,C,H,W shapes (default: the torch issue's)")
    args = parser.parse_args()
    shapes = SHAPES if not args.shapes else [tuple(int(n) for n in s.split(",")) for s in args.shapes]
    print(f"mindspore {ms.__version__}, CPU, float32, forward + backward (training), "
          f"median of {args.repeats} blocks of {args.number} calls after {args.warmup} warm-up rounds; "
          f"channel path on {'the BatchNorm primitive' if cpu_kernels.instance_kernels() is None else 'fused CPU kernels'}")
    header = ("| shape | mode | bn ms | rbn / bn | rbn* (sigma_c) / bn | literal / bn |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape in shapes:
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal(shape).astype(np.float32))
        dy = Tensor(rng.standard_normal(shape).astype(np.float32))
        channels = shape[1]
        for mode, jit in (("PyNative", False), ("Graph (ms.jit)", True)):
            layers = {"bn": nn.BatchNorm2d(channels), "rbn": RepresentativeBatchNorm2d(channels),
                      "rbn*": RepresentativeBatchNorm2d(channels, scaling_stat="sigma_c"),
                      "literal": AuthorsRBN2d(channels)}
            steps = {name: step_function(layer.set_train(), dy, jit) for name, layer in layers.items()}
            medians = measure(steps, x, args.repeats, args.number, args.warmup)
            bn = medians["bn"]
            print(f"| {shape} | {mode} | {bn * 1e3:.1f} | {medians['rbn'] / bn:.2f}x | "
                  f"{medians['rbn*'] / bn:.2f}x | {medians['literal'] / bn:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
