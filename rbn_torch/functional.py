"""Representative Batch Normalization as a pure function, in the spirit of ``F.batch_norm``.

Two paths compute Eq. 12 of the paper:

- Channel statistics (``mu_c``/``sigma_c`` for both calibrations, or a calibration off):
  every step is an affine map per (n, c), so ``Y = A[n,c] * (X - mean[n,c]) + B[n,c]`` where
  ``A``, ``B`` follow from the per-(n, c) mean and variance alone (docs/torch.md): one moments
  pass and one elementwise pass, BatchNorm's memory traffic. In eager training with autograd a
  custom ``autograd.Function`` gives the backward BatchNorm's passes too. In eval mode and under
  tracers (``torch.compile``, ``torch.export``, ``jit.trace``, ``torch.onnx.export``) the same
  formula runs as plain differentiable ops, which inductor fuses and exporters translate.
- Spatial statistics (``mu_s``/``sigma_s``): Eq. 12 step by step, plain autograd.
"""

import rbn_reference
import torch
from rbn_reference import Options, Parameters

__all__ = ["representative_batch_norm"]

_CHANNEL_STATISTICS = ("mu_c", "sigma_c")
# |instance mean| / instance std beyond which the input gradient centres X before scaling it:
# 16 costs float32 4 bits at most in the one-pass form.
_CANCELLATION_RATIO = 16
# |instance mean| / instance std up to which the forward's one-reduction variance is used
# (``_fused_moments``): its rounding, eps * ratio**2 of the variance, stays within 16 ulps.
_ONE_PASS_RATIO = 4
# Up to this many values ``_affine`` takes two vectorised passes: BatchNorm's inference kernel pays
# a setup per row that costs more than a second pass over data still in cache (2.1x the two passes'
# time at (8, 2048, 16), 1.5x at (8, 256, 784) = 1.6M values, 0.7x at 6.4M; a 2-core Xeon).
_TWO_PASS_VALUES = 1 << 20


