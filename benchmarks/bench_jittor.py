"""Forward + backward time of rbn_jittor's RBN relative to ``jittor.nn.BatchNorm2d`` (CPU).

Every layer runs side by side in one process on the same input, after warm-up (Jittor
compiles a kernel per shape on first use); the ratio of medians is printed per shape.
"authors'" is the released Jittor RBN written out (pooled means, Jittor's BatchNorm, a
sigmoid gate), for reference; "literal" is our Eq. 12 path with autodiff (used for the
spatial statistics), to show what the affine form with its hand-written grad buys.

    python benchmarks/bench_jittor.py [--repeats 10] [--shapes 32,64,56,56 ...]
"""

import argparse
import statistics
import time

import numpy as np

import rbn_jittor  # sets Jittor's offline defaults before importing it
import jittor as jt
from rbn_jittor import functional as F
from rbn_reference import Options, Parameters

SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112))


class AuthorsRBN(jt.nn.BatchNorm):
    """The authors' Jittor formulation (github ShangHua-Gao/RBN, Jittor/rbn_jittor.py), restated."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.cm_weight = jt.zeros((1, num_features, 1, 1))
        self.sm_weight = jt.zeros((1, num_features, 1, 1))
        self.sm_bias = jt.ones((1, num_features, 1, 1))

    def execute(self, x):
        x = x + self.cm_weight * x.mean([2, 3], keepdims=True)
        out = super().execute(x)
        return out * jt.sigmoid(self.sm_weight * out.mean([2, 3], keepdims=True) + self.sm_bias)


class LiteralRBN(rbn_jittor.RepresentativeBatchNorm2d):
    def execute(self, x):
        params = Parameters(self.weight, self.bias, self.center_weight, self.scale_weight, self.scale_bias)
        return F._literal_path(x, params, None, Options(self.eps), None)[0]


def step_time(layer, x, dy):
    start = time.perf_counter()
    y = layer(x)
    grads = jt.grad((y * dy).sum(), [x] + [p for p in layer.parameters() if not p.is_stop_grad()])
    jt.sync(grads + [y])
    jt.sync_all()  # the running-statistics updates too
    return time.perf_counter() - start


def bench(shape, repeats, warmup):
    rng = np.random.default_rng(0)
    x = jt.array(rng.normal(1.0, 2.0, shape).astype(np.float32))
    dy = jt.array(rng.standard_normal(shape).astype(np.float32))
    layers = {"BatchNorm2d": jt.nn.BatchNorm2d(shape[1]),
              "RBN (ours)": rbn_jittor.RepresentativeBatchNorm2d(shape[1]),
              "RBN literal": LiteralRBN(shape[1]),
              "authors' RBN": AuthorsRBN(shape[1])}
    times = {name: [] for name in layers}
    for _ in range(warmup):
        for name, layer in layers.items():
            step_time(layer, x, dy)
    for _ in range(repeats):  # interleaved, so load changes hit every layer alike
        for name, layer in layers.items():
            times[name].append(step_time(layer, x, dy))
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in SHAPES])
    args = parser.parse_args()
    print(f"jittor {jt.__version__}, float32, forward + backward, median of {args.repeats}")
    print("| shape | BatchNorm2d (ms) | RBN ours / BN | RBN literal / BN | authors' RBN / BN |")
    print("|---|---|---|---|---|")
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        medians = bench(shape, args.repeats, args.warmup)
        base = medians["BatchNorm2d"]
        ratios = " | ".join(f"{medians[name] / base:.2f}x" for name in list(medians)[1:])
        print(f"| {shape} | {base * 1e3:.1f} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
