r"""Representative BatchNorm (Eq. 12 of the paper) as a pure MindSpore function.

Two paths compute the same Eq. 12:

- channel statistics (``mu_c``/``sigma_c`` for both calibrations, the paper's default): per
  instance (n, c) every step is affine in X, so ``Y = A[n,c] * (X - mean[n,c]) + B[n,c]`` with
  ``mean`` the instance mean of X (:func:`_channel_coefficients`). One moments pass and one
  affine pass forward, one pass of two sums and one ``p * dY + q * (X - mean) + r`` pass
  backward, written by hand in a Cell ``bprop`` (:class:`_ChannelStatisticsKernel`). On CPU in
  one process each way is one fused kernel call with the (N, C)-sized coefficient math inside,
  in float64 (:class:`_LayerKernel`, :mod:`rbn_mindspore.cpu_kernels`). Otherwise that math is
  MindSpore ops differentiated by MindSpore (``GradOperation``) between passes that are fused CPU
  kernels (synchronized statistics, whose ``AllReduce`` sits between them) or, without a
  compiler or off CPU, MindSpore's BatchNorm primitive over an instance view of X.
- any other statistic (``mu_s``/``sigma_s``): Eq. 12 step by step, differentiated by MindSpore.

Argument groups travel as plain tuples in the field order of ``rbn_reference.Parameters``
``(weight, bias, center_weight, scale_weight, scale_bias)`` and ``rbn_reference.Options``
``(eps, centering_stat, scaling_stat)``: this code is compiled in GRAPH_MODE and under
``ms.jit``, where a NamedTuple built in compiled code becomes an interpreted ``PyExecute`` node
that stops the gradients (they come out as zeros; tried with MindSpore 2.10).
"""

import functools
import itertools

import mindspore as ms
import mindspore.common.dtype as mstype
from mindspore import Tensor, nn, ops

from rbn_reference import check_channel_vectors, check_dtypes, check_input, check_pairs, check_statistic

from . import cpu_kernels

__all__ = ["representative_batch_norm"]

_CHANNEL_STATISTICS = ("mu_c", "sigma_c")
_FLOAT_TYPES = (mstype.float32, mstype.float64)
# Mixed precision (MindSpore's AMP O2/O3 cast a Cell's inputs, not its Parameters): computed in
# float32, as BatchNorm computes them, the output in the input's dtype.
_HALF_TYPES = (mstype.float16, mstype.bfloat16)


def representative_batch_norm(input, running_mean, running_var, weight=None, bias=None,  # noqa: A002
                              center_weight=None, scale_weight=None, scale_bias=None, *,
                              training=False, momentum=0.1, eps=1e-5, centering_stat="mu_c",
                              scaling_stat="mu_c", num_batches_tracked=None, group=None):
    r"""Representative Batch Normalization (Gao et al., CVPR 2021, Eq. 12) of an input
    :math:`(N, C, *)` with 0 to 3 spatial dims, in the manner of ``mindspore.ops.batch_norm``.

    .. math::
        X_{cm} = X + w_m \odot K_m, \qquad
        X_m = X_{cm} - \mathrm{E}[X_{cm}], \qquad
        X_s = \frac{X_m}{\sqrt{\mathrm{Var}[X_{cm}] + \epsilon}}, \\
        X_{cs} = X_s \odot \mathrm{sigmoid}(w_v \odot K_s + w_b), \qquad
        Y = X_{cs} \odot \gamma + \beta

    :math:`K_m`, :math:`K_s` are per-instance statistics (``centering_stat``,
    ``scaling_stat``), :math:`w_m` is `center_weight`, :math:`w_v`, :math:`w_b` are
    `scale_weight`, `scale_bias`, :math:`\gamma`, :math:`\beta` are `weight`, `bias`.
    :math:`\mathrm{E}`, :math:`\mathrm{Var}` are the batch statistics over :math:`(N, *)` when
    `training`, else `running_mean`, `running_var`. A calibration (or the affine transform) is
    off when its parameters are None.

    The names are the canonical (PyTorch) ones; :class:`rbn_mindspore.RepresentativeBatchNorm2d`
    passes its `gamma`, `beta`, `moving_mean`, `moving_variance` as `weight`, `bias`,
    `running_mean`, `running_var`. `momentum` is the factor of the new batch value, as in
    ``ops.batch_norm`` and PyTorch (0.1 here is the Cell's 0.9).

    Args:
        input (Tensor): :math:`(N, C, *)` with 0 to 3 spatial dims: float32 or float64, or
            float16/bfloat16 (mixed precision: computed in float32, the vectors float32, as
            MindSpore's BatchNorm under AMP; the result in the input's dtype).
        running_mean (Parameter): :math:`(C,)` or None. Updated in place when `training`:
            ``(1 - momentum) * running_mean + momentum * batch_mean``.
        running_var (Parameter): :math:`(C,)` or None, given with `running_mean`. Updated in place
            with the unbiased batch variance.
        weight (Tensor, optional): :math:`\gamma`, :math:`(C,)`. Default: ``None`` .
        bias (Tensor, optional): :math:`\beta`, :math:`(C,)`, given with `weight`. Default: ``None`` .
        center_weight (Tensor, optional): :math:`w_m`, :math:`(C,)`; None switches centering
            calibration off. Default: ``None`` .
        scale_weight (Tensor, optional): :math:`w_v`, :math:`(C,)`; None (with `scale_bias`)
            switches scaling calibration off. Default: ``None`` .
        scale_bias (Tensor, optional): :math:`w_b`, :math:`(C,)`. Default: ``None`` .
        training (bool, optional): batch statistics (and updates) if ``True`` , else the running
            statistics. Default: ``False`` .
        momentum (float, optional): factor of the batch value in the update; ``None`` is the
            cumulative average (needs `num_batches_tracked`). Default: ``0.1`` .
        eps (float, optional): :math:`\epsilon`. Default: ``1e-5`` .
        centering_stat (str, optional): :math:`K_m`: ``"mu_c"``, ``"sigma_c"``, ``"mu_s"`` or
            ``"sigma_s"``. Default: ``"mu_c"`` .
        scaling_stat (str, optional): :math:`K_s`, the same four. Default: ``"mu_c"`` .
        num_batches_tracked (Parameter, optional): int64 scalar, incremented on every update.
            Default: ``None`` .
        group (str, optional): a communication group (``mindspore.communication``): when
            `training`, the batch statistics are those of the union of the processes' batches
            (two ``AllReduce`` of (C,)-sized sums forward; their gradients are all-reduced
            backward). Every process must call. ``None`` is this process's batch. Default: ``None`` .

    Returns:
        Tensor of the shape and dtype of `input`: :math:`(N, C)`, :math:`(N, C, L)`,
        :math:`(N, C, H, W)` or :math:`(N, C, D, H, W)`.

    Raises:
        TypeError: If `input` is not a float tensor, or a vector's dtype is not the computing
            dtype (the input's, float32 for a float16/bfloat16 input), or `input` is float64 with
            a `group` in training (MindSpore's ``AllReduce`` takes no float64).
        ValueError: If a statistic name is unknown, the rank is not 2 to 5, a vector is not
            :math:`(C,)`, a pair is given half, or `training` is ``False`` without running
            statistics. (One value per channel in training is accepted, as by MindSpore's
            BatchNorm: the output is `bias` and the running variance becomes NaN. An empty batch,
            N = 0, gives an empty output and leaves the running statistics as they are.)

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend`` (through MindSpore's BatchNorm primitive; untested)

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore.functional import representative_batch_norm
        >>> x = ms.Tensor(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
        >>> running_mean = ms.Parameter(ms.Tensor(np.zeros(2, np.float32)), requires_grad=False)
        >>> running_var = ms.Parameter(ms.Tensor(np.ones(2, np.float32)), requires_grad=False)
        >>> ones, zeros = ms.Tensor(np.ones(2, np.float32)), ms.Tensor(np.zeros(2, np.float32))
        >>> y = representative_batch_norm(x, running_mean, running_var, ones, zeros, zeros, zeros, ones,
        ...                               training=True)
        >>> print(y.shape, np.round(running_mean.asnumpy(), 2))
        (2, 2, 2) [0.25 0.45]
    """
    _check_arguments(input, running_mean, running_var, weight, bias, center_weight, scale_weight, scale_bias,
                     training, momentum, centering_stat, scaling_stat, num_batches_tracked)
    group = group if training else None
    if group is not None and input.dtype == mstype.float64:
        raise TypeError(f"synchronized statistics (group {group!r}) need float32 input, or float16/bfloat16: "
                        f"MindSpore's AllReduce takes no float64 (got {input.dtype} input)")
    empty_shard = input.shape[0] == 0
    if empty_shard and group is None:
        # F.batch_norm's answer: an empty output, statistics untouched. (MindSpore's BatchNorm
        # decays its moving variance in PyNative and writes stale values in Graph mode.)
        return ops.zeros_like(input)
    x = input.astype(mstype.float32) if input.dtype in _HALF_TYPES else input
    if empty_shard:
        # An empty shard still joins every collective (forward and backward), with count 0, or
        # the other processes wait for it forever. It runs the same code on a stand-in of one
        # zero instance whose contributions are multiplied by 0: MindSpore's CPU reductions over
        # an empty tensor return uninitialised memory (and so do their broadcast gradients).
        x = ops.depend(ops.zeros((1,) + x.shape[1:], x.dtype), x)
    params = (weight, bias, center_weight, scale_weight, scale_bias)  # rbn_reference.Parameters' order
    # rbn_reference.Options' order; a calibration that is off has no statistic to compute.
    options = (eps, centering_stat if center_weight is not None else "mu_c",
               scaling_stat if scale_weight is not None else "mu_c")
    path = _channel_path if _channel_statistics_only(center_weight, scale_weight, centering_stat,
                                                     scaling_stat) else _literal_path
    y, batch_mean, batch_var, count = path(x, params, running_mean, running_var, training, options, group,
                                           empty_shard)
    if empty_shard:
        y = _EMPTY_SHARD(y)
    if training and running_mean is not None:
        if group is None:  # else the count of the union of the batches, for its unbiased variance
            count = x.size // x.shape[1]
        _update_running_stats(running_mean, running_var, num_batches_tracked, ops.stop_gradient(batch_mean),
                              ops.stop_gradient(batch_var), count, momentum)
    return y.astype(input.dtype) if input.dtype in _HALF_TYPES else y


