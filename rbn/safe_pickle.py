"""Reading Jittor's ``.pkl`` checkpoints without ever running code from the file.

``jt.save`` writes ``pickle.dumps(obj, 4) + sha1(pickle) + b"HCAJSLHD"``; ``jt.load`` hands the
bytes to ``pickle.loads``, which calls any function the file names (``os.system``, say): the
SHA-1 trailer detects corruption, not tampering. This reader works like torch's
``weights_only`` unpickler: the file may only name the few globals that a ``jt.save`` of a
state dict needs (NumPy arrays and their dtypes, ``OrderedDict``, ``jittor.Var`` around an
array); every other global is refused, by name, before anything is called. Dicts, lists,
tuples, strings and numbers need no global at all.
"""

import codecs
import collections
import hashlib
import io
import pickle

import numpy as np

JITTOR_TRAILER = b"HCAJSLHD"  # jt.save's marker after the 20-byte SHA-1 of the pickle
_SHA1_SIZE = 20


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global that a checkpoint has no business with; nothing was run."""


def _reconstruct(subtype, shape, dtype):
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays only (a subclass could run code)."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refused an array of type {subtype!r}: only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _jittor_var(data):
    """``jittor.Var(array)`` as ``jt.save`` pickles it: the array itself (no Jittor needed)."""
    if not isinstance(data, np.ndarray):
        raise UnsafePickleError(f"refused a jittor.Var holding {type(data).__name__}, not an array")
    return data


_NUMPY_CORE = ("numpy.core", "numpy._core")  # NumPy 1.x and 2.x spell the private module differently
ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells bytes (array data)
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("jittor", "Var"): _jittor_var,
    ("jittor_core", "Var"): _jittor_var,
    ("jittor", "jittor_core.Var"): _jittor_var,  # Var.__qualname__, under protocol 4
    **{(f"{core}.multiarray", "_reconstruct"): _reconstruct for core in _NUMPY_CORE},
    **{(f"{core}.multiarray", "scalar"): np.core.multiarray.scalar for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): np.core.numeric._frombuffer for core in _NUMPY_CORE},  # protocol 5
}
# NumPy's dtype classes (numpy.dtypes.Float32DType, ...) are what NumPy 1.25+ pickles dtypes as.
ALLOWED.update({("numpy.dtypes", name): getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", ()))
                if name.endswith("DType") and name != "ObjectDType"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load the global {module}.{name}: a checkpoint may only hold "
                                    "dicts, lists, numbers, strings and NumPy arrays") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refused a persistent reference: a checkpoint may not point outside the file")


def loads(data):
    """Unpickle ``data`` allowing only checkpoint contents; raise :class:`UnsafePickleError` otherwise."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load_jittor(path):
    """A ``jt.save`` file: its SHA-1 trailer checked when present, then read by :func:`loads`."""
    with open(path, "rb") as stream:
        data = stream.read()
    if data.endswith(JITTOR_TRAILER):
        body_end = len(data) - len(JITTOR_TRAILER) - _SHA1_SIZE
        data, checksum = data[:body_end], data[body_end:-len(JITTOR_TRAILER)]
        if hashlib.sha1(data).digest() != checksum:
            raise ValueError("the SHA-1 checksum of the pickle does not match its trailer (corrupt or altered file)")
    return loads(data)
