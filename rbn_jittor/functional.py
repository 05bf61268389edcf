"""Representative BatchNorm (Eq. 12) as a pure Jittor function.

Two paths compute the same thing:

- the channel-statistics path (``mu_c``/``sigma_c`` for both calibrations, or the
  calibrations off) writes every step of Eq. 12 as a per-(n, c) affine map
  ``Y = A[n, c] * (X - mean[n, c]) + B[n, c]`` (docs/jittor.md, "Speed"): one moments
  pass and one elementwise pass, BatchNorm's own cost, with the (N, C) algebra between them:
  ``jt.code`` kernels (:mod:`rbn_jittor.kernels`) compiled once per dtype and variant (a cold
  cache would otherwise compile a fused kernel for every op graph met).
- the literal path follows Eq. 12 step by step with Jittor's autodiff; it serves the
  spatial statistics ``mu_s``/``sigma_s`` of Table 3.

Moments are two-pass (never ``E[x^2] - E[x]^2``), and the per-(n, c) and per-channel
arithmetic of the channel path runs in float64: with float32 inputs of mean 1e4 the
float32 rounding of a mean (~5e-4) would otherwise show up in every output element.
Jittor turns Python floats into float32 constants, so inexact ones (eps, momentum, the
Bessel factor) enter as Vars of the dtype they meet (:func:`_constant`).
"""

import math

import jittor as jt
import numpy as np
from rbn_reference import Options, Parameters, check_channel_vectors, check_dtypes, check_input, check_pairs, check_statistic

from . import kernels

_CHANNEL_STATISTICS = ("mu_c", "sigma_c")
_AMP_PREFER_FLOAT32 = 1  # amp_prefer32, bit 0 of jt.flags.amp_reg (jittor/src/misc/nano_string.h)


def representative_batch_norm(input, running_mean, running_var, weight=None, bias=None, center_weight=None,
                              scale_weight=None, scale_bias=None, *, training=False, momentum=0.1, eps=1e-5,
                              centering_stat="mu_c", scaling_stat="mu_c", sync=False):
    r"""Representative Batch Normalization (Gao et al., CVPR 2021, Eq. 12) of ``input``.

    Like ``jittor.nn.batch_norm``, with two calibrations around the normalization; per
    (n, c) instance, with ``K_m``, ``K_s`` the statistics ``centering_stat``,
    ``scaling_stat`` (Table 3)::

        X_cm = X + w_m * K_m(X)
        X_m  = X_cm - E[X_cm]
        X_s  = X_m / sqrt(Var[X_cm] + eps)
        X_cs = X_s * sigmoid(w_v * K_s(X_s) + w_b)
        Y    = X_cs * gamma + beta

    ``E``, ``Var`` are the batch mean and biased variance per channel in training (or when
    there are no running statistics), the running statistics otherwise. A training call
    updates ``running_mean``/``running_var`` in place to ``(1 - momentum) * old + momentum *
    batch`` with the UNBIASED batch variance of ``X_cm`` (PyTorch's convention;
    ``jittor.nn.BatchNorm`` feeds the biased one). A ``None`` parameter switches its part
    off. One value per channel is allowed in training, as ``jittor.nn.BatchNorm`` allows it
    (the output is then ``beta``, and ``running_var`` receives 0). An input without elements
    gives an empty output and leaves the running statistics alone. The input is never
    modified.

    Args:
        input (Var): (N, C, *) floating-point input, 0 to 3 spatial dims; float16 is
            computed in float32 (the vectors float32 then), under Jittor's AMP too.
        running_mean (Var or None): (C,) running mean, or None to always use batch statistics.
        running_var (Var or None): (C,) running variance; given with ``running_mean``.
        weight (Var, optional): gamma, (C,). Default: None (no affine).
        bias (Var, optional): beta, (C,); given with ``weight``. Default: None.
        center_weight (Var, optional): w_m, (C,). Default: None (no centering calibration).
        scale_weight (Var, optional): w_v, (C,). Default: None (no scaling calibration).
        scale_bias (Var, optional): w_b, (C,); given with ``scale_weight``. Default: None.
        training (bool): use and update batch statistics. Default: False.
        momentum (float or Var): factor of the new batch value in the running update. Default: 0.1.
        eps (float): added to the variances. Default: 1e-5.
        centering_stat (str): K_m: ``"mu_c"``, ``"sigma_c"``, ``"mu_s"`` or ``"sigma_s"``. Default: ``"mu_c"``.
        scaling_stat (str): K_s, the same four. Default: ``"mu_c"``.
        sync (bool): under ``mpirun`` (``jt.in_mpi``), take the batch moments over the union of
            the processes' batches, each weighted by its size (sizes may differ; every process
            needs at least one sample, else all of them raise ``ValueError``). Default: False.

    Shape:
        - Input: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W).
        - Output: the same shape and dtype as the input.

    Example::

        >>> import jittor as jt
        >>> from rbn_jittor.functional import representative_batch_norm
        >>> x = jt.randn(3, 4, 5, 4)
        >>> mean, var = jt.zeros(4).stop_grad(), jt.ones(4).stop_grad()
        >>> y = representative_batch_norm(x, mean, var, jt.ones(4), jt.zeros(4), jt.zeros(4),
        ...                               jt.zeros(4), jt.ones(4), training=True)
        >>> tuple(y.shape)
        (3, 4, 5, 4)
        >>> bool((mean != 0).all())  # updated in place
        True
    """
    params = Parameters(weight, bias, center_weight, scale_weight, scale_bias)
    options = Options(eps, centering_stat, scaling_stat)
    # Half precision: statistics and per-channel math in float32, as jittor.nn.BatchNorm under
    # AMP; the vectors float32, the result in the input's dtype.
    compute_dtype = "float32" if input.dtype == "float16" else str(input.dtype)
    _check_arguments(input, compute_dtype, running_mean, running_var, params, options)
    with jt.flag_scope(amp_reg=_amp_register(compute_dtype)):
        x = input if compute_dtype == input.dtype else input.cast(compute_dtype)
        y = _normalize(x, running_mean, running_var, params, options, training, momentum, sync)
    return y if y.dtype == input.dtype else y.cast(input.dtype)