def _check_arguments(input, running_mean, running_var, weight, bias, center_weight, scale_weight, scale_bias,  # noqa: A002
                     training, momentum, centering_stat, scaling_stat, num_batches_tracked):
    """Raise the errors of the oracle (same wording) for anything Eq. 12 cannot take."""
    check_statistic("centering_stat", centering_stat)
    check_statistic("scaling_stat", scaling_stat)
    if input.dtype not in _FLOAT_TYPES + _HALF_TYPES:
        raise TypeError(f"expected a float16, bfloat16, float32 or float64 input (got {input.dtype})")
    compute_dtype = mstype.float32 if input.dtype in _HALF_TYPES else input.dtype
    # One value per channel in training is accepted, as by MindSpore's BatchNorm: the output is
    # beta and the unbiased batch variance 0/0 makes the moving variance NaN.
    check_input(input.shape, input.dtype, True, uses_batch_statistics=False)
    vectors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias,
               "center_weight": center_weight, "scale_weight": scale_weight, "scale_bias": scale_bias}
    check_pairs({name: value is not None for name, value in vectors.items()})
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are needed when training is False")
    if training and momentum is None and running_mean is not None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    check_channel_vectors(input.shape[1], {name: None if value is None else value.shape
                                           for name, value in vectors.items()})
    check_dtypes(compute_dtype, {name: None if value is None else value.dtype for name, value in vectors.items()})


def _update_running_stats(running_mean, running_var, num_batches_tracked, batch_mean, batch_var, count, momentum):
    """PyTorch's recurrence with the unbiased batch variance; cumulative when momentum is None."""
    if num_batches_tracked is not None:
        ops.assign_add(num_batches_tracked, ops.ones((), num_batches_tracked.dtype))
    tracked = None if num_batches_tracked is None else _as_values(num_batches_tracked)[0]
    mean, var = _running_stats(*_as_values(running_mean, running_var), tracked, batch_mean, batch_var, count,
                               momentum)
    ops.assign(running_mean, mean)
    ops.assign(running_var, var)


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


def _literal_path(x, params, running_mean, running_var, training, options, group=None, empty_shard=False):
    """Eq. 12 step by step (any statistic); returns (y, batch mean, batch biased var, the number of
    values per channel over the `group`, None without one). With a `group`, ``empty_shard`` means
    that ``x`` stands in for an empty batch: it adds nothing."""
    weight, bias, center_weight, scale_weight, scale_bias = params
    eps, centering_stat, scaling_stat = options
    ndim = x.ndim
    x_cm = x
    if center_weight is not None:
        x_cm = x + _per_channel(center_weight, ndim) * _instance_statistic(centering_stat, x, eps)
    batch_axes = (0,) + tuple(range(2, ndim))
    count = None
    if training and group is not None:
        def spread_about(mean):
            return ops.square(x_cm - _per_channel(mean, ndim)).sum(axis=batch_axes)

        mean, var, count = _merged_moments(group, empty_shard, x_cm.sum(axis=batch_axes), x.size // x.shape[1],
                                           spread_about)
    elif training:
        mean = x_cm.mean(axis=batch_axes)
        var = ops.square(x_cm - _per_channel(mean, ndim)).mean(axis=batch_axes)
    else:
        mean, var = running_mean, running_var
    x_s = (x_cm - _per_channel(mean, ndim)) * _per_channel(ops.rsqrt(var + _scalar(eps, x.dtype)), ndim)
    if scale_weight is not None:
        k_s = _instance_statistic(scaling_stat, x_s, eps)
        x_s = x_s * ops.sigmoid(_per_channel(scale_weight, ndim) * k_s + _per_channel(scale_bias, ndim))
    if weight is not None:
        x_s = x_s * _per_channel(weight, ndim) + _per_channel(bias, ndim)
    return x_s, mean, var, count


