"""Speed and memory of rbn_torch's RepresentativeBatchNorm2d against nn.BatchNorm2d.

Forward + backward, float32, on CPU (or CUDA with --device cuda). Every implementation runs
side by side in one process, interleaved round by round, and the table gives the median
time of each relative to nn.BatchNorm2d measured in the same rounds:

- rbn eager / bn eager: the layer users get;
- authors' / bn eager: the authors' formulation written literally (pooling, batch_norm,
  sigmoid, elementwise), for reference;
- rbn compiled / bn compiled: both under torch.compile.

"saved" is what autograd keeps for backward beyond the input and the parameters, in MiB
(per-(n, c) vectors for RBN, whole feature maps for the literal formulation).

    python benchmarks/bench_torch.py [--repeats 11] [--number 3] [--threads N] [--no-compile]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from rbn_torch import RepresentativeBatchNorm2d

SHAPES = ((32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112))


class AuthorsRBN2d(nn.Module):
    """The released formulation, literally (minus its in-place ``input +=``); for timing only."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.center_weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale_weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale_bias = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x):
        x = x + self.center_weight * F.adaptive_avg_pool2d(x, 1)
        out = self.bn(x)
        gate = torch.sigmoid(self.scale_weight * F.adaptive_avg_pool2d(out, 1) + self.scale_bias)
        return self.weight * out * gate + self.bias


def saved_bytes(layer, x):
    """Bytes autograd saves for backward, beyond ``x`` and the layer's parameters."""
    known = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in known:
            seen[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x)
    return sum(seen.values())


def step(layer, x, dy):
    layer(x).backward(dy)


def measure(layers, x, dy, repeats, number, sync):
    """Median seconds per forward + backward of each layer: blocks of ``number`` calls, interleaved."""
    times = {name: [] for name in layers}
    for name, layer in layers.items():  # warm up (and compile)
        for _ in range(2):
            step(layer, x, dy)
    for _ in range(repeats):
        for name, layer in layers.items():
            sync()
            start = time.perf_counter()
            for _ in range(number):
                step(layer, x, dy)
            sync()
            times[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed blocks per implementation")
    parser.add_argument("--number", type=int, default=3, help="calls per timed block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, float32, "
          f"forward + backward, median of {args.repeats} blocks of {args.number} calls")
    header = ("| shape | bn eager ms | rbn eager / bn | authors' / bn | rbn compiled / bn compiled "
              "| saved MiB bn / rbn / authors' |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape in SHAPES:
        torch.manual_seed(0)
        channels = shape[1]
        x = torch.randn(shape, device=device).requires_grad_()
        dy = torch.randn(shape, device=device)
        layers = {"bn": nn.BatchNorm2d(channels), "rbn": RepresentativeBatchNorm2d(channels),
                  "authors": AuthorsRBN2d(channels)}
        layers = {name: layer.to(device) for name, layer in layers.items()}
        if not args.no_compile:
            layers["bn compiled"] = torch.compile(nn.BatchNorm2d(channels).to(device), dynamic=False)
            layers["rbn compiled"] = torch.compile(RepresentativeBatchNorm2d(channels).to(device), dynamic=False)
        medians = measure(layers, x, dy, args.repeats, args.number, sync)
        mib = {name: saved_bytes(layers[name], x) / 2**20 for name in ("bn", "rbn", "authors")}
        compiled = ("-" if args.no_compile else f"{medians['rbn compiled'] / medians['bn compiled']:.2f}x "
                    f"({medians['rbn compiled'] * 1e3:.1f} / {medians['bn compiled'] * 1e3:.1f} ms)")
        print(f"| {shape} | {medians['bn'] * 1e3:.1f} | {medians['rbn'] / medians['bn']:.2f}x | "
              f"{medians['authors'] / medians['bn']:.2f}x | {compiled} | "
              f"{mib['bn']:.3f} / {mib['rbn']:.3f} / {mib['authors']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
