"""Fused CPU kernels for the channel path (``cpu_kernels.cc``), as MindSpore ``ops.Custom`` ops.

MindSpore's CPU backend has no fused per-instance passes: with its BatchNorm primitive the
channel path costs ~1.5x ``nn.BatchNorm2d`` at small batch sizes. These four kernels make it
BatchNorm's memory traffic (see ``cpu_kernels.cc``). They are compiled once per machine with the
C++ compiler (``$CXX``, else ``g++``, which Jittor needs as well) into
``$RBN_CACHE_DIR`` (default ``~/.cache/rbn``) and loaded by MindSpore (``func_type="aot"``).

Without a compiler, on a GPU/Ascend device target, or with ``RBN_MINDSPORE_CPU_KERNELS=0``,
:func:`instance_kernels` returns None and the channel path uses MindSpore's BatchNorm primitive
instead (same results within the float32 tolerance; tested both ways).
"""

import functools
import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import warnings

import mindspore as ms
from mindspore import ops

from rbn.files import atomic_output

SOURCE = pathlib.Path(__file__).with_name("cpu_kernels.cc")
# No -march=native: a cache directory may be shared by machines of different CPUs. The passes are
# memory-bound, and `omp simd` vectorizes the double-accumulated sums without -ffast-math.
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++14")
ENVIRONMENT_SWITCH = "RBN_MINDSPORE_CPU_KERNELS"


def _cache_dir():
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "rbn"
    return pathlib.Path(os.environ.get("RBN_CACHE_DIR", default))


def _compiler_version(command):
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True)
    return result.stdout


def build(compiler=None):
    """Path of the compiled kernel library, compiling it first if the cache has none.

    The file name hashes the source, the flags and the compiler's version; it is written to a
    temporary file and renamed, so concurrent builds and interrupted ones leave no broken library.
    Raises ``RuntimeError`` with the compiler's output if compiling fails.
    """
    compiler = compiler or os.environ.get("CXX", "g++")
    command = shlex.split(compiler)  # CXX may carry a launcher or flags: "ccache g++"
    if not command or shutil.which(command[0]) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _compiler_version(command).encode()).hexdigest()
    library = _cache_dir() / f"rbn_mindspore_cpu_kernels-{key[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # A concurrent build may finish first: the last rename wins, and both files are whole.
    with atomic_output(library, force=True) as temporary:
        result = subprocess.run([*command, *FLAGS, str(SOURCE), "-o", temporary], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} with {compiler} failed:\n{result.stderr}")
        os.chmod(temporary, 0o755)  # mkstemp made it private; a cache may be shared
    return library


def _two_vectors(x_shape, *_):
    return (x_shape[0],), (x_shape[0],)


def _like_first(x_shape, *_):
    return x_shape


def _first_dtype(x_dtype, *_):
    return x_dtype


def _two_first_dtypes(x_dtype, *_):
    return x_dtype, x_dtype


class InstanceKernels:
    """The four passes over (rows, cols) = (instances, spatial values); vectors are (rows,)."""

    def __init__(self, library):
        def custom(name, out_shape, out_dtype):
            return ops.Custom(f"{library}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")

        self.moments = custom("RbnInstanceMoments", _two_vectors, _two_first_dtypes)
        self.affine = custom("RbnInstanceAffine", _like_first, _first_dtype)
        self.sums = custom("RbnInstanceSums", _two_vectors, _two_first_dtypes)
        self.combine = custom("RbnInstanceCombine", _like_first, _first_dtype)


@functools.lru_cache(maxsize=None)
def instance_kernels():
    """The loaded :class:`InstanceKernels`, or None where they cannot or should not be used.

    Decided once per process (the first RBN call): a compile failure warns once and falls back.
    """
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0" or ms.get_context("device_target") != "CPU":
        return None
    try:
        return InstanceKernels(build())
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"rbn_mindspore: CPU kernels unavailable, using MindSpore's BatchNorm primitive "
                      f"(slower): {error}", RuntimeWarning, stacklevel=2)
        return None