def _channel_coefficients(mean, var, weight, bias, center_weight, scale_weight, scale_bias, running_mean,
                          running_var, eps, centering_statistic, scaling_statistic, batch_moments):
    """The (N, C) coefficients of ``Y = A * (X - mean) + B`` from the per-instance moments of X.

    ``mean``, ``var``: per-instance mean and biased variance of X, (N, C). Per instance X_cm
    has mean ``mean + w_m * K_m`` and the variance of X; the batch statistics follow by the
    law of total variance (every instance has the same element count). With ``inv_std`` the
    batch ``1 / sqrt(Var + eps)``: ``X_s = ms + inv_std * (X - mean)`` where ``ms`` is the
    instance mean of X_s (variance ``var * inv_std^2``), so ``A = gamma * gate * inv_std`` and
    ``B = gamma * gate * ms + beta``. Off parts come in neutral (w_m = 0, gamma = 1, beta = 0);
    ``scaling_statistic`` None means no scaling calibration. Returns (A, B, batch mean, batch
    biased var, number of instances) with the batch ones (C,) and the number a scalar.

    The choices come in as functions, not flags: in a Graph-mode ``bprop``, the gradient of a
    function with an ``if`` on a constant fails to compile ("The func graph is empty").
    """
    instance_mean = mean + center_weight * centering_statistic(mean, var, eps)
    batch_mean, batch_var, instances = batch_moments(instance_mean, var, running_mean, running_var)
    inv_std = ops.rsqrt(batch_var + eps)
    standardized_mean = (instance_mean - batch_mean) * inv_std
    scale = weight
    if scaling_statistic is not None:
        k_s = scaling_statistic(standardized_mean, var * ops.square(inv_std), eps)
        scale = weight * ops.sigmoid(scale_weight * k_s + scale_bias)
    # Without the scaling gate A is per channel: broadcast, the passes take one value per instance.
    a = ops.broadcast_to(scale * inv_std, mean.shape)
    return a, scale * standardized_mean + bias, batch_mean, batch_var, instances


