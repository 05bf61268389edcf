"""ONNX export of the rbn_torch zoo: onnxruntime's logits against torch's eval logits.

Every architecture is exported once (the TorchScript exporter, the faster one here) and
resnet18 with both exporters; each file runs at the export batch and at another one (the
batch axis is dynamic).
"""

import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import rbn_torch.models as zoo  # noqa: E402
from rbn_torch.models import porting  # noqa: E402
from tolerances import EXPORT_TOLERANCE  # noqa: E402


ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "mobilenet_v2",
         "res2net50_26w_4s"]
CASES = [(arch, False) for arch in ARCHS] + [("resnet18", True)]
EXPORT_SHAPE = (2, 3, 32, 32)


def trained_looking(arch):
    """A zoo model with calibrations and running statistics away from their init, in eval mode."""
    torch.manual_seed(0)
    model = getattr(zoo, arch)(num_classes=10)
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "scale_bias"):
                for param in layer.parameters():
                    param.add_(0.3 * torch.rand_like(param) - 0.15)
    model(torch.randn(4, 3, 32, 32))  # training mode: running statistics move
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(arch, dynamo) -> (model, onnx path, warnings of the export), each exported once."""
    directory = tmp_path_factory.mktemp("onnx")
    cache = {}

    def export(arch, dynamo):
        if (arch, dynamo) not in cache:
            model = trained_looking(arch)
            path = directory / f"{arch}-{'dynamo' if dynamo else 'torchscript'}.onnx"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                porting.export_onnx(model, path, input_shape=EXPORT_SHAPE, dynamo=dynamo)
            cache[arch, dynamo] = (model, path, caught)
        return cache[arch, dynamo]
    return export


@pytest.mark.parametrize("arch, dynamo", CASES, ids=[f"{a}-{'dynamo' if d else 'torchscript'}" for a, d in CASES])
def test_onnxruntime_logits_match_torch_at_any_batch(exported, arch, dynamo):
    model, path, _ = exported(arch, dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for batch in (EXPORT_SHAPE[0], 3):
        x = torch.randn(batch, *EXPORT_SHAPE[1:], generator=generator)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == (batch, 10)
        error = np.abs(got - want).max()
        assert error <= EXPORT_TOLERANCE.atol + EXPORT_TOLERANCE.rtol * np.abs(want).max(), (batch, error)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_gives_no_tracer_warning(exported, dynamo):
    """No TracerWarning: sizes are not checked under jit.trace, where they are tensors.

    (The TorchScript exporter's own DeprecationWarning is torch's.)
    """
    _, _, caught = exported("resnet18", dynamo)
    tracer = [f"{w.message} ({w.filename}:{w.lineno})" for w in caught
              if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer


def test_export_onnx_writes_whole_files_only(tmp_path):
    model = zoo.resnet18(num_classes=10).train()
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        porting.export_onnx(model, path, input_shape=EXPORT_SHAPE, dynamo=False)
    assert path.read_bytes() == b"old" and model.training
    broken = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 2))  # wrong for the input: export fails
    with pytest.raises(RuntimeError):
        porting.export_onnx(broken, path, input_shape=EXPORT_SHAPE, dynamo=False, force=True)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["model.onnx"]
