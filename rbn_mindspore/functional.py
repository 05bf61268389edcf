"""Representative BatchNorm (Eq. 12 of the paper) as a MindSpore function.

Two paths compute the same Eq. 12:

- channel statistics (``mu_c``/``sigma_c`` for both calibrations, the paper's default): per
  instance (n, c) every step is affine in X, so ``Y = A[n,c] * x_hat + B[n,c]`` where
  ``x_hat`` is X standardized per instance. One moments pass and one affine pass forward, one
  pass of two sums and one ``p * dY + q * x_hat + r`` pass backward, written by hand in a Cell
  ``bprop`` (:class:`_ChannelStatisticsKernel`). The (N, C)-sized coefficient math in between
  goes through MindSpore's autodiff (``GradOperation``) so that it is written once. The passes
  are fused CPU kernels (:mod:`rbn_mindspore.cpu_kernels`) where they can be compiled, else
  MindSpore's BatchNorm primitive over an instance view of X.
- any other statistic (``mu_s``/``sigma_s``): Eq. 12 step by step, differentiated by MindSpore.
"""

import functools

import mindspore as ms
import mindspore.common.dtype as mstype
from mindspore import Tensor, nn, ops

from rbn_reference import check_channel_vectors, check_input, check_statistic

from . import cpu_kernels

_CHANNEL_STATISTICS = ("mu_c", "sigma_c")
_FLOAT_TYPES = (mstype.float32, mstype.float64)


def representative_batch_norm(x, moving_mean=None, moving_variance=None, gamma=None, beta=None,
                              center_weight=None, scale_weight=None, scale_bias=None, *,
                              training=False, momentum=0.1, eps=1e-5, centering_stat="mu_c",
                              scaling_stat="mu_c", num_batches_tracked=None):
    """Representative BatchNorm of ``x`` (N, C, *spatial) with 0 to 3 spatial dims.

    Like ``mindspore.ops.batch_norm``: ``training=True`` normalizes with the batch statistics
    and, when ``moving_mean``/``moving_variance`` are given, updates those Parameters in place
    with ``new = (1 - momentum) * old + momentum * batch`` (the unbiased batch variance goes
    into ``moving_variance``). Note the functional momentum convention is the one of
    ``ops.batch_norm`` (0.1), not the Cell's (0.9). ``momentum=None`` is the cumulative
    average: it needs ``num_batches_tracked`` (an int Parameter, incremented before use).
    ``training=False`` normalizes with the moving statistics.

    A calibration (or the affine transform) is off when its parameters are None.
    """
    _check_arguments(x, moving_mean, moving_variance, gamma, beta, center_weight, scale_weight,
                     scale_bias, training, momentum, centering_stat, scaling_stat, num_batches_tracked)
    if _channel_statistics_only(center_weight, scale_weight, centering_stat, scaling_stat):
        y, batch_mean, batch_var = _channel_path(
            x, moving_mean, moving_variance, gamma, beta, center_weight, scale_weight, scale_bias,
            training, eps, centering_stat, scaling_stat)
    else:
        y, batch_mean, batch_var = _literal_path(
            x, moving_mean, moving_variance, gamma, beta, center_weight, scale_weight, scale_bias,
            training, eps, centering_stat, scaling_stat)
    if training and moving_mean is not None:
        _update_running_stats(moving_mean, moving_variance, num_batches_tracked,
                              ops.stop_gradient(batch_mean), ops.stop_gradient(batch_var),
                              x.size // x.shape[1], momentum)
    return y


# ----------------------------------------------------------------------------- validation


def _check_arguments(x, moving_mean, moving_variance, gamma, beta, center_weight, scale_weight,
                     scale_bias, training, momentum, centering_stat, scaling_stat, num_batches_tracked):
    """Raise the errors of the oracle (same wording) for anything Eq. 12 cannot take."""
    check_statistic("centering_stat", centering_stat)
    check_statistic("scaling_stat", scaling_stat)
    if x.dtype not in _FLOAT_TYPES:  # MindSpore's CPU kernels: no float16 here
        raise TypeError(f"expected a float32 or float64 input (got {x.dtype})")
    check_input(x.shape, x.dtype, True, uses_batch_statistics=training)
    pairs = (("gamma", gamma, "beta", beta), ("scale_weight", scale_weight, "scale_bias", scale_bias),
             ("moving_mean", moving_mean, "moving_variance", moving_variance))
    for first, first_value, second, second_value in pairs:
        if (first_value is None) != (second_value is None):
            raise ValueError(f"{first} and {second} must be given together or not at all")
    if not training and moving_mean is None:
        raise ValueError("moving_mean and moving_variance are needed when training is False")
    if training and momentum is None and moving_mean is not None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    vectors = {"moving_mean": moving_mean, "moving_variance": moving_variance, "gamma": gamma, "beta": beta,
               "center_weight": center_weight, "scale_weight": scale_weight, "scale_bias": scale_bias}
    check_channel_vectors(x.shape[1], {name: None if value is None else value.shape for name, value in vectors.items()})
    for name, value in vectors.items():
        if value is not None and value.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {value.dtype}, expected the input's {x.dtype}")


def _channel_statistics_only(center_weight, scale_weight, centering_stat, scaling_stat):
    """True when every calibration that is on uses a per-instance (channel) statistic."""
    return ((center_weight is None or centering_stat in _CHANNEL_STATISTICS)
            and (scale_weight is None or scaling_stat in _CHANNEL_STATISTICS))


# ----------------------------------------------------------------------------- moving statistics


@ms.jit
def _update_running_stats(moving_mean, moving_variance, num_batches_tracked, batch_mean,
                          batch_var, count, momentum):
    """PyTorch's recurrence with the unbiased batch variance; cumulative when momentum is None.

    Compiled (``ms.jit``): in PyNative its dozen (C,)-sized ops would each cost a dispatch,
    ~15 ms per training step at (32, 64, 56, 56) on this CPU. In Graph mode it is inlined.
    """
    if num_batches_tracked is not None:
        ops.assign_add(num_batches_tracked, ops.ones((), num_batches_tracked.dtype))
    if momentum is None:
        factor = 1 / num_batches_tracked.astype(batch_mean.dtype)
    else:
        factor = _scalar(momentum, batch_mean.dtype)
    unbiased_var = batch_var * count / (count - 1)
    ops.assign(moving_mean, moving_mean + (batch_mean - moving_mean) * factor)
    ops.assign(moving_variance, moving_variance + (unbiased_var - moving_variance) * factor)


# ----------------------------------------------------------------------------- literal path


def _instance_statistic(statistic, x, eps):
    """K of Eq. 5 / Eq. 9, keeping the reduced axes so that it broadcasts against ``x``."""
    axes = _reduction_dims(statistic, x.ndim)
    eps = _scalar(eps, x.dtype)
    # No spatial dims: the statistic is over one value (MindSpore reads axis=() as "all axes").
    mean = x.mean(axis=axes, keep_dims=True) if axes else x
    if statistic.startswith("mu"):
        return mean
    return ops.sqrt(ops.square(x - mean).mean(axis=axes, keep_dims=True) + eps if axes
                    else ops.zeros_like(x) + eps)


def _literal_path(x, moving_mean, moving_variance, gamma, beta, center_weight, scale_weight,
                  scale_bias, training, eps, centering_stat, scaling_stat):
    """Eq. 12 step by step (any statistic); returns (y, batch mean, batch biased var)."""
    ndim = x.ndim
    x_cm = x
    if center_weight is not None:
        x_cm = x + _per_channel(center_weight, ndim) * _instance_statistic(centering_stat, x, eps)
    batch_axes = (0,) + tuple(range(2, ndim))
    if training:
        mean = x_cm.mean(axis=batch_axes)
        var = ops.square(x_cm - _per_channel(mean, ndim)).mean(axis=batch_axes)
    else:
        mean, var = moving_mean, moving_variance
    x_s = (x_cm - _per_channel(mean, ndim)) * _per_channel(ops.rsqrt(var + _scalar(eps, x.dtype)), ndim)
    if scale_weight is not None:
        k_s = _instance_statistic(scaling_stat, x_s, eps)
        x_s = x_s * ops.sigmoid(_per_channel(scale_weight, ndim) * k_s + _per_channel(scale_bias, ndim))
    if gamma is not None:
        x_s = x_s * _per_channel(gamma, ndim) + _per_channel(beta, ndim)
    return x_s, mean, var


# ----------------------------------------------------------------------------- channel-statistics path


def _channel_coefficients(mean, var, gamma, beta, center_weight, scale_weight, scale_bias,
                          moving_mean, moving_variance, eps, centering_statistic, scaling_statistic,
                          batch_moments):
    """The (N, C) coefficients of ``Y = A * x_hat + B`` from the per-instance moments of X.

    ``mean``, ``var``: per-instance mean and biased variance of X, (N, C). Per instance X_cm
    has mean ``mean + w_m * K_m`` and the variance of X; the batch statistics follow by the
    law of total variance (every instance has the same element count). With
    ``std = sqrt(var + eps)``: ``X_s = ms + std * inv * x_hat`` where ``ms`` is the instance
    mean of X_s (variance ``var * inv^2``), so ``A = gamma * gate * std * inv`` and
    ``B = gamma * gate * ms + beta``. ``scaling_statistic`` None means no scaling calibration.
    Returns (A, B, batch mean, batch biased var) with the batch ones (C,).

    The choices come in as functions, not flags: in a Graph-mode ``bprop``, the gradient of a
    function with an ``if`` on a constant fails to compile ("The func graph is empty").
    """
    std = ops.sqrt(var + eps)
    instance_mean = mean + center_weight * centering_statistic(mean, var, eps)
    batch_mean, batch_var = batch_moments(instance_mean, var, moving_mean, moving_variance)
    inv_std = ops.rsqrt(batch_var + eps)
    standardized_mean = (instance_mean - batch_mean) * inv_std
    scale = gamma
    if scaling_statistic is not None:
        k_s = scaling_statistic(standardized_mean, var * ops.square(inv_std), eps)
        scale = gamma * ops.sigmoid(scale_weight * k_s + scale_bias)
    return scale * std * inv_std, scale * standardized_mean + beta, batch_mean, batch_var


def _batch_moments(instance_mean, var, moving_mean, moving_variance):
    """Batch mean and biased variance of X_cm from the per-instance ones (total variance)."""
    batch_mean = instance_mean.mean(axis=0)
    return batch_mean, (var + ops.square(instance_mean - batch_mean)).mean(axis=0)


def _moving_moments(instance_mean, var, moving_mean, moving_variance):
    return moving_mean, moving_variance


def _mean_statistic(mean, var, eps):
    """mu_c from the per-instance moments."""
    return mean


def _std_statistic(mean, var, eps):
    """sigma_c from the per-instance moments."""
    return ops.sqrt(var + eps)


_INSTANCE_STATISTICS = {"mu_c": _mean_statistic, "sigma_c": _std_statistic}


def _channel_path(x, moving_mean, moving_variance, gamma, beta, center_weight,
                  scale_weight, scale_bias, training, eps, centering_stat, scaling_stat):
    """Eq. 12 as ``Y = A * x_hat + B`` per instance; returns (y, batch mean, batch var)."""
    kernel = _channel_statistics_kernel(
        eps, centering_stat, scaling_stat, scale_weight is not None, training)
    # Neutral values for the parts that are off: w_m = 0 gives X_cm = X exactly, gamma = 1 and
    # beta = 0 give Y = X_cs exactly. Scaling has no neutral value (sigmoid < 1): a kernel flag.
    vectors = (_or_neutral(gamma, 1, x), _or_neutral(beta, 0, x), _or_neutral(center_weight, 0, x),
               _or_neutral(scale_weight, 0, x), _or_neutral(scale_bias, 0, x),
               _or_neutral(moving_mean, 0, x), _or_neutral(moving_variance, 1, x))
    outputs = kernel(x, *vectors)
    return outputs[0], outputs[1], outputs[2]


def _or_neutral(vector, fill, x):
    """``vector``, or a (C,) vector of ``fill`` (0 or 1) in x's dtype when it is None.

    ops.depend makes it a graph node instead of a constant: in Graph mode a constant input is
    dropped from the gradients the kernel's bprop computes ("The output size of the 'bprop'
    must match the number of parameters"). Only made when needed: in PyNative each op is a
    dispatch.
    """
    if vector is not None:
        return vector
    shape = (x.shape[1],)
    return ops.depend(ops.ones(shape, x.dtype) if fill else ops.zeros(shape, x.dtype), x)


@functools.lru_cache(maxsize=None)
def _channel_statistics_kernel(eps, centering_stat, scaling_stat, scaling, batch_statistics):
    """One kernel Cell per configuration (a Cell ``bprop`` cannot take Python flags as inputs).

    The fused CPU kernels when they are available (see :mod:`rbn_mindspore.cpu_kernels`), else
    MindSpore's BatchNorm primitive.
    """
    instance_kernels = cpu_kernels.instance_kernels()
    if instance_kernels is None:
        return _PrimitiveChannelKernel(eps, centering_stat, scaling_stat, scaling, batch_statistics)
    return _FusedChannelKernel(eps, centering_stat, scaling_stat, scaling, batch_statistics, instance_kernels)


class _ChannelStatisticsKernel(nn.Cell):
    """Eq. 12 for channel statistics with a hand-written backward.

    Inputs: x and the seven (C,) vectors (gamma, beta, center_weight, scale_weight,
    scale_bias, moving_mean, moving_variance). Outputs ``(y, batch_mean, batch_var, mean,
    var, ...)``: per-instance moments (and whatever else a subclass saves) for ``bprop``; the
    batch statistics are only used to update the moving statistics, which is not differentiated
    (their gradient is ignored, as in BatchNorm).

    Backward: with ``x_hat = (X - mean) / std``, mean and var = std^2 - eps being functions of X,
        dX = (A / std) * (dY - sum_dy / S - x_hat * sum_dy_x_hat / S)    (through x_hat)
             + d_mean / S + 2 * d_var * std * x_hat / S                  (through mean, var)
    where d_mean, d_var come from differentiating the (N, C) coefficient math (``GradOperation``)
    with the per-instance sums as sensitivities. So dX = p * dY + q * x_hat + r per instance.

    Subclasses define ``forward`` and ``backward``, each one ``ms.jit`` function: in PyNative
    their few dozen ops would each cost a dispatch (most of them (N, C)-sized, where the dispatch
    is all the cost); compiled they are one launch. In Graph mode they are inlined.
    """

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics):
        super().__init__()
        centering_statistic = _INSTANCE_STATISTICS[centering_stat]
        scaling_statistic = _INSTANCE_STATISTICS[scaling_stat] if scaling else None
        batch_moments = _batch_moments if batch_statistics else _moving_moments

        def coefficients(mean, var, *vectors):
            return _channel_coefficients(mean, var, *vectors, _scalar(eps, mean.dtype), centering_statistic,
                                          scaling_statistic, batch_moments)

        grad_all = ops.GradOperation(get_all=True, sens_param=True)

        def backward_coefficients(mean, var, sum_dy, sum_dy_x_hat, vectors):
            """(A, d_mean, d_var) per instance (N*C,) and the gradients of the (C,) vectors."""
            n, c = sum_dy.shape
            inputs = (mean.reshape(n, c), var.reshape(n, c)) + vectors
            a = coefficients(*inputs)[0].reshape(-1)
            # ops.zeros, not ops.zeros_like: in a Graph-mode bprop the latter fails to compile
            # ("The func graph is empty ... zeros_like").
            no_grad = ops.zeros((c,), mean.dtype)
            grads = grad_all(coefficients)(*inputs, (sum_dy_x_hat, sum_dy, no_grad, no_grad))
            return a, grads[0].reshape(-1), grads[1].reshape(-1), tuple(grads[2:])

        self.coefficients = coefficients
        self.backward_coefficients = backward_coefficients

    def construct(self, x, gamma, beta, center_weight, scale_weight, scale_bias, moving_mean,
                  moving_variance):
        return self.forward(x, gamma, beta, center_weight, scale_weight, scale_bias, moving_mean,
                            moving_variance)


class _FusedChannelKernel(_ChannelStatisticsKernel):
    """The channel path on the fused CPU kernels over the (N*C, S) view of X: a moments pass and
    an affine pass forward, one two-sum pass and one ``p * dY + q * (X - mean) + r`` pass
    backward. x_hat is never stored: the kernels take X and the instance means."""

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics, instance_kernels):
        super().__init__(eps, centering_stat, scaling_stat, scaling, batch_statistics)
        coefficients, backward_coefficients = self.coefficients, self.backward_coefficients

        def forward(x, gamma, beta, center_weight, scale_weight, scale_bias, moving_mean, moving_variance):
            n, c = x.shape[0], x.shape[1]
            rows = x.reshape(n * c, -1)
            mean, var = instance_kernels.moments(rows)
            a, b, batch_mean, batch_var = coefficients(
                mean.reshape(n, c), var.reshape(n, c), gamma, beta, center_weight, scale_weight,
                scale_bias, moving_mean, moving_variance)
            inv_std = ops.rsqrt(var + _scalar(eps, var.dtype))
            y = instance_kernels.affine(rows, mean, a.reshape(-1) * inv_std, b.reshape(-1))
            return y.reshape(x.shape), batch_mean, batch_var, mean, var

        def backward(x, mean, var, dy, *vectors):
            n, c = x.shape[0], x.shape[1]
            rows, dy_rows = x.reshape(n * c, -1), dy.reshape(n * c, -1)
            count = rows.shape[1]
            sum_dy, sum_dy_centered = instance_kernels.sums(dy_rows, rows, mean)
            inv_std = ops.rsqrt(var + _scalar(eps, var.dtype))
            sum_dy_x_hat = sum_dy_centered * inv_std
            a, d_mean, d_var, vector_grads = backward_coefficients(
                mean, var, sum_dy.reshape(n, c), sum_dy_x_hat.reshape(n, c), vectors)
            a_inv_std = a * inv_std
            dx = instance_kernels.combine(dy_rows, rows, mean, a_inv_std,
                                          (2 * d_var - a_inv_std * sum_dy_x_hat * inv_std) / count,
                                          (d_mean - a_inv_std * sum_dy) / count)
            return (dx.reshape(x.shape),) + vector_grads

        self.forward = ms.jit(forward)
        self.backward = ms.jit(backward)

    def bprop(self, x, gamma, beta, center_weight, scale_weight, scale_bias, moving_mean,
              moving_variance, out, dout):
        return self.backward(x, out[3], out[4], dout[0], gamma, beta, center_weight, scale_weight,
                             scale_bias, moving_mean, moving_variance)


