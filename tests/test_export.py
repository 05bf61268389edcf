"""`rbn export`: checkpoints to ONNX, verified in onnxruntime; bad input writes nothing."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from rbn import checkpoint, export  # noqa: E402
from rbn.checkpoint import Checkpoint  # noqa: E402
from rbn.cli import main  # noqa: E402
from test_models import random_state  # noqa: E402

ARCH = "resnet18"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    path = directory / "model.safetensors"
    checkpoint.write_checkpoint(path, Checkpoint(random_state(ARCH), {"arch": ARCH}))
    return path


def run(capsys, *args):
    status = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_export_verifies_in_onnxruntime_at_another_batch_size(source, tmp_path, capsys, exporter):
    dst = tmp_path / "model.onnx"
    status, out, err = run(capsys, source, dst, "--arch", ARCH, "--exporter", exporter, "--verify")
    assert status == 0, err
    assert "PASS" in out and f"wrote {dst}" in err
    session = onnxruntime.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    assert not isinstance(batch, int)  # a named, dynamic axis
    for size in (1, 5):
        x = np.random.default_rng(size).standard_normal((size, *export.VERIFY_SHAPE[1:])).astype(np.float32)
        assert session.run(None, {"input": x})[0].shape == (size, 10)


def test_failed_verification_exits_1_and_removes_the_file(source, tmp_path, capsys, monkeypatch):
    original = export.verify_onnx

    def off_by_a_little(porting, model, path, arch):
        logits = porting.logits

        monkeypatch.setattr(porting, "logits", lambda *args, **kwargs: logits(*args, **kwargs) + 1e-2)
        return original(porting, model, path, arch)

    monkeypatch.setattr(export, "verify_onnx", off_by_a_little)
    status, out, err = run(capsys, source, tmp_path / "model.onnx", "--arch", ARCH, "--exporter", "legacy",
                           "--verify")
    assert status == 1 and "FAIL" in out and "not written" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, mentions", [
    (["--mode", "train"], "eval mode"),
    (["--from", "jittor"], "as a jittor checkpoint"),
])
def test_bad_input_exits_2_and_writes_nothing(source, tmp_path, capsys, args, mentions):
    status, _, err = run(capsys, source, tmp_path / "model.onnx", "--arch", ARCH, *args)
    assert status == 2 and "rbn export: error:" in err and mentions in err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_wrong_suffix_and_existing_destination_are_refused(source, tmp_path, capsys):
    status, _, err = run(capsys, source, tmp_path / "model.pt", "--arch", ARCH)
    assert status == 2 and ".onnx" in err
    dst = tmp_path / "model.onnx"
    dst.write_bytes(b"the user's own file")
    status, _, err = run(capsys, source, dst, "--arch", ARCH)
    assert status == 2 and "--force" in err and dst.read_bytes() == b"the user's own file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]


def test_unknown_architecture_is_a_usage_error(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(source), str(tmp_path / "model.onnx"), "--arch", "resnet99"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_architecture_is_refused(source, tmp_path, capsys):
    status, _, err = run(capsys, source, tmp_path / "model.onnx", "--arch", "mobilenet_v2")
    assert status == 2 and "does not fit" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == []
