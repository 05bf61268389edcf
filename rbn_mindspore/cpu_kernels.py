"""Fused CPU kernels for the channel path (``cpu_kernels.cc``), as MindSpore ``ops.Custom`` ops.

MindSpore's CPU backend has no fused per-instance passes: with its BatchNorm primitive the
channel path costs ~1.5x ``nn.BatchNorm2d`` at small batch sizes. These four kernels make it
BatchNorm's memory traffic (see ``cpu_kernels.cc``), and the layer kernels (:meth:`InstanceKernels.layer`)
do a whole layer of one process in one call each way. They are compiled once per machine with the
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
    r"""Path of the compiled kernel library, compiling it first if the cache has none.

    The kernels compute the passes of Eq. 12's channel path (:math:`X_{cm} = X + w_m K_m`,
    :math:`X_s = (X_{cm} - \mathrm{E}[X_{cm}]) / \sqrt{\mathrm{Var}[X_{cm}] + \epsilon}`,
    :math:`X_{cs} = X_s \cdot \mathrm{sigmoid}(w_v K_s + w_b)`, :math:`Y = X_{cs} \gamma + \beta`,
    per instance ``Y = A * (X - mean) + B``). The file name hashes the source, the flags and the
    compiler's version; it is written to a temporary file and renamed, so concurrent builds and
    interrupted ones leave no broken library.

    Args:
        compiler (str, optional): the compiler command; ``None`` takes ``$CXX``, else ``g++``.
            Default: ``None`` .

    Returns:
        pathlib.Path, the shared library in ``$RBN_CACHE_DIR`` (default ``~/.cache/rbn``).

    Raises:
        RuntimeError: If there is no such compiler, or compiling fails (with its output).

    Supported Platforms:
        ``CPU``

    Examples:
        >>> from rbn_mindspore import cpu_kernels
        >>> cpu_kernels.build().suffix
        '.so'
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


def _layer_outputs(x_shape, *_):
    rows, channels = (x_shape[0] * x_shape[1],), (x_shape[1],)
    return x_shape, rows, rows, channels, channels


def _layer_gradients(x_shape, *_):
    return (x_shape,) + ((x_shape[1],),) * 7


def _layer_output_dtypes(x_dtype, *_):
    return (x_dtype,) * 5


def _layer_gradient_dtypes(x_dtype, *_):
    return (x_dtype,) * 8


class InstanceKernels:
    r"""The four passes over (rows, cols) = (instances, spatial values) as ``ops.Custom`` ops;
    vectors are (rows,).

    For an instance row x with mean m (Eq. 12's channel path, ``Y = A * (X - mean) + B``):
    ``moments(x) -> (mean, biased var)``; ``affine(x, m, a, b) = a * (x - m) + b``;
    ``sums(dy, x, m) -> (sum dy, sum dy * (x - m))``;
    ``combine(dy, x, m, p, q, r) = p * dy + q * (x - m) + r``. float32 or float64, sums in double.

    Args:
        library (pathlib.Path): what :func:`build` returned.

    Inputs:
        - **x**, **dy** (Tensor) - :math:`(rows, cols)`; the vectors :math:`(rows,)`.

    Outputs:
        Tensors of shape :math:`(rows,)` (moments, sums) or :math:`(rows, cols)` (affine, combine).

    :meth:`layer` gives the whole layer's two kernels.

    Supported Platforms:
        ``CPU``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore import cpu_kernels
        >>> kernels = cpu_kernels.InstanceKernels(cpu_kernels.build())
        >>> mean, var = kernels.moments(ms.Tensor(np.array([[1.0, 3.0], [2.0, 2.0]], np.float32)))
        >>> print(mean, var)
        [2. 2.] [1. 0.]
    """

    def __init__(self, library):
        self.library = library
        self.moments = self._custom("RbnInstanceMoments", _two_vectors, _two_first_dtypes)
        self.affine = self._custom("RbnInstanceAffine", _like_first, _first_dtype)
        self.sums = self._custom("RbnInstanceSums", _two_vectors, _two_first_dtypes)
        self.combine = self._custom("RbnInstanceCombine", _like_first, _first_dtype)
        self._layers = {}

    def _custom(self, name, out_shape, out_dtype):
        return ops.Custom(f"{self.library}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")

    def layer(self, centering_stat, scaling_stat, batch_statistics):
        r"""The forward and backward kernels of Eq. 12's channel path for one process, x viewed as
        :math:`(N, C, S)`: one call each way, the (N, C) algebra in float64 between the passes.

        ``forward(x, weight, bias, center_weight, scale_weight, scale_bias, running_mean,
        running_var, eps) -> (y, mean, var, batch_mean, batch_var)``: the seven vectors
        :math:`(C,)` (neutral values where a part is off: :math:`w_m = 0`, :math:`\gamma = 1`,
        :math:`\beta = 0`), `eps` :math:`(1,)`; `mean`, `var` the instances' moments
        :math:`(N C,)`; the batch (or, without `batch_statistics`, the running) mean and biased
        variance :math:`(C,)`. Every tensor in x's dtype, float32 or float64.
        ``backward(x, dy, mean, var, <the seven vectors>, eps) -> (dx, <their seven gradients>)``.

        Args:
            centering_stat (str): :math:`K_m`, ``"mu_c"`` or ``"sigma_c"``.
            scaling_stat (str): :math:`K_s`, ``"mu_c"`` or ``"sigma_c"``; None: no scaling
                calibration.
            batch_statistics (bool): batch statistics (training) or the running ones.

        Returns:
            tuple(ops.Custom, ops.Custom), made once per choice.
        """
        key = (centering_stat, scaling_stat, batch_statistics)
        if key not in self._layers:
            suffix = f"{centering_stat}_{scaling_stat or 'none'}_{'batch' if batch_statistics else 'running'}"
            self._layers[key] = (self._custom(f"RbnLayerForward_{suffix}", _layer_outputs, _layer_output_dtypes),
                                 self._custom(f"RbnLayerBackward_{suffix}", _layer_gradients, _layer_gradient_dtypes))
        return self._layers[key]


@functools.lru_cache(maxsize=None)
def instance_kernels():
    r"""The loaded :class:`InstanceKernels` for the passes of Eq. 12's channel path, or None
    where they cannot or should not be used (``$RBN_MINDSPORE_CPU_KERNELS=0``, a device target
    other than CPU, or no working compiler).

    Decided once per process (the first RBN call): a compile failure warns once and falls back
    to MindSpore's BatchNorm primitive.

    Returns:
        InstanceKernels or None.

    Supported Platforms:
        ``CPU`` (``GPU`` ``Ascend``: always None)

    Examples:
        >>> from rbn_mindspore import cpu_kernels
        >>> kernels = cpu_kernels.instance_kernels()
        >>> kernels is None or hasattr(kernels, "combine")
        True
    """
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0" or ms.get_context("device_target") != "CPU":
        return None
    try:
        return InstanceKernels(build())
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"rbn_mindspore: CPU kernels unavailable, using MindSpore's BatchNorm primitive "
                      f"(slower): {error}", RuntimeWarning, stacklevel=2)
        return None
