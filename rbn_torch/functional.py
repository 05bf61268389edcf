"""Representative Batch Normalization as a pure function, in the spirit of ``F.batch_norm``.

Two paths compute Eq. 12 of the paper:

- Channel statistics (``mu_c``/``sigma_c`` for both calibrations, or a calibration off):
  every step is an affine map per (n, c), so ``Y = A[n,c] * X + B'[n,c]`` where ``A``, ``B'``
  follow from the per-(n, c) mean and variance alone (docs/torch.md): one moments pass and
  one elementwise pass, BatchNorm's memory traffic. In eager mode with autograd a custom
  ``autograd.Function`` gives the backward BatchNorm's passes too; tracers (``torch.compile``,
  ``torch.export``, ``jit.trace``) record the same formula as plain differentiable ops,
  which inductor fuses itself.
- Spatial statistics (``mu_s``/``sigma_s``): Eq. 12 step by step, plain autograd.
"""

import rbn_reference
import torch

__all__ = ["representative_batch_norm"]

_CHANNEL_STATISTICS = ("mu_c", "sigma_c")


def representative_batch_norm(input, running_mean, running_var, weight=None, bias=None, center_weight=None,
                              scale_weight=None, scale_bias=None, training=False, momentum=0.1, eps=1e-5,
                              centering_stat="mu_c", scaling_stat="mu_c"):
    """Representative BatchNorm of ``input`` (N, C, *spatial), like ``F.batch_norm``.

    ``center_weight`` None switches centering calibration off; ``scale_weight`` and
    ``scale_bias`` None switch scaling calibration off; ``weight``/``bias`` None switch the
    affine transform off. ``momentum`` is the factor of the running-statistics update
    ``(1 - momentum) * old + momentum * batch`` (the caller turns a cumulative average into
    a factor, as ``nn.BatchNorm`` does). ``running_mean``/``running_var`` are updated in
    place when ``training``; when they are None the batch statistics are always used.
    float16/bfloat16 inputs are computed in float32 and returned in their own dtype.
    """
    _check_arguments(input, running_mean, running_var, weight, bias, center_weight, scale_weight, scale_bias,
                     training, centering_stat, scaling_stat)
    channels = input.shape[1]

    # Half precision: statistics in float32, as nn.BatchNorm does; the result in the input's dtype.
    compute_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    x = input.reshape(input.shape[0], channels, -1).to(compute_dtype)
    params = [None if p is None else p.reshape(channels, 1).to(compute_dtype)
              for p in (weight, bias, center_weight, scale_weight, scale_bias)]
    use_batch_stats = training or running_mean is None
    running = None
    if not use_batch_stats:
        running = [r.reshape(channels, 1).to(compute_dtype) for r in (running_mean, running_var)]
    stats = (centering_stat if center_weight is not None else "mu_c",
             scaling_stat if scale_weight is not None else "mu_c")

    if stats[0] in _CHANNEL_STATISTICS and stats[1] in _CHANNEL_STATISTICS:
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *params))
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            # Tracers (dynamo, torch.export, jit.trace) record plain ops; inductor fuses them.
            y, batch_mean, batch_var = _channel_path(x, params, running, eps, stats, _traced_moments)
        elif needs_grad:
            y, batch_mean, batch_var = _ChannelRBN.apply(x, running, eps, stats, *params)
        else:
            y, batch_mean, batch_var = _channel_path(x, params, running, eps, stats, _fused_moments)
    else:
        y, batch_mean, batch_var = _literal_path(x, params, running, eps, stats)

    if training and running_mean is not None:
        count = x.shape[0] * x.shape[2]
        _update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum)
    return y.reshape(input.shape).to(input.dtype)


def _check_arguments(input, running_mean, running_var, weight, bias, center_weight, scale_weight, scale_bias,
                     training, centering_stat, scaling_stat):
    """Raise the oracle's errors (same wording) for anything Eq. 12 cannot take."""
    rbn_reference.check_statistic("centering_stat", centering_stat)
    rbn_reference.check_statistic("scaling_stat", scaling_stat)
    rbn_reference.check_input(input.shape, input.dtype, input.is_floating_point(),
                              uses_batch_statistics=training or running_mean is None)
    rbn_reference.check_pairs({"scale_weight": scale_weight is not None, "scale_bias": scale_bias is not None})
    rbn_reference.check_channel_vectors(input.shape[1], {
        name: None if tensor is None else tuple(tensor.shape)
        for name, tensor in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                             ("bias", bias), ("center_weight", center_weight), ("scale_weight", scale_weight),
                             ("scale_bias", scale_bias))})


