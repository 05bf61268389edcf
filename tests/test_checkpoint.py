"""Checkpoint conversion: the neutral format, `rbn convert`, and every bad input it refuses."""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")
from rbn import checkpoint  # noqa: E402
from rbn.checkpoint import Checkpoint, CheckpointError  # noqa: E402
from rbn.cli import main  # noqa: E402
from test_models import random_state  # noqa: E402

ARCH = "resnet18"
SUFFIXES = {"torch": ".pt", "jittor": ".pkl", "mindspore": ".ckpt", "neutral": ".safetensors"}
INSTALLED = [pytest.param(fmt, marks=pytest.mark.skipif(
    fmt != "neutral" and importlib.util.find_spec(fmt) is None, reason=f"{fmt} is not installed"))
    for fmt in SUFFIXES]


@pytest.fixture(scope="module")
def arrays():
    return random_state(ARCH)


def save(path, arrays):
    checkpoint.write_checkpoint(path, Checkpoint(arrays, {}))
    return path


def rbn_convert(capsys, *args):
    """`rbn convert ARGS` in-process: (exit status, stdout, stderr)."""
    status = main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(capsys, directory, *args, mentions=()):
    before = sorted(path.name for path in directory.iterdir())
    status, _, err = rbn_convert(capsys, *args)
    assert status == 2
    assert "rbn convert: error:" in err
    for text in mentions:
        assert text in err
    assert sorted(path.name for path in directory.iterdir()) == before  # nothing written, no temporary left


def test_neutral_file_holds_canonical_arrays_and_metadata(arrays, tmp_path):
    src = save(tmp_path / "model.pt", arrays)
    checkpoint.convert(src, tmp_path / "model.safetensors", arch=ARCH, scaling_stat="sigma_c", progress=False)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "np") as handle:
        assert handle.metadata() == {"format": "rbn-neutral/1", "origin": "torch", "arch": ARCH, "norm": "rbn",
                                     "centering_stat": "mu_c", "scaling_stat": "sigma_c"}
        assert sorted(handle.keys()) == sorted(arrays)
        for name in arrays:
            np.testing.assert_array_equal(handle.get_tensor(name), arrays[name])


def test_arch_comes_from_neutral_metadata_and_origin_survives(arrays, tmp_path):
    checkpoint.convert(save(tmp_path / "a.pt", arrays), tmp_path / "a.safetensors", arch=ARCH, progress=False)
    checkpoint.convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors", progress=False)
    read = checkpoint.read_checkpoint(tmp_path / "b.safetensors")
    assert read.metadata["arch"] == ARCH and read.metadata["origin"] == "torch"


def test_rbn_options_travel_in_metadata_into_the_built_models(arrays, tmp_path):
    checkpoint.convert(save(tmp_path / "a.pt", arrays), tmp_path / "a.safetensors", arch=ARCH,
                       centering_stat="sigma_c", scaling_stat="mu_s", progress=False)
    _, model = checkpoint.build_model("torch", checkpoint.read_checkpoint(tmp_path / "a.safetensors"), ARCH)
    assert (model.layer3[1].bn2.centering_stat, model.layer3[1].bn2.scaling_stat) == ("sigma_c", "mu_s")


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_torch_state_dict_inside_a_training_checkpoint_is_found(arrays, tmp_path, key):
    import torch

    torch.save({key: {name: torch.from_numpy(array) for name, array in arrays.items()}, "epoch": 3},
               tmp_path / "train.pth")
    read = checkpoint.read_checkpoint(tmp_path / "train.pth").arrays
    assert sorted(read) == sorted(arrays) and np.array_equal(read["fc.weight"], arrays["fc.weight"])


def test_authors_parameter_shapes_are_read_as_canonical(arrays, tmp_path):
    """The authors' RBN stores (1, C, 1, 1) weights; their (C,) values come out unchanged."""
    authors = {name: array.reshape(1, -1, 1, 1) if name.rpartition(".")[2] in
               ("weight", "bias", "center_weight", "scale_weight", "scale_bias") and array.ndim == 1
               and not name.startswith("fc.") else array for name, array in arrays.items()}
    checkpoint.convert(save(tmp_path / "authors.pt", authors), tmp_path / "ours.pt", arch=ARCH, progress=False)
    ours = checkpoint.read_checkpoint(tmp_path / "ours.pt").arrays
    assert {name: array.shape for name, array in ours.items()} == {name: array.shape for name, array in arrays.items()}
    assert all(np.array_equal(ours[name], arrays[name]) for name in arrays)