def _normalize(x, running_mean, running_var, params, options, training, momentum, sync):
    """:func:`representative_batch_norm` on checked arguments, in ``x``'s dtype."""
    batch_statistics = training or running_mean is None
    share, count = _process_share(x, sync and batch_statistics)
    if x.numel() == 0:
        return _empty_batch(x, params)
    running = None if batch_statistics else (running_mean, running_var)
    # A calibration that is off has no statistic; "mu_c" keeps it on the channel path.
    path_options = options._replace(
        centering_stat=options.centering_stat if params.center_weight is not None else "mu_c",
        scaling_stat=options.scaling_stat if params.scale_weight is not None else "mu_c")
    channel = {path_options.centering_stat, path_options.scaling_stat} <= set(_CHANNEL_STATISTICS)
    # Without calibrations eval is elementwise; the literal path then reads no instance moment,
    # so a NaN or Inf stays in its element, as with jittor.nn.BatchNorm.
    elementwise = running is not None and params.center_weight is None and params.scale_weight is None
    path = _channel_path if channel and not elementwise else _literal_path
    y, mean, var = path(x, params, running, path_options, share)
    if training and running_mean is not None:
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y


def _amp_register(compute_dtype):
    """Jittor's AMP register (``jt.flags.amp_reg``) for RBN's own ops.

    Under ``jt.flags.auto_mixed_precision_level`` 4 to 6 Jittor makes every float op float16,
    even on float32 or float64 operands. Ops built with ``amp_prefer32`` set stay float32, in
    the backward too (each op records the register it was built under and its gradient ops
    are built under it). Without AMP the register stays clear, so the float64 per-(n, c) math
    stays float64; a float64 input keeps its own dtype under AMP too.
    """
    return _AMP_PREFER_FLOAT32 if jt.flags.amp_reg and compute_dtype == "float32" else 0


# ----------------------------------------------------------------------------- validation


def _check_arguments(input, compute_dtype, running_mean, running_var, params, options):
    """Raise the oracle's errors (same wording) for anything Eq. 12 cannot take.

    No one-value-per-channel check: ``jittor.nn.BatchNorm`` normalizes a batch of one too.
    """
    vectors = dict(running_mean=running_mean, running_var=running_var, **params._asdict())
    check_input(input.shape, input.dtype, input.dtype.is_float(), uses_batch_statistics=False)
    check_statistic("centering_stat", options.centering_stat)
    check_statistic("scaling_stat", options.scaling_stat)
    check_pairs({name: value is not None for name, value in vectors.items()})
    check_channel_vectors(input.shape[1], {name: None if value is None else tuple(value.shape)
                                           for name, value in vectors.items()})
    check_dtypes(compute_dtype, {name: None if value is None else value.dtype for name, value in vectors.items()})


