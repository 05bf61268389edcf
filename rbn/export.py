"""Deployment: any checkpoint ``rbn convert`` reads, as an ONNX model of the eval-mode network.

The network is built in PyTorch (``rbn_torch.models``), loaded strictly from the checkpoint and
exported by ``torch.onnx.export`` with a dynamic batch axis; the RBN layers export as plain ops.
``verify`` runs the file in onnxruntime on a seeded batch of another batch size than the example
the exporter saw, and compares the logits with PyTorch's own eval-mode logits.
"""

import os

import numpy as np

from rbn_reference.parity import compare
from rbn_reference.tolerances import EXPORT_TOLERANCE

from .checkpoint import ARCHITECTURES, VERIFY_SHAPE, CheckpointError, build_model, read_checkpoint

EXPORTERS = ("dynamo", "legacy")
# The exporter traces one batch size; verifying at another checks that the batch axis is dynamic.
VERIFY_BATCH = 3


class ExportError(CheckpointError):
    """Bad input for an export: the message says what was expected."""


def export(src, dst, *, arch, src_format=None, opset=None, exporter="dynamo", verify=False, force=False):
    """Write ``src`` as the ONNX model ``dst`` of the eval-mode ``arch``; return the verification Check.

    Raises ExportError (bad input; nothing written) and, with ``verify``, returns a parity Check
    whose ``passed`` says whether onnxruntime's logits are within ``EXPORT_TOLERANCE`` of
    PyTorch's; ``dst`` is removed again when they are not.
    """
    if arch not in ARCHITECTURES:
        raise ExportError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    if os.path.splitext(os.fspath(dst))[1].lower() != ".onnx":
        raise ExportError(f"DST must end with .onnx (got {dst})")
    if os.path.exists(dst) and not force:
        raise ExportError(f"{dst} exists; pass --force to overwrite it")
    try:
        import onnx  # noqa: F401  (both exporters write through it)
    except ImportError as error:
        raise ExportError(f"exporting needs the export extra (pip install 'rbn[export]'): {error}") from None
    checkpoint = read_checkpoint(src, src_format)
    porting, model = build_model("torch", checkpoint, arch)
    porting.export_onnx(model, dst, input_shape=VERIFY_SHAPE, opset=opset, dynamo=exporter == "dynamo",
                        force=force)
    if not verify:
        return None
    check = verify_onnx(porting, model, dst, arch)
    if not check.passed:
        os.unlink(dst)
    return check


def verify_onnx(porting, model, path, arch):
    """onnxruntime's logits of ``path`` against ``model``'s eval-mode logits on a seeded batch."""
    import onnxruntime

    x = np.random.default_rng(0).standard_normal((VERIFY_BATCH, *VERIFY_SHAPE[1:])).astype(np.float32)
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    want = porting.logits(model, x, training=False)
    return compare("onnx logits", f"{arch} onnxruntime eval logits", got, want, "float32", EXPORT_TOLERANCE)