@pytest.mark.parametrize("target", ["torch", "mindspore", "jittor"])
def test_batchnorm_checkpoint_becomes_rbn_with_the_same_logits(target, tmp_path, capsys):
    if importlib.util.find_spec(target) is None:
        pytest.skip(f"{target} is not installed")
    bn = random_state(ARCH, batchnorm=True)
    src = save(tmp_path / "bn.pt", bn)
    dst = tmp_path / f"rbn{SUFFIXES[target]}"
    status, out, err = rbn_convert(capsys, src, dst, "--arch", ARCH, "--to-rbn", "--verify")
    assert status == 0, err
    assert out.count("PASS") == 2 and "logits" in out  # eval and train
    converted = checkpoint.read_checkpoint(dst).arrays
    assert checkpoint.is_rbn(converted) and not checkpoint.is_rbn(bn)
    np.testing.assert_array_equal(converted["bn1.center_weight"], np.zeros(64, np.float32))


NATIVE_SAVE = {
    "torch": lambda model, path: __import__("torch").save(model.state_dict(), path),
    "mindspore": lambda model, path: __import__("mindspore").save_checkpoint(model, str(path)),
    "jittor": lambda model, path: model.save(str(path)),
}


@pytest.mark.parametrize("framework", ["torch", "mindspore", "jittor"])
def test_files_the_frameworks_save_themselves_convert_and_verify(arrays, tmp_path, framework):
    """``torch.save(state_dict)``, ``mindspore.save_checkpoint(net)``, Jittor's ``Module.save``."""
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed")
    porting = checkpoint.adapter(framework)
    model = checkpoint.build(framework, ARCH, 10)
    porting.load_numpy_state_dict(model, arrays)
    src = tmp_path / f"native{SUFFIXES[framework]}"
    NATIVE_SAVE[framework](model, src)
    checks = checkpoint.convert(src, tmp_path / "neutral.safetensors", arch=ARCH, verify_logits=True, progress=False)
    assert [check.passed for check in checks] == [True, True]
    converted = checkpoint.read_checkpoint(tmp_path / "neutral.safetensors").arrays
    # Jittor's Module.save writes state_dict(), which lists what parameters() lists: the batch
    # count stays out of both (jt.grad over parameters() needs float Vars), as jt.nn.BatchNorm keeps none.
    expected = {name: array for name, array in arrays.items()
                if not (framework == "jittor" and name.endswith("num_batches_tracked"))}
    assert sorted(converted) == sorted(expected)
    assert all(np.array_equal(converted[name], expected[name]) for name in expected)


def test_verify_reports_both_modes(arrays, tmp_path, capsys):
    status, out, _ = rbn_convert(capsys, save(tmp_path / "a.pt", arrays), tmp_path / "b.safetensors",
                                 "--arch", ARCH, "--verify")
    assert status == 0
    assert "eval logits [float32]: PASS" in out and "train logits [float32]: PASS" in out


def test_failed_verification_exits_1_and_writes_nothing(arrays, tmp_path, capsys, monkeypatch):
    porting = checkpoint.adapter("torch")
    write = porting.write
    monkeypatch.setattr(porting, "write", lambda path, arrays: write(path, {**arrays, "fc.bias": arrays["fc.bias"] + 1}))
    src = save(tmp_path / "a.pt", arrays)
    status, out, err = rbn_convert(capsys, src, tmp_path / "b.pt", "--arch", ARCH, "--verify")
    assert status == 1
    assert "FAIL" in out and "not written" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.pt"]


def test_interrupted_write_leaves_no_file(arrays, tmp_path, monkeypatch):
    def interrupted(path, arrays):
        pathlib.Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    src = save(tmp_path / "a.pt", arrays)
    monkeypatch.setattr(checkpoint.adapter("torch"), "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.convert(src, tmp_path / "b.pt", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.pt"]


