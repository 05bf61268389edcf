"""The ``rbn`` command."""

import argparse
import json
import math
import sys
from typing import NamedTuple, Optional

from rbn_reference import STATISTICS, parity

from . import checkpoint, export, frameworks, training, trajectory
from .files import atomic_output

FRAMEWORK_GROUPS = ("forward (train)", "forward (eval)", "grad x", "grads of parameters", "running statistics")
REFERENCE_GROUPS = ("grad x (finite diff)", "grads of parameters (finite diff)")


class Row(NamedTuple):
    """One line of the parity report: a framework, a check group and a dtype, over every case."""

    framework: str
    version: str
    check: str
    dtype: str
    cases: int
    max_abs: Optional[float]  # None where nothing was compared
    max_rel: Optional[float]
    status: str  # PASS, FAIL, not installed, not supported
    detail: str


def summarize(framework, version, checks, groups, dtypes):
    """One row per (check group, dtype): the worst error over every case."""
    rows = []
    for group in groups:
        for dtype in dtypes:
            selected = [check for check in checks if check.group == group and check.dtype == dtype]
            if not selected:
                continue
            failed = [check for check in selected if not check.passed]
            cases = len({check.name.split(" ")[0] for check in selected})
            rows.append(Row(framework, version, group, dtype, cases,
                            max(check.max_abs for check in selected), max(check.max_rel for check in selected),
                            "FAIL" if failed else "PASS", str(failed[0]) if failed else ""))
    return rows


def reference_rows(full=True):
    """The oracle's self-check: analytic backward against central differences."""
    checks = [check for case in parity.cases(full) for mode in parity.MODES
              for check in parity.finite_difference_checks(case, mode == "train")]
    import numpy

    return summarize("reference", f"numpy {numpy.__version__}", checks, REFERENCE_GROUPS, ("float64",))


def framework_rows(framework, dtypes, full=True):
    """The report's rows for one registered framework: its checks summarized, or why there are none."""
    if not framework.installed():
        return [Row(framework.name, "", "-", "-", 0, None, None, "not installed", "")]
    adapter = frameworks.import_module(framework.name, framework.parity)
    checks, unsupported = [], []
    for dtype in dtypes:
        for mode in parity.MODES:
            for case in parity.cases(full):
                try:
                    checks += parity.check_case(adapter.run_module, case, dtype, mode == "train")
                except parity.NotSupported as reason:
                    unsupported.append(f"{case.id} {mode} {dtype}: {reason}")
    rows = summarize(framework.name, adapter.version(), checks, FRAMEWORK_GROUPS, dtypes)
    if unsupported:
        rows.append(Row(framework.name, adapter.version(), "not supported", "-", len(unsupported),
                        None, None, "not supported", "; ".join(unsupported)))
    return rows


def json_row(row):
    """A row as JSON can hold it: an infinite error (a shape or dtype mismatch) becomes null."""
    finite = lambda value: value if value is not None and math.isfinite(value) else None  # noqa: E731
    return {**row._asdict(), "max_abs": finite(row.max_abs), "max_rel": finite(row.max_rel)}


def format_table(rows):
    """The rows as an aligned text table, then the detail of every failure."""
    header = ("framework", "version", "check", "dtype", "cases", "max abs err", "max rel err", "status")
    lines = [header]
    for row in rows:
        errors = ("-", "-") if row.max_abs is None else (f"{row.max_abs:.2e}", f"{row.max_rel:.2e}")
        lines.append((row.framework, row.version, row.check, row.dtype, str(row.cases), *errors, row.status))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    details = [f"{row.framework} {row.check} [{row.dtype}]: {row.detail}" for row in rows if row.detail]
    return "\n".join(text + ([""] + details if details else []))