def representative_batch_norm(input, running_mean, running_var, weight=None, bias=None, center_weight=None,
                              scale_weight=None, scale_bias=None, *, training=False, momentum=0.1, eps=1e-5,
                              centering_stat="mu_c", scaling_stat="mu_c"):
    r"""Representative Batch Normalization (Gao et al., CVPR 2021, Eq. 12) of ``input``.

    Like :func:`torch.nn.functional.batch_norm`, with two calibrations around the
    normalization; per (n, c) instance, with :math:`K_m`, :math:`K_s` the statistics
    ``centering_stat``, ``scaling_stat`` (Table 3):

    .. math::
        X_{cm} = X + w_m \odot K_m(X) \\
        X_m = X_{cm} - E[X_{cm}] \\
        X_s = X_m / \sqrt{Var[X_{cm}] + \epsilon} \\
        X_{cs} = X_s \odot \sigma(w_v \odot K_s(X_s) + w_b) \\
        Y = X_{cs} \odot \gamma + \beta

    :math:`E`, :math:`Var` are the batch mean and biased variance per channel in training
    (or when there are no running statistics), the running statistics otherwise. A training
    call updates ``running_mean``/``running_var`` in place to ``(1 - momentum) * old +
    momentum * batch``, with the unbiased batch variance of :math:`X_{cm}`, as ``F.batch_norm``
    does. float16/bfloat16 inputs are computed in float32 and returned in their own dtype; the
    parameters may be float32 then (autocast). The input is never modified.

    Args:
        input (Tensor): (N, C, *) input, 0 to 3 spatial dims.
        running_mean (Tensor or None): (C,) running mean, or None to always use batch statistics.
        running_var (Tensor or None): (C,) running variance; given with ``running_mean``.
        weight (Tensor, optional): :math:`\gamma`, (C,). Default: None (no scaling).
        bias (Tensor, optional): :math:`\beta`, (C,). Default: None (no shift).
        center_weight (Tensor, optional): :math:`w_m`, (C,). Default: None (no centering calibration).
        scale_weight (Tensor, optional): :math:`w_v`, (C,). Default: None (no scaling calibration).
        scale_bias (Tensor, optional): :math:`w_b`, (C,); given with ``scale_weight``. Default: None.
        training (bool): use and update batch statistics. Default: False.
        momentum (float): factor of the new batch value in the running update. Default: 0.1.
        eps (float): added to the variances. Default: 1e-5.
        centering_stat (str): :math:`K_m`: ``"mu_c"``, ``"sigma_c"``, ``"mu_s"`` or ``"sigma_s"``.
            Default: ``"mu_c"``.
        scaling_stat (str): :math:`K_s`, the same four. Default: ``"mu_c"``.

    Shape:
        - Input: :math:`(N, C)`, :math:`(N, C, L)`, :math:`(N, C, H, W)` or :math:`(N, C, D, H, W)`.
        - Output: the same shape and dtype as the input.

    Example::

        >>> import torch
        >>> from rbn_torch.functional import representative_batch_norm
        >>> x = torch.randn(8, 3, 4, 4)
        >>> mean, var = torch.zeros(3), torch.ones(3)
        >>> y = representative_batch_norm(x, mean, var, torch.ones(3), torch.zeros(3), torch.zeros(3),
        ...                               torch.zeros(3), torch.ones(3), training=True)
        >>> y.shape
        torch.Size([8, 3, 4, 4])
        >>> bool((mean != 0).all())  # updated in place
        True
    """
    params = Parameters(weight, bias, center_weight, scale_weight, scale_bias)
    _check_arguments(input, running_mean, running_var, params, training, centering_stat, scaling_stat)
    if not torch.jit.is_tracing() and input.numel() == 0:  # a trace records the non-empty path
        return _empty_batch(input, params)

    # Half precision: statistics in float32, as nn.BatchNorm does; the result in the input's dtype.
    compute_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    # flatten, not reshape(N, C, -1): -1 is ambiguous for an empty batch, and exporters keep N symbolic.
    x = (input.flatten(2) if input.dim() > 2 else input.unsqueeze(-1)).to(compute_dtype)
    use_batch_stats = training or running_mean is None
    running = None if use_batch_stats else (_per_channel(running_mean, compute_dtype),
                                            _per_channel(running_var, compute_dtype))
    # A calibration that is off has no statistic; "mu_c" keeps it on the channel path.
    options = Options(eps, centering_stat if center_weight is not None else "mu_c",
                      scaling_stat if scale_weight is not None else "mu_c")

    # Eval without calibrations is BatchNorm's per-element map: the channel path would subtract
    # per-instance means, through which a NaN/Inf element would spread over its instance.
    batchnorm_only = not use_batch_stats and center_weight is None and scale_weight is None
    if (options.centering_stat in _CHANNEL_STATISTICS and options.scaling_stat in _CHANNEL_STATISTICS
            and not batchnorm_only):
        tracing = _is_tracing()
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params))
        if not needs_grad and not tracing:
            y, batch_mean, batch_var = _channel_path(x, _per_channel_parameters(params, compute_dtype), running,
                                                     options, fused=True)
        elif use_batch_stats and not tracing:
            # The (C,) parameters as given: reshaped inside, they cost autograd no view nodes.
            y, batch_mean, batch_var = _ChannelRBN.apply(x, running, options, *params)
        else:
            y, batch_mean, batch_var = _channel_path(x, _per_channel_parameters(params, compute_dtype), running,
                                                     options, fused=False)
    else:
        y, batch_mean, batch_var = _literal_path(x, _per_channel_parameters(params, compute_dtype), running,
                                                 options)

    if training and running_mean is not None:
        _update_running_stats(running_mean, running_var, batch_mean, batch_var, x.shape[0] * x.shape[2], momentum)
    return y.reshape(input.shape).to(input.dtype)