def _channel_path(x, params, running_mean, running_var, training, options, group=None, empty_shard=False):
    """Eq. 12 as ``Y = A * (X - mean) + B`` per instance; returns (y, batch mean, batch var).
    ``empty_shard`` as in :func:`_literal_path`."""
    weight, bias, center_weight, scale_weight, scale_bias = params
    eps, centering_stat, scaling_stat = options
    kernel = _channel_statistics_kernel(eps, centering_stat, scaling_stat, scale_weight is not None, training,
                                        group, empty_shard)
    # Neutral values for the parts that are off: w_m = 0 gives X_cm = X exactly, gamma = 1 and
    # beta = 0 give Y = X_cs exactly. Scaling has no neutral value (sigmoid < 1): a kernel flag.
    outputs = kernel(x, _or_neutral(weight, 1, x), _or_neutral(bias, 0, x), _or_neutral(center_weight, 0, x),
                     _or_neutral(scale_weight, 0, x), _or_neutral(scale_bias, 0, x),
                     _or_neutral(running_mean, 0, x), _or_neutral(running_var, 1, x))
    # the all-reduced number of instances, as a number of values per channel
    count = None if group is None else outputs[3] * (x.size // (x.shape[0] * x.shape[1]))
    return outputs[0], outputs[1], outputs[2], count


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


# ----------------------------------------------------------------------------- small shared pieces


@ms.jit
def _running_stats(running_mean, running_var, num_batches_tracked, batch_mean, batch_var, count, momentum):
    """The updated running mean and variance.

    Compiled (``ms.jit``): in PyNative its dozen (C,)-sized ops would each cost a dispatch,
    ~15 ms per training step at (32, 64, 56, 56) on this CPU. In Graph mode it is inlined.
    """
    if momentum is None:
        factor = 1 / num_batches_tracked.astype(batch_mean.dtype)
    else:
        factor = _scalar(momentum, batch_mean.dtype)
    unbiased_var = batch_var * count / (count - 1)
    return running_mean + (batch_mean - running_mean) * factor, running_var + (unbiased_var - running_var) * factor


def _as_values(*tensors):
    """The tensors with every Parameter as a plain value, for an ``ms.jit`` function: its compile
    cache is keyed on the ids of the Parameters it is given, so each layer's own Parameters
    would compile the same graph again, layer by layer and model by model (mobilenet_v2's first
    PyNative step: 123 compiles, 25 s). Not differentiated: the callers' gradients are their own."""
    return tuple([ops.stop_gradient(tensor) for tensor in tensors])


def _per_channel(vector, ndim):
    """(C,) -> (1, C, 1, ...) to broadcast against an ndim input."""
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def _reduction_dims(statistic, ndim):
    """Spatial axes for the channel statistics ``*_c``, the channel axis for ``*_s``."""
    return tuple(range(2, ndim)) if statistic.endswith("_c") else (1,)


def _scalar(value, dtype):
    """A Python float as a 0-d tensor of ``dtype``.

    MindSpore rounds a Python float operand to float32 even next to a float64 tensor
    (``float64_tensor * 0.1`` is off by 1.5e-9): every float constant goes through here.
    """
    return Tensor(value, dtype)


def _channel_statistics_only(center_weight, scale_weight, centering_stat, scaling_stat):
    """True when every calibration that is on uses a per-instance (channel) statistic."""
    return ((center_weight is None or centering_stat in _CHANNEL_STATISTICS)
            and (scale_weight is None or scaling_stat in _CHANNEL_STATISTICS))


def _batch_moments(instance_mean, var, running_mean, running_var):
    """Batch mean and biased variance of X_cm from the per-instance ones (total variance)."""
    batch_mean = instance_mean.mean(axis=0)
    return (batch_mean, (var + ops.square(instance_mean - batch_mean)).mean(axis=0),
            _scalar(instance_mean.shape[0], instance_mean.dtype))


def _synced_batch_moments(group, empty_shard):
    """``_batch_moments`` over the union of the processes' batches (:func:`_merged_moments`)."""

    def batch_moments(instance_mean, var, running_mean, running_var):
        def spread_about(mean):
            return (var + ops.square(instance_mean - mean)).sum(axis=0)

        return _merged_moments(group, empty_shard, instance_mean.sum(axis=0), instance_mean.shape[0], spread_about)

    return batch_moments


def _merged_moments(group, empty_shard, local_sum, local_count, spread_about):
    """Mean, biased variance and count over the processes of `group`, from this process's sum and
    count, and ``spread_about(mean)``, its sum of squared deviations from a given mean: one
    ``AllReduce`` of the sums with the count, then one of the spread around the common mean (no
    E[x^2] - E[x]^2). The second takes the first's result, and the count travels with the sums,
    so every process runs them in the same order, whatever its graph. MindSpore differentiates
    AllReduce (the gradients are all-reduced). An ``empty_shard``'s stand-in adds 0 (count 0, sums
    times 0), yet keeps the collectives in its graph."""
    all_reduce = _all_reduce(group)
    dtype = local_sum.dtype
    share = _scalar(0.0 if empty_shard else 1.0, dtype)
    count = ops.depend(Tensor([0 if empty_shard else local_count], dtype), local_sum)
    totals = all_reduce(ops.concat((local_sum * share, count)))
    mean = totals[:-1] / totals[-1]
    return mean, all_reduce(spread_about(mean) * share) / totals[-1], totals[-1]


@functools.lru_cache(maxsize=None)
def _all_reduce(group):
    """One sum ``AllReduce`` primitive per communication group."""
    return ops.AllReduce(ops.ReduceOp.SUM, group)


def _running_moments(instance_mean, var, running_mean, running_var):
    """The running statistics, in place of the batch ones (evaluation); the local count."""
    return running_mean, running_var, _scalar(instance_mean.shape[0], instance_mean.dtype)


def _mean_statistic(mean, var, eps):
    """mu_c from the per-instance moments."""
    return mean


def _std_statistic(mean, var, eps):
    """sigma_c from the per-instance moments."""
    return ops.sqrt(var + eps)


_INSTANCE_STATISTICS = {"mu_c": _mean_statistic, "sigma_c": _std_statistic}


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


def _as_rows(x):
    """View (N, C, *spatial) as (N, C, S)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _as_instances(x):
    """View (N, C, *spatial) as (1, N*C, S, 1): BatchNorm's channels become the instances."""
    return x.reshape(1, x.shape[0] * x.shape[1], -1, 1)


def _instance_affine(x, scale, bias, eps, bn_infer):
    """``scale * x + bias`` per instance of (1, N*C, S, 1), scale and bias (N*C,)."""
    if x.dtype == mstype.float64:
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    # Inference BatchNorm computes scale * (x - 0) / sqrt(1 - eps + eps) + bias; the
    # variance 1 - eps is not exact in float32, so divide 1 + eps back out instead.
    instances = x.shape[1]
    unit_var = ops.ones((instances,), x.dtype)
    return bn_infer(x, scale * ops.sqrt(unit_var + eps), bias, ops.zeros((instances,), x.dtype), unit_var)[0]


# ----------------------------------------------------------------------------- MindSpore-only: kernel Cells


@functools.lru_cache(maxsize=None)
def _channel_statistics_kernel(eps, centering_stat, scaling_stat, scaling, batch_statistics, group=None,
                               empty_shard=False):
    """One kernel Cell per configuration (a Cell ``bprop`` cannot take Python flags as inputs).

    The fused CPU kernels when they are available (see :mod:`rbn_mindspore.cpu_kernels`): the
    whole-layer ones for one process, the passes with the (N, C) algebra between them in
    MindSpore ops for synchronized statistics (whose ``AllReduce`` sits between the two); else
    MindSpore's BatchNorm primitive.
    """
    instance_kernels = cpu_kernels.instance_kernels()
    if instance_kernels is None:
        return _PrimitiveChannelKernel(eps, centering_stat, scaling_stat, scaling, batch_statistics, group,
                                       empty_shard)
    if group is None:
        return _LayerKernel(eps, centering_stat, scaling_stat, scaling, batch_statistics, instance_kernels)
    return _FusedChannelKernel(eps, centering_stat, scaling_stat, scaling, batch_statistics, group, empty_shard,
                               instance_kernels)


_KERNEL_NUMBERS = itertools.count()  # a name for each kernel's compiled functions


class _ChannelStatisticsKernel(nn.Cell):
    """Eq. 12 for channel statistics with a hand-written backward.

    Inputs: x and the seven (C,) vectors (weight, bias, center_weight, scale_weight, scale_bias,
    running_mean, running_var), positional: a ``bprop`` takes tensors, not tuples. Outputs
    ``(y, batch_mean, batch_var, instances, mean, var, ...)``: per-instance moments (and whatever
    else a subclass saves) for ``bprop``; the batch statistics and the number of instances (over
    the processes when synchronized) are only used to update the running statistics, which is not
    differentiated (their gradient is ignored, as in BatchNorm).

    Backward: ``Y = A * (X - mean) + B`` with A, B functions of the instance mean and biased
    variance var, themselves functions of X, so with S values per instance
        dX = A * dY + (d_mean - A * sum_dy) / S + 2 * d_var * (X - mean) / S
    where d_mean, d_var come from differentiating the (N, C) coefficient math (``GradOperation``)
    with the per-instance sums ``sum dY * (X - mean)`` (for A) and ``sum dY`` (for B) as
    sensitivities. So dX = p * dY + q * (X - mean) + r per instance.

    Subclasses define ``forward`` and ``backward``, each one ``ms.jit`` function: in PyNative
    their few dozen ops would each cost a dispatch (most of them (N, C)-sized, where the dispatch
    is all the cost); compiled they are one launch. In Graph mode they are subgraphs that every
    layer of the same configuration and shapes calls, not copies inlined into each layer.
    """

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics, group, empty_shard):
        super().__init__()
        centering_statistic = _INSTANCE_STATISTICS[centering_stat]
        scaling_statistic = _INSTANCE_STATISTICS[scaling_stat] if scaling else None
        if not batch_statistics:
            batch_moments = _running_moments
        else:
            batch_moments = _batch_moments if group is None else _synced_batch_moments(group, empty_shard)

        def coefficients(mean, var, *vectors):
            return _channel_coefficients(mean, var, *vectors, _scalar(eps, mean.dtype), centering_statistic,
                                         scaling_statistic, batch_moments)

        grad_all = ops.GradOperation(get_all=True, sens_param=True)

        def backward_coefficients(mean, var, sum_dy, sum_dy_centered, vectors):
            """(A, d_mean, d_var) per instance (N*C,) and the gradients of the (C,) vectors."""
            n, c = sum_dy.shape
            inputs = (mean.reshape(n, c), var.reshape(n, c)) + vectors
            a = coefficients(*inputs)[0].reshape(-1)
            # ops.zeros, not ops.zeros_like: in a Graph-mode bprop the latter fails to compile
            # ("The func graph is empty ... zeros_like").
            no_grad = ops.zeros((c,), mean.dtype)
            # After A: collectives (synchronized statistics) run in the same order on every process.
            inputs = (ops.depend(inputs[0], a),) + inputs[1:]
            grads = grad_all(coefficients)(*inputs, (sum_dy_centered, sum_dy, no_grad, no_grad,
                                                     ops.zeros((), mean.dtype)))
            return a, grads[0].reshape(-1), grads[1].reshape(-1), tuple(grads[2:])

        self.coefficients = coefficients
        self.backward_coefficients = backward_coefficients

    def _compile(self, forward, backward):
        """``self.forward``, ``self.backward``: the two functions under ``ms.jit``, named after this kernel.

        MindSpore warns that a function "has been compiled again" (and to reuse its object) when a
        second function object from the same source line compiles: that is every configuration
        after the first (a layer's evaluation after its training, say), each compiled once.

        ``ms.no_inline``: in a Graph-mode network (an ``ms.jit`` train step, GRAPH_MODE) the layers
        call one subgraph each way instead of each inlining a copy: a resnet20 train step (batch 8
        x 1 x 8 x 8, CPU) compiled in ~10 s instead of ~12 s and then took 0.13 s instead of ~0.25 s,
        with the same loss to the bit (docs/mindspore.md). The mark goes on the ``ms.jit`` wrapper,
        which is what the graph parser reads; on the function itself it also reaches the top-level
        compile of a PyNative call, whose results are then wrong (MindSpore 2.10: a transposed
        input read as if contiguous, gradients of another call's inputs).
        """
        number = next(_KERNEL_NUMBERS)
        for function in (forward, backward):
            function.__name__ = f"{function.__name__}_{number}"
        self.forward, self.backward = ms.no_inline(ms.jit(forward)), ms.no_inline(ms.jit(backward))

    def construct(self, x, weight, bias, center_weight, scale_weight, scale_bias, running_mean, running_var):
        return self.forward(x, *_as_values(weight, bias, center_weight, scale_weight, scale_bias, running_mean,
                                           running_var))


