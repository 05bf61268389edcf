"""``rbn train``: a small, real training run with RBN (or BatchNorm) in any of the three frameworks.

Everything that is not the framework's own forward, backward and SGD update lives here, in
NumPy, so the three frameworks see the same data in the same order: the dataset and its fixed
train/test split, the batch order of every epoch (drawn once from ``--seed``), the cosine
learning-rate schedule, the metrics and the outputs. Each framework's side is
``rbn_<framework>.training`` (``Trainer``, ``seed``, ``cast``).
"""

import csv
import math
import os
import sys
import time
from typing import NamedTuple

import numpy as np

from . import checkpoint, frameworks
from .files import atomic_output

DATASETS = ("digits", "npz:PATH")
NORMS = ("rbn", "bn", "both")
DTYPES = ("float32", "float64")
COLUMNS = ("step", "epoch", "lr", "loss", "train_accuracy", "test_accuracy", "seconds")
# The split is fixed (not --seed): every run, of any seed or framework, is judged on the same images.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
EVAL_BATCH = 256  # eval-mode forwards only: any size gives the same logits


class TrainingError(ValueError):
    """Bad input to ``rbn train``: an unknown dataset, a malformed npz file, an unusable --out."""


class Dataset(NamedTuple):
    """A fixed train/test split as NumPy arrays."""

    x_train: np.ndarray  # (N, C, H, W) float64, standardized
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


class Run(NamedTuple):
    """One training run's record: a metrics row per step, accuracies at epoch ends."""

    norm: str
    rows: list  # dicts keyed by COLUMNS
    arrays: dict  # the final canonical state dict


def split(x, y):
    """A fixed, stratified (where every class has two images or more) train/test split."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=stratify)


def load_dataset(spec):
    """The dataset named ``spec`` ("digits" or "npz:PATH"), split and standardized.

    ``digits``: scikit-learn's 1797 8x8 grey images of 10 digits (shipped inside its package, no
    download), pixels 0..16 scaled to [0, 1]. ``npz:PATH``: a NumPy ``.npz`` with ``x`` (N, C, H, W)
    and integer ``y`` (N,) in 0..K-1. Both are split 80/20 (stratified, fixed seed) and standardized
    by the training images' mean and standard deviation.
    """
    if spec == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = digits.images[:, None].astype(np.float64) / 16.0, digits.target.astype(np.int64)
    elif spec.startswith("npz:"):
        x, y = read_npz(spec[len("npz:"):])
    else:
        raise TrainingError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASETS)}")
    x_train, x_test, y_train, y_test = split(x, y)
    mean, std = x_train.mean(), x_train.std()
    scale = std if std > 0 else 1.0
    return Dataset((x_train - mean) / scale, y_train, (x_test - mean) / scale, y_test, int(y.max()) + 1)


def read_npz(path):
    """``x`` (N, C, H, W) as float64 and ``y`` (N,) as int64 from the npz at ``path``, checked."""
    try:
        data = np.load(path, allow_pickle=False)  # no pickle: a file we read never runs code
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise TrainingError(f"{path} is a single array (.npy), expected an .npz holding x and y")
        with data:
            missing = [key for key in ("x", "y") if key not in data.files]
            if missing:
                raise TrainingError(f"{path} has no {' or '.join(missing)}; expected arrays x (N, C, H, W) and "
                                    f"y (N,), got {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except TrainingError:
        raise
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot read {path} as an npz file: {error}") from None
    if x.ndim != 4:
        raise TrainingError(f"x in {path} must be (N, C, H, W); got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise TrainingError(f"y in {path} must be (N,) with N = {len(x)} (x's first axis); got shape {y.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TrainingError(f"x in {path} must be numbers; got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer) or len(y) and y.min() < 0:
        raise TrainingError(f"y in {path} must be class indices 0..K-1 (integers); got {y.dtype}"
                            + (f" with minimum {y.min()}" if np.issubdtype(y.dtype, np.number) and len(y) else ""))
    if len(y) < 10 or len(np.unique(y)) < 2:
        raise TrainingError(f"{path} needs at least 10 images of at least 2 classes; got {len(y)} of "
                            f"{len(np.unique(y))}")
    if not np.isfinite(x).all():
        raise TrainingError(f"x in {path} has NaN or Inf values")
    return x.astype(np.float64), y.astype(np.int64)


def epoch_orders(n, batch_size, epochs, seed):
    """The training images' indices of every batch, every epoch: ``(epochs, n // batch_size, batch_size)``.

    Drawn once from ``seed`` with NumPy, so every framework sees the same batches in the same
    order. Each epoch is a fresh permutation; its last ``n % batch_size`` images wait for the next
    one (a BatchNorm batch of one image has no batch statistics).
    """
    rng = np.random.default_rng(seed)
    steps = n // batch_size
    return np.stack([rng.permutation(n)[:steps * batch_size].reshape(steps, batch_size) for _ in range(epochs)])


def cosine_lr(step, total, base_lr):
    """The cosine schedule without restarts: ``base_lr`` at step 0, down to 0 after ``total`` steps.

    Example::

        >>> from rbn.training import cosine_lr
        >>> cosine_lr(0, 10, 0.1), cosine_lr(5, 10, 0.1), cosine_lr(10, 10, 0.1)
        (0.1, 0.05, 0.0)
    """
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / total))


def accuracy(trainer, x, y):
    """The fraction of ``x`` whose eval-mode logits pick ``y``."""
    correct = sum(int((trainer.logits(x[i:i + EVAL_BATCH]).argmax(axis=1) == y[i:i + EVAL_BATCH]).sum())
                  for i in range(0, len(x), EVAL_BATCH))
    return correct / len(x)


def initial_model(framework, arch, norm, data, init, dtype, seed):
    """The seeded (or ``init``-loaded) model, in ``dtype``, with its framework's ``training`` module."""
    training = frameworks.import_module(framework, f"rbn_{framework}.training")
    training.seed(seed)
    in_channels = data.x_train.shape[1]
    if init is None:
        model = checkpoint.build(framework, arch, data.num_classes, batchnorm=norm == "bn", in_channels=in_channels)
    else:
        arrays = init.arrays
        if norm == "rbn" and not checkpoint.is_rbn(arrays):  # BatchNorm weights start RBN (same outputs)
            arrays = checkpoint.batchnorm_to_rbn(arrays)
        elif norm == "bn" and checkpoint.is_rbn(arrays):
            raise TrainingError("--init holds RBN layers; train it with --norm rbn (BatchNorm cannot take them)")
        if checkpoint.num_classes(arrays) != data.num_classes or checkpoint.in_channels(arrays) != in_channels:
            raise TrainingError(f"--init has {checkpoint.num_classes(arrays)} classes and "
                                f"{checkpoint.in_channels(arrays)} input channels; the dataset has "
                                f"{data.num_classes} and {in_channels}")
        try:
            _, model = checkpoint.build_model(framework, checkpoint.Checkpoint(arrays, init.metadata), arch)
        except checkpoint.CheckpointError as error:
            raise TrainingError(f"--init: {error}") from None
    return training, training.cast(model, dtype)


