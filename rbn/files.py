"""Writing files a user owns: whole or not at all."""

import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_output(path, *, force=False):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Writers that insist on a file name (``save_checkpoint``, ``safetensors.save_file``)
    write to the yielded path. An existing ``path`` is refused (``FileExistsError``) unless
    ``force``; an interrupted or failing write leaves no partial file and the old one untouched.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]  # some writers pick the format from the extension
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        # mkstemp's file is private (0600); the result gets the mode any new file would get.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _umask():
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