class _LayerKernel(nn.Cell):
    """The channel path of one process in one fused CPU call each way (``cpu_kernels.cc``'s
    ``RbnLayerForward_*`` and ``RbnLayerBackward_*``): the moments pass, the (N, C) algebra in
    float64 and the affine pass forward; the two-sum pass, the algebra's backward and the
    ``p * dY + q * (X - mean) + r`` pass backward (the formulas of :class:`_ChannelStatisticsKernel`).

    Inputs as :class:`_ChannelStatisticsKernel`'s; outputs ``(y, batch_mean, batch_var, mean,
    var)``, the per-instance moments for ``bprop``. No ``ms.jit``: a Graph-mode network
    compiles two nodes per layer (resnet18's peak memory 1.21x BatchNorm's, against 1.34x with
    the passes and MindSpore ops between them), and PyNative compiles nothing per input shape.
    """

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics, instance_kernels):
        super().__init__()
        self.forward, self.backward = instance_kernels.layer(centering_stat, scaling_stat if scaling else None,
                                                             batch_statistics)
        # eps in the input's dtype, as every tensor of the kernels (see cpu_kernels.cc)
        self.eps32, self.eps64 = Tensor([eps], mstype.float32), Tensor([eps], mstype.float64)

    def _eps(self, x):
        return self.eps64 if x.dtype == mstype.float64 else self.eps32

    def construct(self, x, weight, bias, center_weight, scale_weight, scale_bias, running_mean, running_var):
        y, mean, var, batch_mean, batch_var = self.forward(
            _as_rows(x), weight, bias, center_weight, scale_weight, scale_bias, running_mean, running_var,
            self._eps(x))
        return y.reshape(x.shape), batch_mean, batch_var, mean, var

    def bprop(self, x, weight, bias, center_weight, scale_weight, scale_bias, running_mean, running_var, out, dout):
        grads = self.backward(_as_rows(x), _as_rows(dout[0]), out[3], out[4], weight, bias, center_weight,
                              scale_weight, scale_bias, running_mean, running_var, self._eps(x))
        return (grads[0].reshape(x.shape),) + grads[1:]