def train_one(framework, arch, norm, data, *, epochs, batch_size, lr, seed, dtype, init=None, progress=True):
    """Train one model; return its Run (a metrics row per step)."""
    from tqdm import tqdm

    training, model = initial_model(framework, arch, norm, data, init, dtype, seed)
    trainer = training.Trainer(model)
    orders = epoch_orders(len(data.x_train), batch_size, epochs, seed)
    x_train, x_test = data.x_train.astype(dtype), data.x_test.astype(dtype)
    total, rows, start = orders.shape[0] * orders.shape[1], [], time.perf_counter()
    for epoch, order in enumerate(orders):
        bar = tqdm(order, desc=f"{framework} {norm} epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress,
                   file=sys.stderr)
        for batch in bar:
            step = len(rows)
            rate = cosine_lr(step, total, lr)
            tic = time.perf_counter()
            loss = trainer.step(x_train[batch], data.y_train[batch], rate)
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss} at step {step}: training diverged (lower --lr)")
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{batch_size / (time.perf_counter() - tic):.0f}")
            rows.append({"step": step + 1, "epoch": epoch + 1, "lr": rate, "loss": loss, "train_accuracy": "",
                         "test_accuracy": "", "seconds": time.perf_counter() - start})
        rows[-1]["train_accuracy"] = accuracy(trainer, x_train, data.y_train)
        rows[-1]["test_accuracy"] = accuracy(trainer, x_test, data.y_test)
        rows[-1]["seconds"] = time.perf_counter() - start
        bar.close()
        if progress:
            print(f"rbn train: {framework} {norm} epoch {epoch + 1}: test accuracy {rows[-1]['test_accuracy']:.4f}, "
                  f"{rows[-1]['seconds']:.1f} s", file=sys.stderr)
    return Run(norm, rows, checkpoint.adapter(framework).state_dict_to_numpy(model))


def write_metrics(path, rows):
    """Write ``rows`` (dicts keyed by ``COLUMNS``) to ``path`` as CSV, atomically."""
    with atomic_output(path, force=True) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_checkpoints(directory, framework, arch, run):
    """The final weights as ``model.<native suffix>`` and ``model.safetensors`` (neutral)."""
    metadata = {"origin": framework, "arch": arch, "norm": "rbn" if run.norm == "rbn" else "batchnorm"}
    if run.norm == "rbn":
        metadata.update(centering_stat="mu_c", scaling_stat="mu_c")
    state = checkpoint.Checkpoint(run.arrays, metadata)
    paths = [os.path.join(directory, "model" + checkpoint.SUFFIXES[framework][0]),
             os.path.join(directory, "model.safetensors")]
    for path in paths:
        with atomic_output(path, force=True) as temporary:
            checkpoint.write_checkpoint(temporary, state, "neutral" if path.endswith(".safetensors") else framework)
    return paths