def _check_arguments(input, running_mean, running_var, params, training, centering_stat, scaling_stat):
    """Raise the oracle's errors (same wording) for anything Eq. 12 cannot take.

    No dtype check (``rbn_reference.check_dtypes``): like ``F.batch_norm``, a half-precision
    input takes float32 parameters and statistics (autocast gives exactly that).
    """
    rbn_reference.check_statistic("centering_stat", centering_stat)
    rbn_reference.check_statistic("scaling_stat", scaling_stat)
    # jit.trace (and the TorchScript ONNX exporter) sees sizes as tensors: checks on their values
    # would warn (TracerWarning) and hold only for the example input. Rank and dtype are checked.
    tracing = torch.jit.is_tracing()
    rbn_reference.check_input(input.shape, input.dtype, input.is_floating_point(),
                              uses_batch_statistics=(training or running_mean is None) and not tracing)
    # weight without bias is BatchNorm's ``bias=False``: only these two pairs go together.
    rbn_reference.check_pairs({"scale_weight": params.scale_weight is not None,
                               "scale_bias": params.scale_bias is not None,
                               "running_mean": running_mean is not None, "running_var": running_var is not None})
    if tracing:
        return
    vectors = {"running_mean": running_mean, "running_var": running_var, **params._asdict()}
    rbn_reference.check_channel_vectors(input.shape[1], {
        name: None if tensor is None else tuple(tensor.shape) for name, tensor in vectors.items()})


def _update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum):
    """``(1 - momentum) * old + momentum * batch`` in place, with the unbiased batch variance.

    ``batch_mean``/``batch_var``: any shape with C elements; ``count``: values per channel.
    """
    with torch.no_grad():
        running_mean.lerp_(batch_mean.reshape(-1).to(running_mean.dtype), momentum)
        unbiased = batch_var.reshape(-1) * (count / (count - 1))
        running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def _instance_statistic(statistic, x, eps):
    """``K`` of Eq. 5 / 9 for x of shape (N, C, S): ``*_c`` reduce S, ``*_s`` reduce C."""
    dim = -1 if statistic.endswith("_c") else 1
    if statistic.startswith("mu"):
        return x.mean(dim, keepdim=True)
    var, _ = torch.var_mean(x, dim, correction=0, keepdim=True)
    return torch.sqrt(var + eps)


def _literal_path(x, params, running, options):
    """Eq. 12 step by step on x of shape (N, C, S); any statistics.

    ``params``: ``Parameters`` of (C, 1) tensors or None; ``running``: None (batch statistics)
    or the (C, 1) running mean and variance. Returns y and the (1, C, 1) batch mean and biased
    variance of ``X_cm``.
    """
    if params.center_weight is not None:
        x = x + params.center_weight * _instance_statistic(options.centering_stat, x, options.eps)
    batch_var, batch_mean = torch.var_mean(x, (0, 2), correction=0, keepdim=True)
    mean, var = (batch_mean, batch_var) if running is None else running
    y = (x - mean) * torch.rsqrt(var + options.eps)
    if params.scale_weight is not None:
        statistic = _instance_statistic(options.scaling_stat, y, options.eps)
        y = y * torch.sigmoid(params.scale_weight * statistic + params.scale_bias)
    if params.weight is not None:
        y = y * params.weight
    if params.bias is not None:
        y = y + params.bias
    return y, batch_mean.detach(), batch_var.detach()


