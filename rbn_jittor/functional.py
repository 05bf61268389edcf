"""Representative BatchNorm (Eq. 12) as a pure Jittor function.

Two paths compute the same thing:

- the channel-statistics path (``mu_c``/``sigma_c`` for both calibrations, or the
  calibrations off) writes every step of Eq. 12 as a per-(n, c) affine map
  ``Y = A[n, c] * X + B[n, c]`` (shared/notes/performance.md): one moments pass and one fused
  elementwise pass, BatchNorm's own cost.
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
from rbn_reference import check_channel_vectors, check_input, check_statistic

_CHANNEL_STATISTICS = ("mu_c", "sigma_c")


def representative_batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                              center_weight=None, scale_weight=None, scale_bias=None,
                              training=False, momentum=0.1, eps=1e-5, centering_stat="mu_c",
                              scaling_stat="mu_c", sync=False):
    """Representative BatchNorm of ``x`` (N, C, *spatial), like ``jittor.nn.batch_norm``.

    A ``None`` parameter switches its part off: no ``weight``/``bias`` => no affine, no
    ``center_weight`` => no centering calibration, no ``scale_weight``/``scale_bias`` =>
    no scaling calibration. Batch statistics are used when ``training`` or when there are
    no running statistics; in training the running statistics are updated in place as
    ``(1 - momentum) * old + momentum * batch`` with the UNBIASED batch variance (PyTorch's
    convention; ``jittor.nn.BatchNorm`` feeds the biased one). ``momentum`` may be a Var.
    ``sync`` averages the batch moments over MPI processes (``jt.in_mpi``), which must all
    hold the same batch size. ``x`` is never modified.
    """
    _check_arguments(x, running_mean, running_var, weight, bias, center_weight, scale_weight,
                     scale_bias, centering_stat, scaling_stat)
    batch_statistics = training or running_mean is None
    world_size = jt.world_size if sync and jt.in_mpi else 1
    count = x.numel() // x.shape[1] * world_size
    if batch_statistics and count == 1:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {tuple(x.shape)}")
    running = None if batch_statistics else (running_mean, running_var)
    calibrations = {centering_stat if center_weight is not None else "mu_c",
                    scaling_stat if scale_weight is not None else "mu_c"}
    path = _channel_path if calibrations <= set(_CHANNEL_STATISTICS) else _literal_path
    y, mean, var = path(x, running, weight, bias, center_weight, scale_weight, scale_bias,
                        eps, centering_stat, scaling_stat, world_size > 1)
    if training and running_mean is not None:
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y


# ----------------------------------------------------------------------------- validation


def _check_arguments(x, running_mean, running_var, weight, bias, center_weight, scale_weight,
                     scale_bias, centering_stat, scaling_stat):
    # The one-value-per-channel check is the caller's: under MPI it counts every process's batch.
    vectors = dict(running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                   center_weight=center_weight, scale_weight=scale_weight, scale_bias=scale_bias)
    check_input(x.shape, x.dtype, x.dtype.is_float(), uses_batch_statistics=False)
    check_statistic("centering_stat", centering_stat)
    check_statistic("scaling_stat", scaling_stat)
    check_channel_vectors(x.shape[1], {name: None if value is None else tuple(value.shape)
                                       for name, value in vectors.items()})
    for name, value in vectors.items():
        if value is not None and value.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {value.dtype}, expected the input's {x.dtype}")
    for first, second in (("weight", "bias"), ("scale_weight", "scale_bias"),
                          ("running_mean", "running_var")):
        if (vectors[first] is None) != (vectors[second] is None):
            raise ValueError(f"{first} and {second} must be given together or not at all")


# ----------------------------------------------------------------------------- running statistics


def _update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """The running statistics from the batch ones, the variance made unbiased (``count`` values)."""
    _lerp_in_place(running_mean, mean, momentum)
    _lerp_in_place(running_var, var * _constant(count / (count - 1), var.dtype), momentum)


def _lerp_in_place(stat, batch, momentum):
    """``(1 - momentum) * old + momentum * batch`` in place, outside the autograd graph."""
    if not isinstance(momentum, jt.Var):
        momentum = _constant(momentum, stat.dtype)
    new = stat + (batch.detach().cast(stat.dtype) - stat) * momentum.cast(stat.dtype)
    stat.update(new)


# ----------------------------------------------------------------------------- literal path


def _instance_statistic(statistic, x, eps):
    """``K`` of Eq. 5 / Eq. 9, keeping the reduced dims; ``mu_c(X) = X`` without spatial dims."""
    dims = _reduction_dims(statistic, x.ndim)
    if not dims:
        return x if statistic == "mu_c" else jt.sqrt(jt.zeros_like(x) + eps)
    mean = _mean(x, dims, keepdims=True)
    if statistic.startswith("mu"):
        return mean
    deviation = x - mean
    return jt.sqrt(_mean(deviation * deviation, dims, keepdims=True) + eps)


def _literal_path(x, running, weight, bias, center_weight, scale_weight, scale_bias, eps,
                  centering_stat, scaling_stat, sync):
    """Eq. 12 step by step, with Jittor's autodiff."""
    eps = _constant(eps, x.dtype)
    dims = [0] + list(range(2, x.ndim))
    x_cm = x
    if center_weight is not None:
        x_cm = x + _per_channel(center_weight, x.ndim) * _instance_statistic(centering_stat, x, eps)
    if running is None:
        # two passes; the second also picks up what float rounding left of the mean
        shift = _mean_over_processes(_mean(x_cm, dims, keepdims=True), sync)
        centered = x_cm - shift
        offset = _mean_over_processes(_mean(centered, dims, keepdims=True), sync)
        centered = centered - offset
        batch_var = _mean_over_processes(_mean(centered * centered, dims), sync)
        batch_mean = (shift + offset).reshape((-1,))
    else:
        batch_mean, batch_var = running
        centered = x_cm - _per_channel(batch_mean, x.ndim)
    x_s = centered / _per_channel(jt.sqrt(batch_var + eps), x.ndim)
    y = x_s
    if scale_weight is not None:
        k_s = _instance_statistic(scaling_stat, x_s, eps)
        y = x_s * jt.sigmoid(_per_channel(scale_weight, x.ndim) * k_s
                             + _per_channel(scale_bias, x.ndim))
    if weight is not None:
        y = y * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return y, batch_mean, batch_var