def run_parity(args):
    """``rbn parity``: the oracle's self-check and each framework's rows; exit status 1 on any FAIL."""
    rows = reference_rows(args.full)
    for name in args.framework or frameworks.names():
        print(f"rbn parity: checking {name} ...", file=sys.stderr, flush=True)
        try:
            rows += framework_rows(frameworks.get(name), args.dtype or parity.DTYPES, args.full)
        except Exception as error:  # a broken framework is a FAIL row, not a crash of the report
            rows.append(Row(name, "", "-", "-", 0, None, None, "FAIL", f"{type(error).__name__}: {error}"))
    if args.json is None:
        print(format_table(rows))
    else:
        text = json.dumps([json_row(row) for row in rows], indent=2, allow_nan=False)
        if args.json == "-":
            print(text)
        else:
            with atomic_output(args.json, force=True) as path, open(path, "w") as stream:
                stream.write(text + "\n")
    failed = [row for row in rows if row.status == "FAIL"]
    print(f"rbn parity: {len(rows) - len(failed)} rows passed or not applicable, {len(failed)} failed",
          file=sys.stderr)
    return 1 if failed else 0


def run_convert(args):
    """``rbn convert``: exit status 2 on bad input, 1 when ``--verify`` fails; nothing written then."""
    try:
        checks = checkpoint.convert(args.src, args.dst, src_format=args.src_format, dst_format=args.dst_format,
                                    arch=args.arch, to_rbn=args.to_rbn, centering_stat=args.centering_stat,
                                    scaling_stat=args.scaling_stat, verify_logits=args.verify, force=args.force)
    except checkpoint.CheckpointError as error:
        print(f"rbn convert: error: {error}", file=sys.stderr)
        return 2
    except checkpoint.VerificationError as error:
        print("\n".join(str(check) for check in error.checks))
        print(f"rbn convert: error: logits differ beyond the float32 tolerance; {args.dst} not written",
              file=sys.stderr)
        return 1
    for check in checks:
        print(check)
    print(f"rbn convert: wrote {args.dst}", file=sys.stderr)
    return 0


def run_export(args):
    """``rbn export``: exit status 2 on bad input, 1 when ``--verify`` fails; nothing written then."""
    if args.mode != "eval":
        print("rbn export: error: an exported network runs in eval mode (running statistics); training-mode "
              "batch statistics and their updates are not part of an inference graph", file=sys.stderr)
        return 2
    try:
        check = export.export(args.src, args.dst, arch=args.arch, src_format=args.src_format, opset=args.opset,
                              exporter=args.exporter, verify=args.verify, force=args.force)
    except checkpoint.CheckpointError as error:
        print(f"rbn export: error: {error}", file=sys.stderr)
        return 2
    if check is not None:
        print(check)
        if not check.passed:
            print(f"rbn export: error: onnxruntime's logits differ beyond rbn_reference.tolerances.EXPORT_TOLERANCE; {args.dst} "
                  "not written", file=sys.stderr)
            return 1
    print(f"rbn export: wrote {args.dst}", file=sys.stderr)
    return 0