def _channel_coefficients(mean, var, params, running, options, saved=None):
    """``A``, ``B`` of ``Y = A * (X - mean) + B`` per (n, c), and the batch statistics.

    ``mean``, ``var``: the per-instance mean and biased variance of X, (N, C, 1); ``params``,
    ``running`` as in ``_literal_path``; channel statistics only. Returns ``A`` ((N, C, 1), or
    (1, C, 1) without scaling calibration), ``B`` (N, C, 1) and the (1, C, 1) batch mean and
    biased variance of ``X_cm``. Centering calibration moves each instance's mean and keeps its
    variance, so the batch moments of ``X_cm`` follow from the per-instance ones (law of total
    variance). ``saved``: a dict that receives the intermediates ``_coefficient_gradients`` needs.
    """
    mean_cm = center = mean
    if params.center_weight is not None:
        center = mean if options.centering_stat == "mu_c" else torch.sqrt(var + options.eps)
        mean_cm = torch.addcmul(mean, params.center_weight, center)
    batch_mean = mean_cm.mean(0, keepdim=True)
    deviation = mean_cm - batch_mean
    batch_var = var.mean(0, keepdim=True) + deviation.square().mean(0, keepdim=True)
    centre, spread = (batch_mean, batch_var) if running is None else running
    inv_std = torch.rsqrt(spread + options.eps)
    shift = (deviation if running is None else mean_cm - centre) * inv_std  # the mean of X_s per instance
    scale, normalized = inv_std, shift
    statistic = gate = None
    if params.scale_weight is not None:
        # K_s of X_s: its per-instance mean is ``shift``, its variance ``var * inv_std**2``.
        statistic = shift if options.scaling_stat == "mu_c" else torch.sqrt(var * inv_std.square() + options.eps)
        gate = torch.sigmoid(torch.addcmul(params.scale_bias, params.scale_weight, statistic))
        scale = scale * gate
        shift = shift * gate
    if saved is not None:
        saved.update(center=center, deviation=deviation, inv_std=inv_std, normalized=normalized,
                     statistic=statistic, gate=gate, scale=scale, shift=shift)
    if params.weight is not None:
        scale = scale * params.weight
        shift = shift * params.weight
    if params.bias is not None:
        shift = shift + params.bias
    return scale, shift, batch_mean, batch_var


def _coefficient_gradients(grad_scale, grad_shift, var, params, options, saved):
    """Backward of ``_channel_coefficients`` with batch statistics, by hand (docs/math.md).

    ``grad_scale``, ``grad_shift``: dL/dA, dL/dB per (n, c), (N, C, 1); ``var``: the instances'
    variance; ``saved``: its intermediates. Returns dL/dmean (N, C, 1), dL/dvar (broadcasting to
    (N, C, 1)) and the five parameters' gradients ((C, 1), None for a parameter that is off). Few
    ops on small tensors: this runs once per layer and step, where autograd's graph cost more
    than the layer's big-tensor passes on small inputs.
    """
    inv_std, deviation = saved["inv_std"], saved["deviation"]
    grad_weight = grad_bias = grad_center_weight = grad_scale_weight = grad_scale_bias = None
    if params.bias is not None:
        grad_bias = grad_shift.sum(0)
    if params.weight is not None:
        grad_weight = torch.addcmul(grad_scale * saved["scale"], grad_shift, saved["shift"]).sum(0)
        grad_scale, grad_shift = grad_scale * params.weight, grad_shift * params.weight
    grad_var = 0
    if params.scale_weight is not None:
        gate, statistic = saved["gate"], saved["statistic"]
        grad_logit = torch.addcmul(grad_scale * inv_std, grad_shift, saved["normalized"]).mul_(gate * (1 - gate))
        grad_scale_bias = grad_logit.sum(0)
        grad_scale_weight = (grad_logit * statistic).sum(0)
        grad_statistic = grad_logit * params.scale_weight
        grad_scale, grad_shift = grad_scale * gate, grad_shift * gate
        if options.scaling_stat == "mu_c":
            grad_shift = grad_shift + grad_statistic
        else:  # statistic = sqrt(var * inv_std**2 + eps): d/dvar = inv_std**2 / 2s, d/dinv_std = var inv_std / s
            grad_statistic = grad_statistic * inv_std / statistic
            grad_var = grad_statistic * (0.5 * inv_std)
            grad_scale = torch.addcmul(grad_scale, grad_statistic, var)
    # normalized = deviation * inv_std; inv_std = (batch_var + eps)^-1/2, d/dbatch_var = -inv_std**3 / 2.
    count = var.shape[0]
    grad_inv_std = torch.addcmul(grad_scale, grad_shift, deviation).sum(0, keepdim=True)
    grad_batch_var = grad_inv_std * inv_std.pow(3) * (-0.5 / count)  # over count: batch_var's means
    grad_deviation = grad_shift * inv_std
    # deviation = mean_cm - batch_mean; batch_var's own term in batch_mean, -2 mean_n(deviation), is 0.
    grad_mean = torch.addcmul(grad_deviation - grad_deviation.mean(0, keepdim=True), deviation, grad_batch_var,
                              value=2)
    grad_var = grad_var + grad_batch_var
    if params.center_weight is not None:
        center = saved["center"]
        grad_center_weight = (grad_mean * center).sum(0)
        grad_center = grad_mean * params.center_weight
        if options.centering_stat == "mu_c":
            grad_mean = grad_mean + grad_center
        else:  # center = sqrt(var + eps)
            grad_var = torch.addcdiv(grad_var, grad_center, center, value=0.5)
    return grad_mean, grad_var, Parameters(grad_weight, grad_bias, grad_center_weight, grad_scale_weight,
                                           grad_scale_bias)