class _FusedChannelKernel(_ChannelStatisticsKernel):
    """The channel path on the fused CPU kernels over the (N*C, S) view of X: a moments pass and
    an affine pass forward, one two-sum pass and one ``p * dY + q * (X - mean) + r`` pass
    backward. Nothing but the instance moments is saved: the kernels take X and the means.

    The (N, C) math between the passes runs in X's dtype (MindSpore's ``AllReduce`` takes no
    float64), not in float64 as in :class:`_LayerKernel`."""

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics, group, empty_shard,
                 instance_kernels):
        super().__init__(eps, centering_stat, scaling_stat, scaling, batch_statistics, group, empty_shard)
        coefficients, backward_coefficients = self.coefficients, self.backward_coefficients

        def forward(x, *vectors):
            n, c = x.shape[0], x.shape[1]
            rows = x.reshape(n * c, -1)
            mean, var = instance_kernels.moments(rows)
            a, b, batch_mean, batch_var, instances = coefficients(mean.reshape(n, c), var.reshape(n, c), *vectors)
            y = instance_kernels.affine(rows, mean, a.reshape(-1), b.reshape(-1))
            return y.reshape(x.shape), batch_mean, batch_var, instances, mean, var

        def backward(x, mean, var, dy, *vectors):
            n, c = x.shape[0], x.shape[1]
            rows, dy_rows = x.reshape(n * c, -1), dy.reshape(n * c, -1)
            count = rows.shape[1]
            sum_dy, sum_dy_centered = instance_kernels.sums(dy_rows, rows, mean)
            a, d_mean, d_var, vector_grads = backward_coefficients(
                mean, var, sum_dy.reshape(n, c), sum_dy_centered.reshape(n, c), vectors)
            dx = instance_kernels.combine(dy_rows, rows, mean, a, 2 * d_var / count, (d_mean - a * sum_dy) / count)
            return (dx.reshape(x.shape),) + vector_grads

        self._compile(forward, backward)

    def bprop(self, x, weight, bias, center_weight, scale_weight, scale_bias, running_mean, running_var, out, dout):
        return self.backward(x, out[4], out[5], dout[0], weight, bias, center_weight, scale_weight, scale_bias,
                             running_mean, running_var)