def build_parser():
    """The ``rbn`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="rbn", description=__doc__.strip() + " Representative BatchNorm tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    parity_parser = commands.add_parser(
        "parity", help="check every installed framework against the NumPy oracle",
        description="Run the seeded parity cases through each installed framework's RepresentativeBatchNorm "
                    "and compare outputs, gradients and running statistics with the NumPy oracle.")
    parity_parser.add_argument("--framework", action="append", choices=frameworks.names(),
                               help="only this framework (repeatable); default: all")
    parity_parser.add_argument("--dtype", action="append", choices=list(parity.DTYPES + parity.MIXED_DTYPES),
                               help="only this dtype (repeatable; float16: float16 input with float32 "
                                    "parameters, as under mixed precision); default: float32 and float64")
    parity_parser.add_argument("--full", action="store_true",
                               help="every seeded case, as the tests run them (default: one case per path)")
    parity_parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                               help="write the rows as JSON to PATH (atomically), or to stdout without PATH")
    parity_parser.set_defaults(handler=run_parity)
    convert_parser = commands.add_parser(
        "convert", help="convert a checkpoint between torch, jittor, mindspore and the neutral format",
        description="Read SRC (a PyTorch .pt/.pth state dict, a Jittor .pkl, a MindSpore .ckpt or a neutral "
                    ".safetensors file), map names and layouts, and write DST atomically. Exit status 2 on bad "
                    "input, 1 if --verify finds the logits apart; nothing is written then.")
    convert_parser.add_argument("src", metavar="SRC")
    convert_parser.add_argument("dst", metavar="DST")
    convert_parser.add_argument("--from", dest="src_format", choices=checkpoint.FORMATS,
                                help="format of SRC (default: from its suffix)")
    convert_parser.add_argument("--to", dest="dst_format", choices=checkpoint.FORMATS,
                                help="format of DST (default: from its suffix)")
    convert_parser.add_argument("--arch", choices=checkpoint.ARCHITECTURES,
                                help="zoo architecture: DST is loaded into it before it is written "
                                     "(default: from a neutral SRC's metadata, else no key check)")
    convert_parser.add_argument("--to-rbn", action="store_true",
                                help="turn BatchNorm layers into RBN that computes the same output")
    convert_parser.add_argument("--centering-stat", choices=STATISTICS,
                                help="RBN option recorded in a neutral DST and used by --verify "
                                     "(default: SRC's metadata, else mu_c)")
    convert_parser.add_argument("--scaling-stat", choices=STATISTICS,
                                help="RBN option recorded in a neutral DST and used by --verify "
                                     "(default: SRC's metadata, else mu_c)")
    convert_parser.add_argument("--verify", action="store_true",
                                help="compare SRC's and DST's logits on a seeded batch in eval and train mode")
    convert_parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    convert_parser.set_defaults(handler=run_convert)
    export_parser = commands.add_parser(
        "export", help="export a checkpoint as an ONNX model of the eval-mode network",
        description="Build ARCH in PyTorch from SRC (any checkpoint rbn convert reads), and write the eval-mode "
                    "network to DST.onnx with a dynamic batch axis, atomically. Exit status 2 on bad input, 1 if "
                    "--verify finds onnxruntime's logits apart from PyTorch's; nothing is written then.")
    export_parser.add_argument("src", metavar="SRC")
    export_parser.add_argument("dst", metavar="DST.onnx")
    export_parser.add_argument("--arch", required=True, choices=checkpoint.ARCHITECTURES, help="zoo architecture")
    export_parser.add_argument("--from", dest="src_format", choices=checkpoint.FORMATS,
                               help="format of SRC (default: from its suffix)")
    export_parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    export_parser.add_argument("--exporter", choices=export.EXPORTERS, default="dynamo",
                               help="torch.onnx's exporter: dynamo (torch.export) or legacy (TorchScript); "
                                    "default: dynamo")
    export_parser.add_argument("--mode", choices=("eval", "train"), default="eval",
                               help="the network's mode; only eval can be exported (default: eval)")
    export_parser.add_argument("--verify", action="store_true",
                               help="run DST in onnxruntime on a seeded batch and compare with PyTorch's logits")
    export_parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    export_parser.set_defaults(handler=run_export)
    trajectory_parser = commands.add_parser(
        "trajectory", help="train one seeded start step by step in several frameworks and compare",
        description="Load one seeded RBN network into each framework through the neutral checkpoint, train it "
                    "with each framework's own optimizer on the same batches, and print after each step the "
                    "worst relative gap to the first framework of the loss, the parameters and the running "
                    "statistics. A float32 run is judged by one-step gaps: each step also taken from the first "
                    "framework's state before it. Exit status 1 when a judged gap passes its bound "
                    "(rbn_reference.tolerances.trajectory_bound), 2 on bad input (nothing written).")
    trajectory.add_arguments(trajectory_parser)
    trajectory_parser.set_defaults(handler=trajectory.command)
    training.add_parser(commands)
    return parser


def main(argv=None):
    """Entry point of ``rbn`` and ``python -m rbn``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
