"""Hostile and broken checkpoint files: no file runs code, every bad file gets exit status 2 with
a one-line reason, and nothing the user owns is overwritten or left half-written."""

import importlib.util
import os
import pathlib
import pickle
import select
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")
import torch  # noqa: E402

from rbn import checkpoint, safe_pickle  # noqa: E402
from rbn.cli import main  # noqa: E402
from test_models import random_state  # noqa: E402

from test_checkpoint import ARCH, SUFFIXES  # noqa: E402
from test_checkpoint import INSTALLED as FORMATS  # noqa: E402
from test_checkpoint import save as write  # noqa: E402

EXISTING_DST = b"the user's own file"


@pytest.fixture(scope="module")
def arrays():
    return random_state(ARCH)


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def convert(capsys, *args):
    status = main(["convert", *map(str, args)])
    return status, capsys.readouterr().err


def assert_refused_cleanly(capsys, src, dst, *args, mentions=()):
    """Exit 2, one error line, DST as it was (absent, or the user's bytes with --force), no temporary."""
    for existing in (False, True):
        if existing:
            dst.write_bytes(EXISTING_DST)
        before = sorted(path.name for path in dst.parent.iterdir())
        status, err = convert(capsys, src, dst, *args, *(["--force"] if existing else []))
        errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
        assert status == 2, err
        assert len(errors) == 1 and errors[0].startswith("rbn convert: error:"), err
        for text in mentions:
            assert text in errors[0]
        assert sorted(path.name for path in dst.parent.iterdir()) == before
        assert dst.read_bytes() == EXISTING_DST if existing else not dst.exists()
        dst.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- no file runs code


def test_hostile_jittor_pickle_is_refused_before_it_runs(arrays, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    src = tmp_path / "hostile.pkl"
    src.write_bytes(pickle.dumps({"fc.weight": arrays["fc.weight"], "x": Payload(marker)}, 4))
    assert_refused_cleanly(capsys, src, tmp_path / "out.pt", mentions=["posix.system"])
    assert not marker.exists()


def test_hostile_jittor_pickle_with_a_valid_checksum_trailer_is_refused(arrays, tmp_path, capsys):
    """jt.save's SHA-1 trailer proves nothing: whoever wrote the payload wrote the checksum too."""
    import hashlib

    marker = tmp_path / "PWNED"
    body = pickle.dumps({"x": Payload(marker)}, 4)
    src = tmp_path / "hostile.pkl"
    src.write_bytes(body + hashlib.sha1(body).digest() + safe_pickle.JITTOR_TRAILER)
    assert_refused_cleanly(capsys, src, tmp_path / "out.safetensors", mentions=["posix.system"])
    assert not marker.exists()


def test_hostile_torch_file_is_refused_before_it_runs(arrays, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    src = tmp_path / "hostile.pt"
    torch.save({"fc.weight": torch.zeros(2), "x": Payload(marker)}, src)
    assert_refused_cleanly(capsys, src, tmp_path / "out.safetensors", mentions=["posix.system"])
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"),
                                          ("torch", "load"), ("jittor", "load")])
def test_safe_pickle_refuses_every_other_global(module, name):
    data = b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) \
        + name.encode() + b"\x93."  # PROTO 4, SHORT_BINUNICODE x2, STACK_GLOBAL, STOP
    with pytest.raises(safe_pickle.UnsafePickleError, match=f"{module}.{name}"):
        safe_pickle.loads(data)


def test_array_subclasses_are_refused():
    data = pickle.dumps(np.ma.masked_array([1.0, 2.0]), 4)
    with pytest.raises(safe_pickle.UnsafePickleError):
        safe_pickle.loads(data)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_pickle_reads_what_pickle_writes_for_state_dicts(protocol):
    from collections import OrderedDict

    state = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), count=np.array(7),
                        half=np.ones(3, np.float16), fortran=np.asfortranarray(np.ones((2, 3))), meta=[1, "a", 2.5])
    loaded = safe_pickle.loads(pickle.dumps(state, protocol))
    assert list(loaded) == list(state) and loaded["meta"] == state["meta"]
    for name in ("w", "count", "half", "fortran"):
        assert loaded[name].dtype == state[name].dtype and np.array_equal(loaded[name], state[name])


@pytest.mark.skipif(importlib.util.find_spec("jittor") is None, reason="jittor is not installed")
def test_written_pkl_loads_with_stock_jt_load_and_with_ours(arrays, tmp_path):
    import jittor as jt

    dst = tmp_path / "out.pkl"
    write(dst, arrays)
    stock, ours = jt.load(str(dst)), safe_pickle.load_jittor(dst)
    assert sorted(stock) == sorted(ours) == sorted(arrays)
    for name, array in arrays.items():
        assert np.array_equal(np.asarray(stock[name]), array) and np.array_equal(ours[name], array)


@pytest.mark.skipif(importlib.util.find_spec("jittor") is None, reason="jittor is not installed")
def test_a_state_dict_of_jittor_vars_saved_by_jt_save_is_read(tmp_path):
    import jittor as jt

    src = tmp_path / "vars.pkl"
    jt.save({"fc.weight": jt.array(np.ones((10, 3), np.float32)), "fc.bias": jt.zeros(10)}, str(src))
    arrays = safe_pickle.load_jittor(src)
    assert np.array_equal(arrays["fc.weight"], np.ones((10, 3), np.float32)) and arrays["fc.bias"].shape == (10,)