def _channel_path(x, params, running, options, fused):
    """``Y = A * (X - mean) + B`` per (n, c): a moments pass and one elementwise pass.

    ``fused``: eager without autograd, ``_fused_moments`` and ``_fused_output``; otherwise plain
    ops, differentiable to any order and traceable.
    """
    if fused:
        mean, var, centred = _fused_moments(x)
    else:
        mean, var = _instance_moments(x)
    scale, shift, batch_mean, batch_var = _channel_coefficients(mean, var, params, running, options)
    y = _fused_output(x, scale, shift, mean, centred) if fused else torch.addcmul(shift - scale * mean, x, scale)
    return y, batch_mean.detach(), batch_var.detach()


def _instance_moments(x):
    """Per-(n, c) mean and biased variance of x (N, C, S), plain ops, differentiable to any order."""
    var, mean = torch.var_mean(x, -1, correction=0, keepdim=True)
    return mean, var


def _per_channel(vector, dtype):
    """A (C,) vector as (C, 1), broadcasting over (N, C, S), in the compute ``dtype``."""
    return vector.reshape(-1, 1).to(dtype)


def _per_channel_parameters(params, dtype):
    """``Parameters`` of (C,) vectors or None as (C, 1) tensors in ``dtype`` (``_per_channel``)."""
    return Parameters(*(None if p is None else _per_channel(p, dtype) for p in params))


def _empty_batch(input, params):
    """What ``F.batch_norm`` returns for an input without elements: an empty copy.

    As ATen's, it is connected to the parameters (by their first element, a no-op on no
    elements), so their gradients are zeros rather than None; the running statistics stay.
    """
    y = input.clone()
    for param in params:
        if param is not None:
            y = y + param[0]
    return y