def draw_curves(path, runs, title):
    """Loss and test accuracy against step for each run, on one figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        label = {"rbn": "RBN", "bn": "BatchNorm"}[run.norm]
        loss_axis.plot([row["step"] for row in run.rows], [row["loss"] for row in run.rows], label=label, lw=0.8)
        ends = [row for row in run.rows if row["test_accuracy"] != ""]
        accuracy_axis.plot([row["step"] for row in ends], [row["test_accuracy"] for row in ends], "o-", label=label)
    loss_axis.set(xlabel="step", ylabel="training loss (batch)", yscale="log")
    accuracy_axis.set(xlabel="step", ylabel="test accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_output(path, force=True) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    pyplot.close(figure)


def check_output_directory(out):
    """Refuse an --out that cannot hold the outputs, before anything is trained or written."""
    target = os.path.abspath(out)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise TrainingError(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"--out {out}: {existing} is not writable")


def run(args):
    """The ``rbn train`` command: exit status 0, or 2 on bad input (nothing written then)."""
    # Convolutions of 8x8 images are too small to gain from threads: PyTorch's two threads took
    # 1.4 s a step here (machine loaded), one 0.12 s. Set before the framework is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        if args.framework not in frameworks.names():
            raise TrainingError(f"unknown framework {args.framework!r}; expected one of {', '.join(frameworks.names())}")
        if not frameworks.get(args.framework).installed():
            raise TrainingError(f"{args.framework} is not installed")
        if args.arch not in checkpoint.ARCHITECTURES:
            raise TrainingError(f"unknown architecture {args.arch!r}; expected one of "
                                f"{', '.join(checkpoint.ARCHITECTURES)}")
        for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
            if value < 1 or (name == "--batch-size" and value < 2):
                raise TrainingError(f"{name} must be at least {2 if name == '--batch-size' else 1}; got {value}")
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise TrainingError(f"--lr must be a positive number; got {args.lr}")
        supported = frameworks.import_module(args.framework, f"rbn_{args.framework}.training").DTYPES
        if args.dtype not in supported:
            raise TrainingError(f"{args.framework} cannot train in {args.dtype} on this CPU; it trains in "
                                f"{', '.join(supported)} (see rbn_{args.framework}.training.DTYPES)")
        data = load_dataset(args.dataset)
        if len(data.x_train) < args.batch_size:
            raise TrainingError(f"--batch-size {args.batch_size} is larger than the {len(data.x_train)} "
                                "training images")
        init = None if args.init is None else checkpoint.read_checkpoint(args.init)
        check_output_directory(args.out)
        norms = ("bn", "rbn") if args.norm == "both" else (args.norm,)
        runs = [train_one(args.framework, args.arch, norm, data, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed, dtype=args.dtype, init=init) for norm in norms]
    except (TrainingError, checkpoint.CheckpointError) as error:
        print(f"rbn train: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"rbn train: error: {error}; nothing written", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    for run_ in runs:
        directory = args.out if len(runs) == 1 else os.path.join(args.out, run_.norm)
        os.makedirs(directory, exist_ok=True)
        write_metrics(os.path.join(directory, "metrics.csv"), run_.rows)
        write_checkpoints(directory, args.framework, args.arch, run_)
    draw_curves(os.path.join(args.out, "curves.png"), runs,
                f"{args.arch} on {args.dataset}, {args.framework} {args.dtype}, seed {args.seed}")
    for run_ in runs:
        print(f"{args.framework} {run_.norm}: test accuracy {run_.rows[-1]['test_accuracy']:.4f} after "
              f"{args.epochs} epochs, {run_.rows[-1]['seconds']:.1f} s")
    print(f"rbn train: wrote {args.out}", file=sys.stderr)
    return 0


def add_parser(commands):
    """Register ``rbn train`` on the ``rbn`` command's subparsers."""
    parser = commands.add_parser(
        "train", help="train a zoo network with RBN or BatchNorm in one framework",
        description="Train ARCH on a small dataset with the framework's own SGD (momentum 0.9, weight decay 5e-4, "
                    "cosine schedule); batches drawn once in NumPy from --seed. Writes metrics.csv, the final "
                    "checkpoint (native and neutral .safetensors) and curves.png into --out (with --norm both: "
                    "bn/ and rbn/ beside one curves.png). Exit status 2 on bad input; nothing is written then.")
    parser.add_argument("--framework", required=True, help=f"one of {', '.join(frameworks.names())}")
    parser.add_argument("--arch", default="resnet20", help="zoo architecture (default: resnet20)")
    parser.add_argument("--norm", choices=NORMS, default="rbn",
                        help="rbn, bn (the framework's BatchNorm) or both from the same seed (default: rbn)")
    parser.add_argument("--dataset", default="digits",
                        help="digits (scikit-learn's 8x8 digits) or npz:PATH with x (N, C, H, W) and y (N,) "
                             "(default: digits)")
    parser.add_argument("--epochs", type=int, default=8, help="default: 8")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--lr", type=float, default=0.1, help="the schedule's first learning rate (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch order (default: 0)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="default: float32")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="start from these weights: any checkpoint rbn convert reads (BatchNorm weights "
                             "start an RBN run through the output-preserving conversion)")
    parser.add_argument("--out", default="rbn-train", help="output directory (default: rbn-train)")
    parser.set_defaults(handler=run)
    return parser