class _PrimitiveChannelKernel(_ChannelStatisticsKernel):
    """The channel path on MindSpore's BatchNorm primitive (any device target; no compiler needed).

    On CPU MindSpore's elementwise ops with a broadcast (N, C, 1, 1) operand are 5-15x slower
    than plain elementwise ops, while its BatchNorm primitive does a per-channel moments pass and
    a per-channel affine pass at full speed. X is therefore viewed as ``(1, N*C, S, 1)`` so that
    "per channel" means "per instance" (float32; float64, which the primitive rejects, takes plain
    ops). The primitive gives x_hat = (X - mean) / std, std = sqrt(var + eps), so the affine maps
    act on x_hat (A * std instead of A); x_hat is saved for the backward: two reductions and two
    affine passes.
    """

    def __init__(self, eps, centering_stat, scaling_stat, scaling, batch_statistics, group, empty_shard):
        super().__init__(eps, centering_stat, scaling_stat, scaling, batch_statistics, group, empty_shard)
        coefficients, backward_coefficients = self.coefficients, self.backward_coefficients
        # momentum=0: the training primitive writes its "moving statistics" inputs in place
        # (throw-away zeros/ones, which may be shared constants in Graph mode); with 0 it
        # writes back what was there.
        bn_train = ops.BatchNorm(is_training=True, epsilon=eps, momentum=0.0)
        bn_infer = ops.BatchNorm(is_training=False, epsilon=eps)

        def forward(x, *vectors):
            n, c = x.shape[0], x.shape[1]
            mean, var, x_hat = _instance_moments(_as_instances(x), eps, bn_train)
            a, b, batch_mean, batch_var, instances = coefficients(mean.reshape(n, c), var.reshape(n, c), *vectors)
            std = ops.sqrt(var + _scalar(eps, var.dtype))
            y = _instance_affine(x_hat, a.reshape(-1) * std, b.reshape(-1), eps, bn_infer)
            return y.reshape(x.shape), batch_mean, batch_var, instances, mean, var, x_hat

        def backward(x, mean, var, x_hat, dy, *vectors):
            n, c = x.shape[0], x.shape[1]
            count = x.size // (n * c)
            dy = _as_instances(dy)
            std = ops.sqrt(var + _scalar(eps, var.dtype))
            sum_dy = dy.reshape(n * c, -1).sum(-1)
            sum_dy_centered = (dy * x_hat).reshape(n * c, -1).sum(-1) * std
            a, d_mean, d_var, vector_grads = backward_coefficients(
                mean, var, sum_dy.reshape(n, c), sum_dy_centered.reshape(n, c), vectors)
            dx = (_instance_affine(dy, a, (d_mean - a * sum_dy) / count, eps, bn_infer)
                  + _instance_affine(x_hat, 2 * d_var * std / count, ops.zeros(std.shape, std.dtype), eps,
                                     bn_infer))
            return (dx.reshape(x.shape),) + vector_grads

        self._compile(forward, backward)

    def bprop(self, x, weight, bias, center_weight, scale_weight, scale_bias, running_mean, running_var, out, dout):
        return self.backward(x, out[4], out[5], out[6], dout[0], weight, bias, center_weight, scale_weight,
                             scale_bias, running_mean, running_var)


class _EmptyShard(nn.Cell):
    """The empty output of a process without samples, from its stand-in's output: backward sends
    the stand-in exact zeros (so it adds nothing to the parameter gradients), and the stand-in's
    backward still runs, with its collectives."""

    def construct(self, y):
        return y[:0]

    def bprop(self, y, out, dout):
        return (ops.zeros(y.shape, y.dtype),)


_EMPTY_SHARD = _EmptyShard()