def _is_tracing():
    """Whether a tracer records this call: it gets plain ops.

    ``torch.compile``, ``torch.export`` and the dynamo ONNX exporter are compiling; ``jit.trace``
    and the TorchScript ONNX exporter are tracing. (``torch.onnx.is_in_onnx_export`` would import
    ``torch.onnx`` on the first call.)
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class _ChannelRBN(torch.autograd.Function):
    """The channel-statistics form with a hand-written backward over the big tensor (training).

    Forward: two reading passes for the moments (``_fused_moments``) and one writing ``Y``
    (``_fused_output``). Backward: one fused reduction pass (``_instance_gradient_sums``: sum dY
    and sum dY * (X - mean) per (n, c)) and one elementwise pass plus one in-place pass for dX
    (``_input_gradient``). The (N, C)-sized coefficient graph is differentiated by hand
    (``_coefficient_gradients``): autograd's graph of its ~60 small ops cost more than the big
    passes on small inputs. It saves the input and per-(n, c) vectors, as BatchNorm does.
    Double backward (``create_graph=True``) differentiates the plain-op form instead,
    recomputed from the saved input.

    ``apply(x, running, options, *params)``: the five ``Parameters`` ((C,) vectors or None, as
    given) go positionally, so that autograd sees them as inputs; batch statistics only.
    """

    @staticmethod
    def forward(ctx, x, running, options, *params):
        mean, var, centred = _fused_moments(x)
        saved = {}
        channel_params = _per_channel_parameters(params, x.dtype)
        scale, shift, batch_mean, batch_var = _channel_coefficients(mean, var, channel_params, running, options,
                                                                    saved)
        # save_for_backward (not ctx attributes): saved-tensor hooks see the (N, C) vectors too.
        ctx.save_for_backward(x, *params, mean, var, scale, *saved.values())
        ctx.saved_names = tuple(saved)
        # No instance within _ONE_PASS_RATIO is beyond _CANCELLATION_RATIO: the backward skips its test.
        ctx.config = (running, options, centred is not None)
        y = _fused_output(x, scale, shift, mean, centred)
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    def backward(ctx, dy, _batch_mean_grad, _batch_var_grad):
        x, *params = ctx.saved_tensors[:1 + len(Parameters._fields)]
        running, options, far_means = ctx.config
        needs = ctx.needs_input_grad[:1] + ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain-op form
            wanted = [t for t, need in zip((x, *params), needs) if need]
            y = _channel_path(x, _per_channel_parameters(params, x.dtype), running, options, fused=False)[0]
            found = iter(torch.autograd.grad(y, wanted, dy, create_graph=True, allow_unused=True))
            grad_x, *grad_params = (next(found) if need else None for need in needs)
            return (grad_x, None, None, *grad_params)
        mean, var, scale, *intermediates = ctx.saved_tensors[1 + len(params):]
        saved = dict(zip(ctx.saved_names, intermediates))
        grad_scale, grad_shift = _instance_gradient_sums(dy, x, mean)
        grad_mean, grad_var, grad_params = _coefficient_gradients(grad_scale, grad_shift, var,
                                                                  _per_channel_parameters(params, x.dtype), options,
                                                                  saved)
        # Gradients of the (C,) parameters as given, in their dtype.
        grad_params = [grad.view(p.shape).to(p.dtype) if need else None
                       for grad, p, need in zip(grad_params, params, needs[1:])]
        if not needs[0]:
            return (None, None, None, *grad_params)
        # A is per channel only without scaling calibration.
        grad_x = _input_gradient(dy, x, mean, var, scale.expand_as(mean), grad_shift, grad_mean, grad_var,
                                 far_means)
        return (grad_x, None, None, *grad_params)


def _fused_moments(x):
    """Per-(n, c) mean and biased variance of x (N, C, S), and ``x - mean`` or None; eager, no autograd.

    Two reading passes, as BatchNorm's: the mean by ``sum`` (pairwise), then ``sum (x - mean) x``
    by BatchNorm's backward reduction over the (1, N*C, S) view (``dY = X``, unit invstd). That is
    the sum of squared deviations plus ``mean * sum (x - mean)``, whose rounding costs
    ``eps * (mean / std)**2`` of the variance: within ``_ONE_PASS_RATIO`` that is 16 ulps. An
    instance beyond it (or with no spread) takes the exact form, the squared norm of ``x - mean``,
    whose buffer is returned for the caller to turn into the output in place. These kernels are
    vectorised; BatchNorm's statistics kernel (``batch_norm_update_stats``, scalar loops in
    float64) measured 2.5x slower on CPU here, ``var_mean`` (Welford) 8x.
    """
    count = x.shape[-1]
    mean = x.sum(-1, keepdim=True).div_(count)
    grad_scale, _ = _instance_gradient_sums(x, x, mean, bias=False)
    var = grad_scale.div_(count)
    if not bool((mean.square() > _ONE_PASS_RATIO**2 * var).any()):
        return mean, var, None
    centred = torch.sub(x, mean)
    var = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_().div_(count)
    return mean, var, centred


def _fused_output(x, scale, shift, mean, centred):
    """``Y = scale * (x - mean) + shift`` after ``_fused_moments``: in place into its ``centred``
    (``x - mean``) where it took the exact form, else ``_affine``. Eager, no autograd."""
    if centred is None:
        return _affine(x, scale, shift, mean)
    return torch.addcmul(shift, centred, scale, out=centred)


def _affine(x, scale, shift, mean):
    """``scale * (x - mean) + shift`` per (n, c) of x (N, C, S), into a new tensor.

    Computes ``x * scale + (shift - mean * scale)``: up to ``_TWO_PASS_VALUES`` values in two
    vectorised passes, beyond them in one, by BatchNorm's inference kernel over the (1, N*C, S)
    view with unit variance and eps 0 (``addcmul`` with two broadcast (n, c) operands runs a
    scalar loop on CPU). ``scale``, ``shift``, ``mean`` broadcast to (N, C, 1).
    """
    if x.numel() <= _TWO_PASS_VALUES:
        return x.mul(scale).add_(torch.addcmul(shift, mean, scale, value=-1))
    rows = x.shape[0] * x.shape[1]

    def per_row(vector):
        return vector.expand(*x.shape[:2], 1).reshape(rows)

    unit = torch.ones(rows, dtype=x.dtype, device=x.device)
    # Written through a view into a tensor of x's shape: returned from an autograd.Function, a
    # view made inside it could not be modified in place (ReLU(inplace=True) after the layer).
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    torch.ops.aten.native_batch_norm.out(x.reshape(1, rows, x.shape[-1]), per_row(scale), per_row(shift),
                                         per_row(mean), unit, False, 0.0, 0.0, out=y.view(1, rows, x.shape[-1]),
                                         save_mean=x.new_empty(0), save_invstd=x.new_empty(0))
    return y


def _instance_gradient_sums(dy, x, mean, bias=True):
    """Per-(n, c) ``sum dY * (X - mean)`` and ``sum dY`` (None without ``bias``) of (N, C, S) tensors in one pass.

    BatchNorm's backward kernel over the (1, N*C, S) view with unit invstd returns them as
    grad_weight and grad_bias. Returns them shaped as ``mean``.
    """
    rows = mean.numel()
    _, grad_scale, grad_shift = torch.ops.aten.native_batch_norm_backward(
        dy.reshape(1, rows, -1), x.reshape(1, rows, -1), None, None, None, mean.reshape(rows),
        torch.ones(rows, dtype=x.dtype, device=x.device), True, 0.0, [False, True, bias])
    return grad_scale.view_as(mean), None if grad_shift is None else grad_shift.view_as(mean)


def _input_gradient(dy, x, mean, var, scale, grad_shift, grad_mean, grad_var, far_means):
    """dX of ``Y = A * (X - mean) + B`` per (n, c) of x (N, C, S), given the coefficient graph's gradients.

    ``mean``, ``var``: the instances' moments; ``scale``: ``A``; ``grad_shift``: sum dY;
    ``grad_mean``, ``grad_var``: dL/dmean, dL/dvar through the coefficients, all (N, C, 1).
    dX = A dY + P (X - mean) + Q with P = 2 dvar / S, Q = (dmean - A sum dY) / S (-A sum dY is
    Y's own -mean): one vectorised pass for P (X - mean) + Q, one in place adding A dY.
    ``far_means``: False when every instance's mean is known to be within its std times
    ``_CANCELLATION_RATIO``, True to test.
    """
    count = x.shape[-1]
    slope = 2 * grad_var / count
    offset = (grad_mean - scale * grad_shift) / count
    # As BatchNorm's kernel, ``_affine`` computes P X + (Q - P mean), which loses eps * |P mean| to
    # cancellation against terms of size |P| std: where an instance's mean is far beyond its
    # spread (no spatial dims: std 0) X - mean goes first.
    if far_means and bool((mean.square() > _CANCELLATION_RATIO**2 * var).any()):
        grad_x = torch.addcmul(offset, x - mean, slope)
    else:
        grad_x = _affine(x, slope, offset, mean)
    return grad_x.addcmul_(scale, dy)