# ----------------------------------------------------------------------------- channel path


def _channel_coefficients(shift, offset, var, running, weight, bias, center_weight, scale_weight,
                          scale_bias, eps, centering_stat, scaling_stat, sync):
    """``A``, ``B`` of ``Y = A * (X - shift) + B`` per (n, c), float64 (N, C); batch stats.

    ``shift`` (N, C) float64, ``offset`` and ``var``: the per-(n, c) moments of
    :func:`_instance_moments`; ``eps`` a float64 Var.
    """
    mean = shift + offset

    def vector(value):  # a (C,) Var -> (1, C) float64, broadcasting over (N, C)
        return value.float64().unsqueeze(0)

    centered_mean = mean
    calibration = 0.0  # w_m * K_m, per (n, c)
    if center_weight is not None:
        calibration = vector(center_weight) * _channel_statistic(centering_stat, mean, var, eps)
        centered_mean = mean + calibration
    if running is None:
        batch_mean = _mean_over_processes(_mean(centered_mean, [0]), sync)
        deviation = centered_mean - batch_mean.unsqueeze(0)
        batch_var = _mean_over_processes(_mean(var + deviation * deviation, [0]), sync)
    else:
        batch_mean, batch_var = (stat.float64() for stat in running)
        deviation = centered_mean - batch_mean.unsqueeze(0)
    inv_std = (jt.ones_like(batch_var) / jt.sqrt(batch_var + eps)).unsqueeze(0)

    scale = inv_std  # A without the affine weight
    if scale_weight is not None:
        # K_s of X_s: its per-(n, c) mean is deviation * inv_std, its variance var * inv_std^2
        k_s = _channel_statistic(scaling_stat, deviation * inv_std, var * inv_std * inv_std, eps)
        scale = scale * jt.sigmoid(vector(scale_weight) * k_s + vector(scale_bias))
    if weight is not None:
        scale = scale * vector(weight)
    # Y = scale * (X + w_m K_m - M) + beta, with X - M = (X - shift) + (shift + w_m K_m - M)
    shifted = scale * (shift + calibration - batch_mean.unsqueeze(0))
    if bias is not None:
        shifted = shifted + vector(bias)
    return scale, shifted, batch_mean, batch_var


def _channel_statistic(name, mean, var, eps):
    """``mu_c`` or ``sigma_c`` of a slice from its mean and biased variance."""
    return mean if name == "mu_c" else jt.sqrt(var + eps)


def _channel_path(x, running, weight, bias, center_weight, scale_weight, scale_bias, eps,
                  centering_stat, scaling_stat, sync):
    """Eq. 12 as ``Y = A * (X - shift) + B`` per (n, c); small vectors in float64."""
    eps = _constant(eps, "float64")
    n, c = x.shape[:2]
    x3 = x.reshape((n, c, -1))
    shift, offset, var = _instance_moments(x3)
    scale, shifted, batch_mean, batch_var = _channel_coefficients(
        shift.squeeze(2).float64(), offset, var, running, weight, bias, center_weight, scale_weight,
        scale_bias, eps, centering_stat, scaling_stat, sync)
    a = scale.cast(x.dtype).unsqueeze(2)
    b = shifted.cast(x.dtype).unsqueeze(2)
    y = (x3 - shift) * a + b
    return y.reshape(x.shape), batch_mean, batch_var


def _instance_moments(x):
    """Per-(n, c) moments of ``x`` (N, C, L) around a fixed shift, two-pass.

    Returns ``(shift, offset, var)``: ``shift`` (N, C, 1) is the rounded mean of each slice,
    detached (a constant: nothing computed from it depends on its value); ``offset =
    mean(x - shift)`` is what rounding left of the mean (the exact mean is ``shift +
    offset``) and ``var`` the biased variance, both (N, C) in float64. Jittor fuses the
    autodiff of these reductions well: a ``jt.Function`` with the hand-written grad
    measured slower (docs/jittor.md).
    """
    shift = _mean(x, [2], keepdims=True).detach()
    centered = (x - shift).float64()
    offset = _mean(centered, [2])
    return shift, offset, _mean(centered * centered, [2]) - offset * offset


# ----------------------------------------------------------------------------- shared pieces


def _per_channel(vector, ndim):
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def _constant(value, dtype):
    """A Python number as a (1,) Var of ``dtype`` (Jittor would make it a float32 constant)."""
    with jt.flag_scope(auto_convert_64_to_32=0):
        return jt.array(np.array([value], dtype=str(dtype)))


def _reduction_dims(statistic, ndim):
    """Dims a statistic reduces over: the spatial dims for ``*_c``, the channel dim for ``*_s``."""
    return list(range(2, ndim)) if statistic.endswith("_c") else [1]


def _mean(x, dims, keepdims=False):
    """Mean as sum / count: the grad of Jittor's ``mean`` scales by a float32 ``1 / count``."""
    return x.sum(dims, keepdims=keepdims) / math.prod(x.shape[dim] for dim in dims)


def _mean_over_processes(value, sync):
    return value.mpi_all_reduce("mean") if sync else value
