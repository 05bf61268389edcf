"""Eq. 12 of the paper, forward and hand-derived backward, one pure function per step.

Every per-channel vector is reshaped once to ``(1, C, 1, ...)`` by the input's rank, so one
set of functions serves 1d, 2d and 3d inputs. The derivation of each backward is written
down in docs/math.md, next to the formula each function implements.
"""

from typing import Any, NamedTuple, Optional

import numpy as np

from .statistics import instance_statistic, instance_statistic_backward
from .validation import check_channel_vectors, check_input, check_pairs, check_statistic

CALIBRATION_NAMES = ("center_weight", "scale_weight", "scale_bias")  # w_m, w_v, w_b
PARAM_NAMES = ("weight", "bias", *CALIBRATION_NAMES)
STATE_NAMES = ("running_mean", "running_var", "num_batches_tracked")


class Parameters(NamedTuple):
    """The per-channel parameters of Eq. 12, in any array type; None switches its part off.

    The framework packages pass these five together through their functional code instead of
    five positional arguments.
    """

    weight: Any = None  # gamma
    bias: Any = None  # beta
    center_weight: Any = None  # w_m
    scale_weight: Any = None  # w_v
    scale_bias: Any = None  # w_b


class Options(NamedTuple):
    """The layer's fixed settings of Eq. 12: ``eps`` and the statistics K_m and K_s (Table 3)."""

    eps: float = 1e-5
    centering_stat: str = "mu_c"
    scaling_stat: str = "mu_c"


class Cache(NamedTuple):
    """What ``backward`` needs from ``forward``: the intermediate arrays of Eq. 12."""

    x: np.ndarray
    k_m: Optional[np.ndarray]
    x_s: np.ndarray
    inv_std: np.ndarray
    k_s: Optional[np.ndarray]
    gate: Optional[np.ndarray]
    x_cs: np.ndarray
    params: dict
    batch_statistics: bool
    centering_stat: str
    scaling_stat: str


# ----------------------------------------------------------------------------- helpers


def per_channel(vector, ndim):
    """Reshape a (C,) vector to (1, C, 1, ...) so that it broadcasts over an ndim input."""
    return np.reshape(vector, (1, -1) + (1,) * (ndim - 2))


def batch_axes(ndim):
    """The axes BatchNorm reduces over: every axis but the channel axis."""
    return (0,) + tuple(range(2, ndim))


def sum_to_shape(array, shape):
    """Undo broadcasting: sum ``array`` over the axes where ``shape`` has size 1."""
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1 and array.shape[axis] != 1)
    return array.sum(axis=axes, keepdims=True)


def sum_to_channel(array):
    """Gradient of a per-channel (C,) parameter from a broadcast product."""
    return array.sum(axis=batch_axes(array.ndim))