def _as_instances(x):
    """View (N, C, *spatial) as (1, N*C, S, 1): BatchNorm's channels become the instances."""
    return x.reshape(1, x.shape[0] * x.shape[1], -1, 1)


def _instance_moments(x, eps, bn_train):
    """Per-instance mean, biased variance (N*C,) and the standardized x_hat of (1, N*C, S, 1)."""
    if x.dtype == mstype.float64:  # the BatchNorm primitive takes float16/32 only
        mean = x.mean(axis=2, keep_dims=True)
        centered = x - mean
        var = ops.square(centered).mean(axis=2, keep_dims=True)
        return mean.reshape(-1), var.reshape(-1), centered * ops.rsqrt(var + _scalar(eps, x.dtype))
    instances = x.shape[1]
    ones = ops.ones((instances,), x.dtype)
    zeros = ops.zeros((instances,), x.dtype)
    # Outputs: x_hat, the (unchanged: momentum 0) moving statistics, batch mean, batch biased var.
    x_hat, _, _, mean, var = bn_train(x, ones, zeros, zeros, ones)
    return mean, var, x_hat


def _instance_affine(x, scale, bias, eps, bn_infer):
    """``scale * x + bias`` per instance of (1, N*C, S, 1), scale and bias (N*C,)."""
    if x.dtype == mstype.float64:
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    # Inference BatchNorm computes scale * (x - 0) / sqrt(1 - eps + eps) + bias; the
    # variance 1 - eps is not exact in float32, so divide 1 + eps back out instead.
    instances = x.shape[1]
    unit_var = ops.ones((instances,), x.dtype)
    return bn_infer(x, scale * ops.sqrt(unit_var + eps), bias, ops.zeros((instances,), x.dtype), unit_var)[0]


