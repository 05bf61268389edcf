"""Checkpoints across frameworks: one neutral file format and conversions between all four.

The neutral checkpoint is a safetensors file of arrays under canonical (PyTorch/torchvision)
names, with string metadata: ``format`` ("rbn-neutral/1"), ``origin`` (the framework whose
file the weights came from, kept through neutral files), ``arch``, ``norm`` ("rbn" or
"batchnorm"), ``centering_stat``, ``scaling_stat``. Framework files are what each framework writes itself: a PyTorch state
dict (``torch.save``), a Jittor ``jt.save`` pickle, a MindSpore ``save_checkpoint`` file.

This module never imports a framework at import time: each framework's side lives in
``rbn_<fw>.models.porting`` (see ``rbn.frameworks``) (read/write its files, map names, build/load/run a zoo model)
and is imported when a conversion needs it.
"""

import functools
import inspect
import os
from typing import NamedTuple

import numpy as np

from rbn_reference import CALIBRATION_NAMES, check_statistic
from rbn_reference.parity import compare
from rbn_reference.tolerances import tolerance

from . import frameworks
from .files import atomic_output

FORMATS = (*frameworks.names(), "neutral")
SUFFIXES = {"torch": (".pt", ".pth"), "jittor": (".pkl",), "mindspore": (".ckpt",), "neutral": (".safetensors",)}
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "mobilenet_v2",
                 "res2net50_26w_4s", "resnet20")
NEUTRAL_FORMAT = "rbn-neutral/1"
# The seeded batch of --verify: small enough for a CPU, large enough that every stage of
# the networks above still has more than one value per channel in train mode.
VERIFY_SHAPE = (2, 3, 64, 64)


class CheckpointError(ValueError):
    """Bad input: an unreadable file, an unknown format or architecture, mismatched keys."""


class VerificationError(RuntimeError):
    """The converted checkpoint does not compute the source's logits within tolerance."""

    def __init__(self, checks):
        self.checks = checks
        super().__init__("verification failed:\n  " + "\n  ".join(str(c) for c in checks if not c.passed))


class Checkpoint(NamedTuple):
    """A checkpoint in memory: canonical arrays and string metadata (what a neutral file holds)."""

    arrays: dict  # canonical name -> np.ndarray
    metadata: dict  # str -> str


def adapter(framework):
    """``rbn_<framework>.models.porting``, or a CheckpointError saying what is missing."""
    try:
        return frameworks.import_module(framework, frameworks.get(framework).porting)
    except ImportError as error:
        raise CheckpointError(f"the {framework} format needs {framework}, which cannot be imported ({error})") from None


def detect_format(path, fmt=None, *, writing=False):
    """The format of ``path``: ``fmt`` if given (checked), else from the suffix."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if fmt is None:
        matches = [name for name, suffixes in SUFFIXES.items() if suffix in suffixes]
        if not matches:
            known = ", ".join(f"{s} ({name})" for name, suffixes in SUFFIXES.items() for s in suffixes)
            raise CheckpointError(f"cannot tell the format of {path} from its suffix (known: {known}); "
                                  f"name it with --from/--to, one of {', '.join(FORMATS)}")
        return matches[0]
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    # Writers pick their own layout from the suffix (jt.save writes PyTorch's for .pt,
    # save_checkpoint appends .ckpt), so a written file must carry its format's suffix.
    if writing and suffix not in SUFFIXES[fmt]:
        raise CheckpointError(f"a {fmt} checkpoint must end with {' or '.join(SUFFIXES[fmt])} (got {path})")
    return fmt


def is_rbn(arrays):
    """Whether the arrays have RBN layers (any calibration parameter), not only BatchNorm."""
    return any(name.rpartition(".")[2] in CALIBRATION_NAMES for name in arrays)


def _norm_prefixes(arrays):
    return {name.rpartition(".")[0] for name in arrays
            if name.rpartition(".")[2] in ("running_mean",) + CALIBRATION_NAMES}


def canonicalize(arrays):
    """Check dtypes and values, undo layout differences; raise CheckpointError listing every bad array.

    Every array must be floating point except ``num_batches_tracked`` (an integer count), and
    finite. The authors' RBN code stores a norm layer's parameters as (1, C, 1, 1): they become (C,).
    Jittor has no 0-d arrays: its ``num_batches_tracked`` of shape (1,) becomes ().
    """
    bad = [f"{name} ({array.dtype})" for name, array in arrays.items()
           if not (np.issubdtype(array.dtype, np.integer) if name.endswith("num_batches_tracked")
                   else np.issubdtype(array.dtype, np.floating))]
    if bad:
        raise CheckpointError("expected floating-point arrays (integer num_batches_tracked); got " + ", ".join(bad))
    # A diverged run's weights would convert "successfully" into a model that computes NaN.
    not_finite = sorted(name for name, array in arrays.items() if not np.isfinite(array).all())
    if not_finite:
        raise CheckpointError("arrays with NaN or Inf values (a diverged training run?): " + ", ".join(not_finite))
    norm_prefixes = _norm_prefixes(arrays)

    def canonical_shape(name, array):
        if name.endswith("num_batches_tracked") and array.size == 1:
            return array.reshape(())
        if name.rpartition(".")[0] in norm_prefixes and array.ndim == 4 and array.shape == (1, array.shape[1], 1, 1):
            return array.reshape(-1)
        return array

    return {name: canonical_shape(name, array) for name, array in arrays.items()}


def read_checkpoint(path, fmt=None):
    """Read any supported file into a Checkpoint under canonical names."""
    path, fmt = os.fspath(path), detect_format(path, fmt)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, expected a {fmt} checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"no such file: {path}")
    try:  # the readers word an unreadable file differently (safetensors: "No such file")
        with open(path, "rb"):
            pass
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}") from None
    try:
        if fmt == "neutral":
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(path, "np") as handle:
                metadata = dict(handle.metadata() or {})
            arrays = load_file(path)
        else:
            metadata = {"origin": fmt}
            porting = adapter(fmt)
            arrays = porting.to_canonical(porting.read(path))
    except CheckpointError:
        raise
    except Exception as error:  # each reader has its own exceptions for a corrupt or truncated file
        raise CheckpointError(f"cannot read {path} as a {fmt} checkpoint: {_reason(error)}") from None
    if not arrays:
        raise CheckpointError(f"{path} holds no arrays")
    return Checkpoint(canonicalize(arrays), metadata)


def _reason(error):
    """A reader's exception in one line: torch's refusal of a global is a paragraph whose advice
    (``weights_only=False``) is the one thing not to do; its line naming the global is kept."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if "GLOBAL" in line]
    return f"{type(error).__name__}: {(refused or lines or ['(no message)'])[0]}"


def write_checkpoint(path, checkpoint, fmt=None):
    """Write ``checkpoint`` to ``path`` as is (callers make it atomic, see ``convert``)."""
    path, fmt = os.fspath(path), detect_format(path, fmt, writing=True)
    arrays = {name: np.asarray(array, order="C") for name, array in checkpoint.arrays.items()}
    if fmt == "neutral":
        from safetensors.numpy import save_file

        save_file(arrays, path, metadata={"format": NEUTRAL_FORMAT, **checkpoint.metadata})
    else:
        porting = adapter(fmt)
        porting.write(path, porting.from_canonical(arrays))