def sigmoid(z):
    """The logistic function, elementwise."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


# ----------------------------------------------------------------------------- steps


def centering_calibration(x, center_weight, k_m):
    """Eq. 5: X_cm = X + w_m * K_m."""
    return x + per_channel(center_weight, x.ndim) * k_m


def centering_calibration_backward(dx_cm, center_weight, k_m):
    """Returns (dK_m, dw_m); the direct path dX = dX_cm is added by the caller."""
    dk_m = sum_to_shape(dx_cm * per_channel(center_weight, dx_cm.ndim), k_m.shape)
    return dk_m, sum_to_channel(dx_cm * k_m)


def batch_moments(x_cm):
    """Per-channel mean and BIASED variance over the batch and spatial dims (two-pass)."""
    axes = batch_axes(x_cm.ndim)
    mean = x_cm.mean(axis=axes)
    var = ((x_cm - per_channel(mean, x_cm.ndim)) ** 2).mean(axis=axes)
    return mean, var


def standardize(x_cm, mean, var, eps):
    """Centering and scaling of Eq. 12: X_s = (X_cm - E) / sqrt(Var + eps)."""
    inv_std = 1.0 / np.sqrt(var + eps)
    return (x_cm - per_channel(mean, x_cm.ndim)) * per_channel(inv_std, x_cm.ndim), inv_std


def standardize_backward(dx_s, x_s, inv_std, batch_statistics):
    """dX_cm of X_s = (X_cm - E) * inv_std.

    With batch statistics E and Var depend on X_cm (the classic BatchNorm backward):
        dX_cm = inv_std * (dX_s - mean(dX_s) - X_s * mean(dX_s * X_s))
    With running statistics they are constants: dX_cm = inv_std * dX_s.
    """
    inv_std = per_channel(inv_std, dx_s.ndim)
    if not batch_statistics:
        return dx_s * inv_std
    axes = batch_axes(dx_s.ndim)
    mean_dx_s = dx_s.mean(axis=axes, keepdims=True)
    mean_dx_s_x_s = (dx_s * x_s).mean(axis=axes, keepdims=True)
    return inv_std * (dx_s - mean_dx_s - x_s * mean_dx_s_x_s)


def scaling_calibration(x_s, scale_weight, scale_bias, k_s):
    """Eq. 9: X_cs = X_s * sigmoid(w_v * K_s + w_b). Returns (X_cs, gate)."""
    gate = sigmoid(per_channel(scale_weight, x_s.ndim) * k_s + per_channel(scale_bias, x_s.ndim))
    return x_s * gate, gate


def scaling_calibration_backward(dx_cs, x_s, gate, k_s, scale_weight):
    """Returns (direct dX_s, dK_s, dw_v, dw_b); dK_s still has to go through K_s(X_s)."""
    dz = dx_cs * x_s * gate * (1.0 - gate)  # sigmoid' = g (1 - g); z broadcasts to X_s's shape
    dk_s = sum_to_shape(dz * per_channel(scale_weight, dz.ndim), k_s.shape)
    return dx_cs * gate, dk_s, sum_to_channel(dz * k_s), sum_to_channel(dz)


def affine(x_cs, weight, bias):
    """Y = X_cs * gamma + beta."""
    return x_cs * per_channel(weight, x_cs.ndim) + per_channel(bias, x_cs.ndim)


def affine_backward(dy, x_cs, weight):
    """Returns (dX_cs, dgamma, dbeta)."""
    return dy * per_channel(weight, dy.ndim), sum_to_channel(dy * x_cs), sum_to_channel(dy)


def update_running_stats(state, mean, var, count, momentum):
    """PyTorch's convention: new = (1 - m) * old + m * batch, with the UNBIASED batch variance.

    ``momentum=None`` is the cumulative average: m = 1 / num_batches_tracked, counted after
    this batch.
    """
    num_batches_tracked = np.asarray(state["num_batches_tracked"]) + 1
    factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
    unbiased_var = var * count / (count - 1)
    return {
        "running_mean": (1.0 - factor) * state["running_mean"] + factor * mean,
        "running_var": (1.0 - factor) * state["running_var"] + factor * unbiased_var,
        "num_batches_tracked": num_batches_tracked.astype(np.int64),
    }


# ----------------------------------------------------------------------------- validation


def check_inputs(x, params, state, centering_stat, scaling_stat, uses_batch_statistics):
    """Raise naming expected vs given for anything the layer cannot take."""
    check_input(x.shape, x.dtype, np.issubdtype(x.dtype, np.floating), uses_batch_statistics=uses_batch_statistics)
    check_statistic("centering_stat", centering_stat)
    check_statistic("scaling_stat", scaling_stat)
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"params may only have keys {', '.join(PARAM_NAMES)} (got {', '.join(unknown)})")
    check_pairs({name: name in params for name in PARAM_NAMES})
    shapes = {name: np.shape(value) for name, value in params.items()}
    if state is not None:
        missing = [name for name in STATE_NAMES if name not in state]
        if missing:
            raise ValueError(f"state is missing {', '.join(missing)}")
        shapes.update(running_mean=np.shape(state["running_mean"]), running_var=np.shape(state["running_var"]))
    check_channel_vectors(x.shape[1], shapes)


# ----------------------------------------------------------------------------- Eq. 12


def forward(x, params, state=None, *, training=True, momentum=0.1, eps=1e-5,
            centering_stat="mu_c", scaling_stat="mu_c"):
    """Representative BatchNorm, Eq. 12, in float64.

    Returns ``(y, new_state, cache)``: ``new_state`` is a new dict (``state`` is never
    modified), None when ``state`` is None (track_running_stats=False); ``cache`` feeds
    :func:`backward`.
    """
    x = np.asarray(x)
    params = {name: value for name, value in (params or {}).items() if value is not None}
    batch_statistics = training or state is None
    check_inputs(x, params, state, centering_stat, scaling_stat, batch_statistics)
    x = x.astype(np.float64)
    params = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}

    k_m = None
    x_cm = x
    if "center_weight" in params:
        k_m = instance_statistic(centering_stat, x, eps)
        x_cm = centering_calibration(x, params["center_weight"], k_m)

    new_state = state
    if batch_statistics:
        mean, var = batch_moments(x_cm)
        if training and state is not None:
            new_state = update_running_stats(state, mean, var, x.size // x.shape[1], momentum)
    else:
        mean = np.asarray(state["running_mean"], dtype=np.float64)
        var = np.asarray(state["running_var"], dtype=np.float64)
    x_s, inv_std = standardize(x_cm, mean, var, eps)

    k_s = gate = None
    x_cs = x_s
    if "scale_weight" in params:
        k_s = instance_statistic(scaling_stat, x_s, eps)
        x_cs, gate = scaling_calibration(x_s, params["scale_weight"], params["scale_bias"], k_s)

    y = affine(x_cs, params["weight"], params["bias"]) if "weight" in params else x_cs
    cache = Cache(x, k_m, x_s, inv_std, k_s, gate, x_cs, params, batch_statistics,
                  centering_stat, scaling_stat)
    return y, new_state, cache


def backward(dy, cache):
    """Gradients of ``sum(dy * y)``: a dict with ``"x"`` and one entry per array in params."""
    dy = np.asarray(dy, dtype=np.float64)
    params = cache.params
    grads = {}

    dx_cs = dy
    if "weight" in params:
        dx_cs, grads["weight"], grads["bias"] = affine_backward(dy, cache.x_cs, params["weight"])

    dx_s = dx_cs
    if "scale_weight" in params:
        dx_s, dk_s, grads["scale_weight"], grads["scale_bias"] = scaling_calibration_backward(
            dx_cs, cache.x_s, cache.gate, cache.k_s, params["scale_weight"])
        dx_s = dx_s + instance_statistic_backward(cache.scaling_stat, cache.x_s, cache.k_s, dk_s)

    dx_cm = standardize_backward(dx_s, cache.x_s, cache.inv_std, cache.batch_statistics)

    dx = dx_cm
    if "center_weight" in params:
        dk_m, grads["center_weight"] = centering_calibration_backward(dx_cm, params["center_weight"], cache.k_m)
        dx = dx_cm + instance_statistic_backward(cache.centering_stat, cache.x, cache.k_m, dk_m)

    grads["x"] = dx
    return grads