def test_altered_pickle_under_a_checksum_trailer_is_refused(arrays, tmp_path, capsys):
    src = write(tmp_path / "a.pkl", {"fc.weight": arrays["fc.weight"]})
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    src.write_bytes(bytes(data))
    assert_refused_cleanly(capsys, src, tmp_path / "out.pt", mentions=["SHA-1"])


# ----------------------------------------------------------------------------- every bad file


def damaged(kind, fmt, arrays, directory):
    """A bad SRC of ``fmt``'s suffix: what a user may hand to ``rbn convert``."""
    src = directory / f"src{SUFFIXES[fmt]}"
    if kind == "empty":
        src.write_bytes(b"")
    elif kind == "truncated":
        data = write(directory / f"whole{SUFFIXES[fmt]}", arrays).read_bytes()
        (directory / f"whole{SUFFIXES[fmt]}").unlink()
        src.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "random bytes":
        src.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "directory":
        src.mkdir()
    elif kind == "other format":  # a real checkpoint of the next format under this suffix
        others = list(SUFFIXES)
        other = others[(others.index(fmt) + 1) % len(others)]
        if other != "neutral" and importlib.util.find_spec(other) is None:
            other = "neutral"
        data = write(directory / f"other{SUFFIXES[other]}", arrays).read_bytes()
        (directory / f"other{SUFFIXES[other]}").unlink()
        src.write_bytes(data)
    return src


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["empty", "truncated", "random bytes", "directory", "other format"])
def test_bad_files_are_refused_with_one_line(arrays, tmp_path, capsys, fmt, kind):
    source_dir, target_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir(), target_dir.mkdir()
    src = damaged(kind, fmt, arrays, source_dir)
    mention = "is a directory" if kind == "directory" else f"as a {fmt} checkpoint"
    assert_refused_cleanly(capsys, src, target_dir / "dst.safetensors", mentions=[mention])


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_of_another_architecture_is_refused(arrays, tmp_path, capsys, fmt):
    src = write(tmp_path / f"src{SUFFIXES[fmt]}", arrays)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused_cleanly(capsys, src, out / "dst.pt", "--arch", "mobilenet_v2",
                           mentions=["does not fit", "mobilenet_v2", "unexpected keys"])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused(arrays, tmp_path, capsys, fmt, value):
    broken = dict(arrays)
    broken["layer1.0.conv1.weight"] = broken["layer1.0.conv1.weight"].copy()
    broken["layer1.0.conv1.weight"][0, 0, 0, 0] = value
    src = write(tmp_path / f"src{SUFFIXES[fmt]}", broken)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused_cleanly(capsys, src, out / "dst.safetensors", mentions=["NaN or Inf", "layer1.0.conv1.weight"])


def _convert_as_nobody(src, dst):
    """``rbn convert SRC DST`` in a forked child that dropped root (root reads any file).

    Returns (exit status, stderr). Everything is imported before the fork, so the child only
    opens files; it is killed after 60 s so that a hang fails instead of stalling.
    """
    import pwd
    import time

    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            sys.stderr = open(write_end, "w", closefd=False)  # pytest captures the parent's
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            status = main(["convert", str(src), str(dst)])
            sys.stderr.flush()
            os._exit(status)
        finally:
            os._exit(99)
    os.close(write_end)
    deadline, err = time.monotonic() + 60, b""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if select.select([read_end], [], [], 0.1)[0]:
            err += os.read(read_end, 65536)
        if done:
            err += os.read(read_end, 65536) if select.select([read_end], [], [], 0)[0] else b""
            os.close(read_end)
            return os.waitstatus_to_exitcode(status), err.decode()
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("rbn convert as nobody did not finish in 60 s")


@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_file_is_refused(arrays, fmt):
    if fmt != "neutral":
        checkpoint.adapter(fmt)  # import the framework before the fork
    # tmp_path's parents are private to root: a world-traversable directory, so that only the
    # file's own permission bits stop the reader.
    directory = pathlib.Path(tempfile.mkdtemp(prefix="rbn-unreadable-"))
    try:
        directory.chmod(0o755)
        src = write(directory / f"src{SUFFIXES[fmt]}", arrays)
        src.chmod(0o000)
        dst = directory / "dst.safetensors"
        if os.geteuid() == 0:
            status, err = _convert_as_nobody(src, dst)
        else:
            status, err = main(["convert", str(src), str(dst)]), ""
        assert status == 2, err
        assert "Permission denied" in err or os.geteuid() != 0
        assert not dst.exists() and sorted(path.name for path in directory.iterdir()) == [src.name]
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


def test_interrupted_write_leaves_the_old_destination(arrays, tmp_path, monkeypatch):
    """A kill between the temporary file's write and the rename: the old DST stays whole."""
    from rbn import files

    src = write(tmp_path / "a.pt", arrays)
    dst = tmp_path / "b.safetensors"
    dst.write_bytes(EXISTING_DST)

    def killed(temporary, path):
        assert pathlib.Path(temporary).stat().st_size > 0  # the new file was written in full
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.convert(src, dst, force=True, progress=False)
    assert dst.read_bytes() == EXISTING_DST
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.pt", "b.safetensors"]