# ----------------------------------------------------------------------------- running statistics


def _update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """The running statistics from the batch ones, the variance made unbiased (``count`` values).

    With one value per channel the (undefined) unbiased variance is taken as the biased one,
    0, as ``jittor.nn.BatchNorm`` feeds it.
    """
    _lerp_in_place(running_mean, mean, momentum)
    _lerp_in_place(running_var, var * _constant(count / max(count - 1, 1), var.dtype), momentum)


# ----------------------------------------------------------------------------- literal path


def _instance_statistic(statistic, x, eps):
    """``K`` of Eq. 5 / Eq. 9 of ``x`` (N, C, L), keeping the reduced dim. Without spatial dims
    (L = 1) ``mu_c(X) = X`` and ``sigma_c(X) = sqrt(eps)``, as the oracle has them."""
    dims = _reduction_dims(statistic, x.ndim)
    mean = _mean(x, dims, keepdims=True)
    if statistic.startswith("mu"):
        return mean
    deviation = x - mean
    return jt.sqrt(_mean(deviation * deviation, dims, keepdims=True) + eps)


def _literal_path(x, params, running, options, share):
    """Eq. 12 step by step, with Jittor's autodiff; any statistics.

    ``params``: ``Parameters`` of (C,) Vars or None; ``running``: None (batch statistics) or
    the running mean and variance; ``share``: this process's share of the values per channel
    under MPI (:func:`_process_share`), or None. Returns y and the (C,) batch mean and biased
    variance of ``X_cm``, over every MPI process when ``share`` is given.
    """
    # On x viewed as (N, C, L), as the channel path sees it: Jittor compiles a fused kernel per
    # op graph, ranks included, so 1d, 2d and 3d inputs then share theirs (a cold cache compiles
    # fewer).
    shape = x.shape
    x = x.reshape((shape[0], shape[1], -1))
    eps = _constant(options.eps, x.dtype)
    dims = [0, 2]
    x_cm = x
    if params.center_weight is not None:
        x_cm = x + _per_channel(params.center_weight, x.ndim) * _instance_statistic(options.centering_stat, x, eps)
    if running is None:
        # two passes; the second also picks up what float rounding left of the mean
        shift = _mean_over_processes(_mean(x_cm, dims, keepdims=True), share)
        centered = x_cm - shift
        offset = _mean_over_processes(_mean(centered, dims, keepdims=True), share)
        centered = centered - offset
        batch_var = _mean_over_processes(_mean(centered * centered, dims), share)
        batch_mean = (shift + offset).reshape((-1,))
    else:
        batch_mean, batch_var = running
        centered = x_cm - _per_channel(batch_mean, x.ndim)
    x_s = centered / _per_channel(jt.sqrt(batch_var + eps), x.ndim)
    y = x_s
    if params.scale_weight is not None:
        k_s = _instance_statistic(options.scaling_stat, x_s, eps)
        y = x_s * jt.sigmoid(_per_channel(params.scale_weight, x.ndim) * k_s
                             + _per_channel(params.scale_bias, x.ndim))
    if params.weight is not None:
        y = y * _per_channel(params.weight, x.ndim) + _per_channel(params.bias, x.ndim)
    return y.reshape(shape), batch_mean, batch_var


# ----------------------------------------------------------------------------- channel path


def _channel_coefficients(mean, var, params, running, options, share):
    """``A``, ``B`` of ``Y = A * (X - mean) + B`` per (n, c), and the batch statistics.

    ``mean``, ``var``: the per-instance mean and biased variance of X, (N, C) float64;
    ``params``, ``running``, ``share`` as in :func:`_literal_path`; channel statistics only. Returns
    ``A``, ``B`` (N, C) float64 and the (C,) batch mean and biased variance of ``X_cm``. Two
    ``jt.code`` kernels (:class:`kernels.BatchMoments`, :class:`kernels.Coefficients`); under MPI
    the processes' batch moments are merged between them (law of total variance).
    """
    eps = _constant(options.eps, "float64")
    vectors = Parameters(*(None if value is None else value.float64() for value in params))
    mean_cm, batch_mean, batch_var = kernels.BatchMoments()(mean, var, eps, vectors.center_weight,
                                                            options.centering_stat)
    if share is not None:
        batch_mean, local_mean = _mean_over_processes(batch_mean, share), batch_mean
        offset = local_mean - batch_mean
        batch_var = _mean_over_processes(batch_var + offset * offset, share)
    centre, spread = (batch_mean, batch_var) if running is None else (stat.float64() for stat in running)
    scale, shift = kernels.Coefficients()(mean_cm, var, centre, spread, eps, vectors.scale_weight,
                                          vectors.scale_bias, vectors.weight, vectors.bias, options.scaling_stat)
    return scale, shift, batch_mean, batch_var