def _update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum):
    """``(1 - momentum) * old + momentum * batch`` in place, with the unbiased batch variance."""
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


def _literal_path(x, params, running, eps, stats):
    """Eq. 12 step by step on x of shape (N, C, S); any statistics; returns y and batch stats."""
    weight, bias, center_weight, scale_weight, scale_bias = params
    if center_weight is not None:
        x = x + center_weight * _instance_statistic(stats[0], x, eps)
    batch_var, batch_mean = torch.var_mean(x, (0, 2), correction=0, keepdim=True)
    mean, var = (batch_mean, batch_var) if running is None else running
    y = (x - mean) * torch.rsqrt(var + eps)
    if scale_weight is not None:
        y = y * torch.sigmoid(scale_weight * _instance_statistic(stats[1], y, eps) + scale_bias)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, batch_mean.detach(), batch_var.detach()


def _channel_coefficients(mean, var, params, running, eps, stats):
    """``A``, ``B`` of ``Y = A * (X - mean) + B`` from per-(n, c) moments (N, C, 1); batch stats.

    Centering calibration moves each instance's mean and keeps its variance, so the batch
    moments of ``X_cm`` follow from the per-instance ones (law of total variance).
    """
    weight, bias, center_weight, scale_weight, scale_bias = params
    mean_cm = mean
    if center_weight is not None:
        center = mean if stats[0] == "mu_c" else torch.sqrt(var + eps)
        mean_cm = mean + center_weight * center
    batch_mean = mean_cm.mean(0, keepdim=True)
    batch_var = var.mean(0, keepdim=True) + (mean_cm - batch_mean).square().mean(0, keepdim=True)
    centre, spread = (batch_mean, batch_var) if running is None else running
    inv_std = torch.rsqrt(spread + eps)
    shift = (mean_cm - centre) * inv_std  # the mean of X_s per instance
    scale = inv_std
    if scale_weight is not None:
        # K_s of X_s: its per-instance mean is ``shift``, its variance ``var * inv_std**2``.
        statistic = shift if stats[1] == "mu_c" else torch.sqrt(var * inv_std.square() + eps)
        gate = torch.sigmoid(scale_weight * statistic + scale_bias)
        scale = scale * gate
        shift = shift * gate
    if weight is not None:
        scale = scale * weight
        shift = shift * weight
    if bias is not None:
        shift = shift + bias
    return scale, shift, batch_mean, batch_var


def _channel_path(x, params, running, eps, stats, moments):
    """``Y = A * X + (B - A * mean)`` per (n, c): one moments pass and one elementwise pass."""
    mean, var = moments(x)
    scale, shift, batch_mean, batch_var = _channel_coefficients(mean, var, params, running, eps, stats)
    return torch.addcmul(shift - scale * mean, x, scale), batch_mean.detach(), batch_var.detach()


