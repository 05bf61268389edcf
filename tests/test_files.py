"""rbn.files.atomic_output: whole files or none, with the mode a new file gets."""

import os
import stat

import pytest

from rbn.files import atomic_output


def umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_file_has_the_mode_of_a_new_file(tmp_path):
    target, plain = tmp_path / "out.bin", tmp_path / "plain.bin"
    with atomic_output(target) as path, open(path, "wb") as stream:
        stream.write(b"data")
    plain.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target, force=True) as path:
            with open(path, "wb") as stream:
                stream.write(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.bin"]


def test_existing_file_needs_force(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--force"):
        with atomic_output(target):
            pass
    assert target.read_bytes() == b"old"