def _channel_path(x, params, running, options, share):
    """Eq. 12 as ``Y = A * (X - mean) + B`` per (n, c): the two passes over ``x`` and the (N, C)
    algebra between them are ``jt.code`` kernels (:mod:`rbn_jittor.kernels`)."""
    n, c = x.shape[:2]
    x3 = x.reshape((n, c, -1))
    mean, var = kernels.InstanceMoments()(x3)
    scale, shift, batch_mean, batch_var = _channel_coefficients(mean, var, params, running, options, share)
    return kernels.InstanceAffine()(x3, mean, scale, shift).reshape(x.shape), batch_mean, batch_var


# ----------------------------------------------------------------------------- shared pieces


def _per_channel(vector, ndim):
    """A (C,) Var as (1, C, 1, ...), broadcasting over an input of ``ndim`` dims."""
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def _reduction_dims(statistic, ndim):
    """Dims a statistic reduces over: the spatial dims for ``*_c``, the channel dim for ``*_s``."""
    return list(range(2, ndim)) if statistic.endswith("_c") else [1]


def _empty_batch(input, params):
    """What an input without elements gets: an empty output, as from ``jittor.nn.BatchNorm``.

    It is connected to the parameters (by their first element, a no-op on no elements), so
    their gradients are zeros; the running statistics stay as they are.
    """
    y = input.clone()
    for param in params:
        if param is not None:
            y = y + param[0]
    return y


def _lerp_in_place(stat, batch, momentum):
    """``(1 - momentum) * old + momentum * batch`` in place, outside the autograd graph."""
    if not isinstance(momentum, jt.Var):
        momentum = _constant(momentum, stat.dtype)
    new = stat + (batch.detach().cast(stat.dtype) - stat) * momentum.cast(stat.dtype)
    stat.update(new)


def _constant(value, dtype):
    """A Python number as a (1,) Var of ``dtype`` (Jittor would make it a float32 constant).

    Computed at once (docs/jittor.md, "one-element arrays"): left in the graph, a (1,) array that
    feeds two ops or a ``jt.code`` kernel runs under a kernel key without its dtype, and Jittor
    reused the kernel of a float32 one run earlier in the process for a float64 one (outputs
    off by up to 1.4, not rounding).
    """
    with jt.flag_scope(auto_convert_64_to_32=0):
        constant = jt.array(np.array([value], dtype=str(dtype)))
    constant.sync()
    return constant


def _mean(x, dims, keepdims=False):
    """Mean as sum / count: the grad of Jittor's ``mean`` scales by a float32 ``1 / count``."""
    return x.sum(dims, keepdims=keepdims) / math.prod(x.shape[dim] for dim in dims)


def _process_share(input, sync):
    """(this process's share of the values per channel, their number over the MPI processes), or
    (None, the local number) without ``sync``, outside ``mpirun`` or with one process.

    One ``mpi_all_reduce`` of every process's count, which every process joins first: Jittor's
    all-reduce (forward and backward) hangs unless every process joins it, and a process without
    samples has no moments to send, so when one is empty all of them raise here, together.
    """
    count = input.numel() // input.shape[1]
    if not (sync and jt.in_mpi and jt.world_size > 1):
        return None, count
    counts = np.zeros(jt.world_size)
    counts[jt.rank] = count
    with jt.flag_scope(auto_convert_64_to_32=0):
        counts = jt.array(counts).mpi_all_reduce("add").numpy()
    if not counts.all():
        raise ValueError(f"sync=True under MPI needs at least one sample on every process (got batches of "
                         f"{counts.astype(int).tolist()} values per channel on ranks 0..{jt.world_size - 1})")
    return count / counts.sum(), int(counts.sum())


def _mean_over_processes(value, share):
    """The mean over the processes' batches of a per-process mean ``value``, weighted by each
    process's ``share`` of the values (:func:`_process_share`); ``value`` itself when None."""
    return value if share is None else (value * _constant(share, value.dtype)).mpi_all_reduce("add")