class _PrimitiveChannelKernel(_ChannelStatisticsKernel):
    """The channel path on MindSpore's BatchNorm primitive (any device target; no compiler needed).

    On CPU MindSpore's elementwise ops with a broadcast (N, C, 1, 1) operand are 5-15x slower
    than plain elementwise ops, while its BatchNorm primitive does a per-channel moments pass and
    a per-channel affine pass at full speed. X is therefore viewed as ``(1, N*C, S, 1)`` so that
    "per channel" means "per instance" (float32; float64, which the primitive rejects, takes plain
    ops). x_hat is saved for the backward: two reductions and two affine passes.
    """

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics):
        super().__init__(eps, centering_stat, scaling_stat, scaling, batch_statistics)
        coefficients, backward_coefficients = self.coefficients, self.backward_coefficients
        # momentum=0: the training primitive writes its "moving statistics" inputs in place
        # (throw-away zeros/ones, which may be shared constants in Graph mode); with 0 it
        # writes back what was there.
        bn_train = ops.BatchNorm(is_training=True, epsilon=eps, momentum=0.0)
        bn_infer = ops.BatchNorm(is_training=False, epsilon=eps)

        def forward(x, gamma, beta, center_weight, scale_weight, scale_bias, moving_mean, moving_variance):
            n, c = x.shape[0], x.shape[1]
            mean, var, x_hat = _instance_moments(_as_instances(x), eps, bn_train)
            a, b, batch_mean, batch_var = coefficients(
                mean.reshape(n, c), var.reshape(n, c), gamma, beta, center_weight, scale_weight,
                scale_bias, moving_mean, moving_variance)
            y = _instance_affine(x_hat, a.reshape(-1), b.reshape(-1), eps, bn_infer)
            return y.reshape(x.shape), batch_mean, batch_var, mean, var, x_hat

        def backward(x, mean, var, x_hat, dy, *vectors):
            n, c = x.shape[0], x.shape[1]
            count = x.size // (n * c)
            dy = _as_instances(dy)
            sum_dy = dy.reshape(n * c, -1).sum(-1)
            sum_dy_x_hat = (dy * x_hat).reshape(n * c, -1).sum(-1)
            a, d_mean, d_var, vector_grads = backward_coefficients(
                mean, var, sum_dy.reshape(n, c), sum_dy_x_hat.reshape(n, c), vectors)
            std = ops.sqrt(var + _scalar(eps, var.dtype))
            a_over_std = a / std
            dx = (_instance_affine(dy, a_over_std, (d_mean - a_over_std * sum_dy) / count, eps, bn_infer)
                  + _instance_affine(x_hat, (2 * d_var * std - a_over_std * sum_dy_x_hat) / count,
                                     ops.zeros(std.shape, std.dtype), eps, bn_infer))
            return (dx.reshape(x.shape),) + vector_grads

        self.forward = ms.jit(forward)
        self.backward = ms.jit(backward)

    def bprop(self, x, gamma, beta, center_weight, scale_weight, scale_bias, moving_mean,
              moving_variance, out, dout):
        return self.backward(x, out[3], out[4], out[5], dout[0], gamma, beta, center_weight,
                             scale_weight, scale_bias, moving_mean, moving_variance)


# ----------------------------------------------------------------------------- shared utilities


def _per_channel(vector, ndim):
    """(C,) -> (1, C, 1, ...) to broadcast against an ndim input."""
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def _scalar(value, dtype):
    """A Python float as a 0-d tensor of ``dtype``.

    MindSpore rounds a Python float operand to float32 even next to a float64 tensor
    (``float64_tensor * 0.1`` is off by 1.5e-9): every float constant goes through here.
    """
    return Tensor(value, dtype)


def _reduction_dims(statistic, ndim):
    """Spatial axes for the channel statistics ``*_c``, the channel axis for ``*_s``."""
    return tuple(range(2, ndim)) if statistic.endswith("_c") else (1,)