class _ChannelRBN(torch.autograd.Function):
    """The channel-statistics form with a hand-written backward over the big tensor.

    Forward: BatchNorm's moments kernel and one ``addcmul``, as ATen's CPU BatchNorm does.
    Backward: one fused reduction pass (BatchNorm's backward kernel gives sum dY and
    sum dY * (X - mean) per (n, c)) and two elementwise passes for dX. Only the (N, C)-sized
    coefficient graph is differentiated by autograd (it is kept in ``ctx``). It saves the
    input and per-(n, c) vectors, as BatchNorm does. Double backward (``create_graph=True``)
    differentiates the plain-op form instead, recomputed from the saved input.
    """

    @staticmethod
    def forward(ctx, x, running, eps, stats, *params):
        leaves = [moment.requires_grad_() for moment in _fused_moments(x)]
        leaves += [None if p is None else p.detach().requires_grad_(p.requires_grad) for p in params]
        with torch.enable_grad():
            scale, shift, batch_mean, batch_var = _channel_coefficients(
                leaves[0], leaves[1], leaves[2:], running, eps, stats)
            scale = scale.expand_as(shift)  # per channel only without scaling calibration
        ctx.save_for_backward(x, *params)
        ctx.graph = (scale, shift, leaves)
        ctx.config = (running, eps, stats)
        scale_value, mean_value = scale.detach(), leaves[0].detach()
        y = torch.addcmul(shift.detach() - scale_value * mean_value, x, scale_value)
        batch_mean, batch_var = batch_mean.detach(), batch_var.detach()
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    def backward(ctx, dy, _batch_mean_grad, _batch_var_grad):
        x, *params = ctx.saved_tensors
        running, eps, stats = ctx.config
        needs = ctx.needs_input_grad[:1] + ctx.needs_input_grad[4:]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain-op form
            wanted = [t for t, need in zip((x, *params), needs) if need]
            y = _channel_path(x, params, running, eps, stats, _traced_moments)[0]
            found = iter(torch.autograd.grad(y, wanted, dy, create_graph=True, allow_unused=True))
            grad_x, *grad_params = (next(found) if need else None for need in needs)
            return (grad_x, None, None, None, *grad_params)
        scale, shift, leaves = ctx.graph
        mean = leaves[0].detach()
        # BatchNorm's backward over (1, N*C, S) with unit invstd returns sum dY * (X - mean)
        # as grad_weight and sum dY as grad_bias, per (n, c), in one pass.
        rows = mean.numel()
        _, grad_scale, grad_shift = torch.ops.aten.native_batch_norm_backward(
            dy.reshape(1, rows, -1), x.reshape(1, rows, -1), None, None, None, mean.reshape(rows),
            torch.ones(rows, dtype=x.dtype, device=x.device), True, 0.0, [False, True, True])
        grad_scale, grad_shift = grad_scale.view_as(mean), grad_shift.view_as(mean)
        # In eval mode without affine and scaling, the scale is a constant of the small graph.
        outputs, grad_outputs = zip(*[(out, grad) for out, grad in ((scale, grad_scale), (shift, grad_shift))
                                      if out.requires_grad])
        wanted = [leaf for leaf in leaves if leaf is not None and leaf.requires_grad]
        # retain_graph: the small graph lives as long as ctx, for a retain_graph=True outer backward.
        found = torch.autograd.grad(outputs, wanted, grad_outputs, retain_graph=True, allow_unused=True)
        found = {id(leaf): grad for leaf, grad in zip(wanted, found)}
        grad_params = [None if leaf is None else found.get(id(leaf)) for leaf in leaves[2:]]
        if not needs[0]:
            return (None, None, None, None, *grad_params)
        grad_mean, grad_var = (torch.zeros_like(leaf) if found[id(leaf)] is None else found[id(leaf)]
                               for leaf in leaves[:2])
        # dX = A dY + P (X - mean) + Q with P = 2 dvar / S, Q = (dmean - A sum dY) / S
        # (-A sum dY is Y's own -mean); as BatchNorm's kernel, P X + (Q - P mean) in one pass.
        count = x.shape[-1]
        scale = scale.detach()
        slope = 2 * grad_var / count
        grad_x = torch.addcmul((grad_mean - scale * grad_shift) / count - slope * mean, x, slope)
        return (grad_x.addcmul_(scale, dy), None, None, None, *grad_params)


def _traced_moments(x):
    """Per-(n, c) mean and biased variance of x (N, C, S), differentiable to any order."""
    var, mean = torch.var_mean(x, -1, correction=0, keepdim=True)
    return mean, var


def _fused_moments(x):
    """Per-(n, c) mean and biased variance of x (N, C, S) by ATen's BatchNorm kernel, no autograd.

    Over the (1, N*C, S) view the BatchNorm statistics kernel is a vectorised two-pass; the
    eager ``var_mean`` kernel measured several times slower here.
    """
    mean, var = torch.batch_norm_update_stats(x.reshape(1, -1, x.shape[-1]), None, None, 0.0)
    return mean.view(*x.shape[:2], 1), var.view(*x.shape[:2], 1)