def test_existing_destination_needs_force(arrays, tmp_path, capsys):
    src = save(tmp_path / "a.pt", arrays)
    dst = tmp_path / "b.safetensors"
    dst.write_bytes(b"keep me")
    assert_refused(capsys, tmp_path, src, dst, mentions=["exists", "--force"])
    assert dst.read_bytes() == b"keep me"
    status, _, _ = rbn_convert(capsys, src, dst, "--force")
    assert status == 0 and sorted(checkpoint.read_checkpoint(dst).arrays) == sorted(arrays)


def test_unknown_suffix_and_mismatched_suffix(arrays, tmp_path, capsys):
    src = save(tmp_path / "a.pt", arrays)
    assert_refused(capsys, tmp_path, src, tmp_path / "b.bin", mentions=["cannot tell the format", "--from/--to"])
    assert_refused(capsys, tmp_path, src, tmp_path / "b.pt", "--to", "mindspore", mentions=[".ckpt"])


@pytest.mark.parametrize("args", [["--from", "keras"], ["--arch", "resnet99"], ["--centering-stat", "mean"]])
def test_unknown_format_architecture_or_statistic_is_a_usage_error(arrays, tmp_path, capsys, args):
    src = save(tmp_path / "a.pt", arrays)
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(src), str(tmp_path / "b.pt"), *args])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.pt"]


def test_api_refuses_unknown_format_and_architecture(arrays, tmp_path):
    src = save(tmp_path / "a.pt", arrays)
    with pytest.raises(CheckpointError, match="unknown format 'keras'"):
        checkpoint.convert(src, tmp_path / "b.pt", src_format="keras", progress=False)
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet99'"):
        checkpoint.convert(src, tmp_path / "b.pt", arch="resnet99", progress=False)


@pytest.mark.parametrize("target", INSTALLED)
def test_missing_unexpected_and_misshaped_keys_are_listed(arrays, tmp_path, capsys, target):
    broken = dict(arrays)
    del broken["fc.bias"], broken["layer1.0.bn1.running_mean"]
    broken["head.weight"] = np.zeros(3, np.float32)
    broken["layer2.0.conv1.weight"] = np.zeros((128, 64, 1, 1), np.float32)
    src = save(tmp_path / "broken.pt", broken)
    assert_refused(capsys, tmp_path, src, tmp_path / f"out{SUFFIXES[target]}", "--arch", ARCH,
                   mentions=["fc.bias", "head.weight", "layer2.0.conv1.weight"])


def test_non_float_arrays_are_listed(arrays, tmp_path, capsys):
    src = save(tmp_path / "a.pt", {**arrays, "fc.weight": arrays["fc.weight"].astype(np.int32),
                                   "bn1.running_var": arrays["bn1.running_var"].astype(np.int64)})
    assert_refused(capsys, tmp_path, src, tmp_path / "b.safetensors",
                   mentions=["fc.weight (int32)", "bn1.running_var (int64)"])


@pytest.mark.parametrize("fmt", INSTALLED)
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_or_truncated_files_are_refused(arrays, tmp_path, capsys, fmt, damage):
    src = tmp_path / f"a{SUFFIXES[fmt]}"
    if damage == "garbage":
        src.write_bytes(b"\x00\x01 not a checkpoint " * 40)
    else:
        data = save(tmp_path / f"whole{SUFFIXES[fmt]}", arrays).read_bytes()
        src.write_bytes(data[: len(data) // 2])
    assert_refused(capsys, tmp_path, src, tmp_path / "b.safetensors", mentions=[f"as a {fmt} checkpoint"])


def test_missing_source_is_refused(tmp_path, capsys):
    assert_refused(capsys, tmp_path, tmp_path / "absent.pt", tmp_path / "b.safetensors", mentions=["no such file"])


def test_console_script_exit_status(tmp_path):
    script = pathlib.Path(sys.executable).with_name("rbn")
    result = subprocess.run([str(script), "convert", str(tmp_path / "a.bin"), str(tmp_path / "b.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "cannot tell the format" in result.stderr