def batchnorm_to_rbn(arrays):
    """Give every BatchNorm layer RBN parameters that keep its output (``preserve_output``).

    With ``center_weight = scale_weight = 0`` the gate is the constant ``sigmoid(scale_bias)``
    (``scale_bias = 1``, the init), so dividing ``weight`` by it gives back BatchNorm's output
    in train and eval mode alike. Layers that already are RBN are left alone.
    """
    arrays = dict(arrays)
    for prefix in sorted(_norm_prefixes(arrays)):
        if f"{prefix}.center_weight" in arrays:
            continue
        mean = arrays[f"{prefix}.running_mean"]
        gate = 1.0 / (1.0 + np.exp(-1.0))
        weight = arrays.get(f"{prefix}.weight", np.ones_like(mean))
        arrays[f"{prefix}.weight"] = (weight / gate).astype(weight.dtype)
        arrays.setdefault(f"{prefix}.bias", np.zeros_like(mean))
        arrays[f"{prefix}.center_weight"] = np.zeros_like(mean)
        arrays[f"{prefix}.scale_weight"] = np.zeros_like(mean)
        arrays[f"{prefix}.scale_bias"] = np.ones_like(mean)
    return arrays


def num_classes(arrays):
    """The classifier's output count (ResNet's ``fc``, MobileNetV2's ``classifier.1``)."""
    for name in ("fc.weight", "fc.bias", "classifier.1.weight", "classifier.1.bias"):
        if name in arrays:
            return int(arrays[name].shape[0])
    raise CheckpointError("cannot find the classifier (fc or classifier.1) to size the model")


def _framework_of(fmt):
    """The framework that stands for ``fmt``: itself, or for a neutral file the first installed."""
    if fmt != "neutral":
        return fmt
    for framework in frameworks.FRAMEWORKS:
        if framework.installed():
            return framework.name
    raise CheckpointError(f"checking a neutral checkpoint needs one of {', '.join(frameworks.names())} installed")


def in_channels(arrays):
    """The input channels of a ResNet's stem (``conv1``; 3 where there is none, e.g. MobileNetV2)."""
    return int(arrays["conv1.weight"].shape[1]) if "conv1.weight" in arrays else 3


def build(framework, arch, num_classes, batchnorm=False, in_channels=3, **rbn_options):
    """``rbn_<framework>.models.<arch>`` with BatchNorm or RepresentativeBatchNorm2d(**rbn_options).

    ``in_channels`` other than 3 is for the networks of small images (``resnet20``); the
    ImageNet networks take RGB only.
    """
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    porting = adapter(framework)
    norm_layer = porting.BatchNorm2d if batchnorm else functools.partial(porting.RepresentativeBatchNorm2d,
                                                                         **rbn_options)
    builder = getattr(porting.models, arch)
    if in_channels == 3:
        return builder(num_classes=num_classes, norm_layer=norm_layer)
    if "in_channels" not in inspect.signature(builder).parameters:
        raise CheckpointError(f"{arch} takes 3 input channels, got {in_channels}")
    return builder(num_classes=num_classes, norm_layer=norm_layer, in_channels=in_channels)


def build_model(framework, checkpoint, arch):
    """Build ``arch`` in ``framework`` to match ``checkpoint`` and load it strictly."""
    metadata = checkpoint.metadata
    model = build(framework, arch, num_classes(checkpoint.arrays), batchnorm=not is_rbn(checkpoint.arrays),
                  in_channels=in_channels(checkpoint.arrays), centering_stat=metadata.get("centering_stat", "mu_c"),
                  scaling_stat=metadata.get("scaling_stat", "mu_c"))
    porting = adapter(framework)
    # num_batches_tracked is optional on both sides: Jittor's and MindSpore's BatchNorm have
    # none, and their checkpoints give none to PyTorch.
    expected = porting.state_dict_to_numpy(model)
    arrays = {name: array for name, array in checkpoint.arrays.items()
              if name in expected or not name.endswith("num_batches_tracked")}
    arrays.update({name: array for name, array in expected.items()
                   if name.endswith("num_batches_tracked") and name not in arrays})
    try:
        porting.load_numpy_state_dict(model, arrays, strict=True)
    except (KeyError, ValueError) as error:
        message = error.args[0] if error.args else str(error)
        raise CheckpointError(f"the checkpoint does not fit {framework} {arch}: {message}") from None
    return porting, model


def verify(source, source_framework, target, target_framework, arch, progress=None):
    """Logits of both checkpoints on a seeded batch, eval then train mode, as parity Checks."""
    shape = (VERIFY_SHAPE[0], in_channels(source.arrays), *VERIFY_SHAPE[2:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sides = []
    for checkpoint, framework in ((source, source_framework), (target, target_framework)):
        sides.append(build_model(framework, checkpoint, arch))
        if progress is not None:
            progress.update()
    checks = []
    for mode in ("eval", "train"):
        want, got = (porting.logits(model, x, mode == "train") for porting, model in sides)
        checks.append(compare(f"logits ({mode})", f"{arch} {source_framework} -> {target_framework} {mode} logits",
                              got, want, "float32", tolerance("float32")))
        if progress is not None:
            progress.update()
    return checks


def convert(src, dst, *, src_format=None, dst_format=None, arch=None, to_rbn=False, centering_stat=None,
            scaling_stat=None, verify_logits=False, force=False, progress=True):
    """Convert the checkpoint ``src`` into ``dst``; return the verification Checks (if asked).

    ``arch`` (or the source's metadata) names the zoo architecture: the result is then loaded
    into that model in the target framework before it is written, so a file with missing,
    unexpected or mis-shaped keys is refused. ``to_rbn`` turns BatchNorm layers into RBN with
    ``batchnorm_to_rbn``. ``centering_stat``/``scaling_stat`` are the RBN layers' options
    (default: the source's metadata, else "mu_c"). ``verify_logits`` compares the logits of source and result (raises
    VerificationError above the float32 tolerance). ``dst`` is written atomically; it is
    refused if it exists unless ``force``; on any error nothing is written.
    """
    from tqdm import tqdm

    src_format = detect_format(src, src_format)
    dst_format = detect_format(dst, dst_format, writing=True)
    if os.path.exists(dst) and not force:
        raise CheckpointError(f"{dst} exists; pass --force to overwrite it")
    if arch is not None and arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    try:
        for name, value in (("centering_stat", centering_stat), ("scaling_stat", scaling_stat)):
            if value is not None:
                check_statistic(name, value)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    with tqdm(total=3 + 4 * verify_logits, desc=f"rbn convert {os.path.basename(src)}", unit="step",
              disable=not progress, leave=False) as bar:
        source = read_checkpoint(src, src_format)
        bar.update()
        arch = arch or source.metadata.get("arch") or None
        if verify_logits and arch is None:
            raise CheckpointError("verification needs --arch (the source names no architecture)")
        arrays = batchnorm_to_rbn(source.arrays) if to_rbn else source.arrays
        rbn = is_rbn(arrays)
        metadata = {"origin": source.metadata.get("origin", src_format), "arch": arch or "",
                    "norm": "rbn" if rbn else "batchnorm"}
        if rbn:
            metadata.update(centering_stat=centering_stat or source.metadata.get("centering_stat", "mu_c"),
                            scaling_stat=scaling_stat or source.metadata.get("scaling_stat", "mu_c"))
        target = Checkpoint(arrays, metadata)
        if arch is not None and not verify_logits:
            build_model(_framework_of(dst_format), target, arch)
        bar.update()
        checks = []
        with atomic_output(dst, force=force) as temporary:
            write_checkpoint(temporary, target, dst_format)
            bar.update()
            if verify_logits:
                # Judge the file as written, read back, against the file as given.
                written = read_checkpoint(temporary, dst_format)
                written = Checkpoint(written.arrays, {**written.metadata, **metadata})
                checks = verify(Checkpoint(source.arrays, {**source.metadata, **metadata}),
                                _framework_of(src_format), written, _framework_of(dst_format), arch, bar)
                if not all(check.passed for check in checks):
                    raise VerificationError(checks)
    return checks
