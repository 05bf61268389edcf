"""Synchronized Representative BatchNorm: Eq. 12 with batch statistics over a process group.

``nn.SyncBatchNorm`` runs on CUDA only, and its converter rightly leaves RBN layers alone.
``SyncRepresentativeBatchNorm`` computes the batch moments of ``X_cm`` over every process of
a ``torch.distributed`` group with the group's own backend (gloo on CPU, nccl on CUDA):

- forward: one ``all_reduce`` of ``[count, count * mean, count * (var + mean^2)]`` per
  channel (``2C + 1`` numbers), each process's mean and variance taken about its own mean;
- backward: one ``all_reduce`` of the two per-channel gradient sums (``dL/dE``, ``dL/dV``).

Both run on every process of the group in every training step, also where a process holds
no samples (it contributes count 0), so that no process waits for another forever.
"""

import math
import warnings

import rbn_reference
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .functional import (_CHANNEL_STATISTICS, _channel_coefficients, _fused_moments, _fused_output,
                         _input_gradient, _instance_gradient_sums, _instance_statistic, _literal_path,
                         _update_running_stats)
from .modules import _RepresentativeBatchNorm

__all__ = ["SyncRepresentativeBatchNorm"]


class SyncRepresentativeBatchNorm(_RepresentativeBatchNorm):
    r"""Representative BatchNorm whose batch statistics span a process group, like ``nn.SyncBatchNorm``.

    .. math::

        X_{cm} = X + w_m \odot K_m, \quad
        X_m = X_{cm} - \mathrm{E}[X_{cm}], \quad
        X_s = \frac{X_m}{\sqrt{\mathrm{Var}[X_{cm}] + \epsilon}}, \quad
        X_{cs} = X_s \odot \sigma(w_v \odot K_s + w_b), \quad
        Y = X_{cs} \odot \gamma + \beta

    In training, :math:`\mathrm{E}` and :math:`\mathrm{Var}` are taken over the batch of every
    process in ``process_group`` together, each shard weighted by its number of values (shards
    may differ in size, or be empty); the instance statistics :math:`K_m`, :math:`K_s` stay per
    sample. The running statistics get the global batch mean and the unbiased global variance.
    In eval mode, with a world size of 1, or without an initialized process group, the layer
    computes locally, exactly as :class:`RepresentativeBatchNorm2d` does. Parameters, buffers
    and state dicts are those of ``RepresentativeBatchNorm1d/2d/3d``.

    Args:
        num_features: :math:`C` from an expected input of size :math:`(N, C, *)`.
        eps: added to the variance for numerical stability. Default: ``1e-5``
        momentum: the factor of the new batch value in the running statistics, or ``None``
            for a cumulative average. Default: ``0.1``
        affine: learnable ``weight`` (:math:`\gamma`) and ``bias`` (:math:`\beta`). Default: ``True``
        track_running_stats: keep ``running_mean``/``running_var``. Default: ``True``
        process_group: the group that shares the statistics; ``None`` is the default
            (world) group. Default: ``None``
        device, dtype: of the parameters and buffers. Default: ``None``
        bias: a learnable ``bias`` when ``affine`` (keyword only). Default: ``True``
        centering: centering calibration, Eq. 5, parameter ``center_weight`` (:math:`w_m`).
            Default: ``True``
        scaling: scaling calibration, Eq. 9, parameters ``scale_weight`` (:math:`w_v`) and
            ``scale_bias`` (:math:`w_b`). Default: ``True``
        centering_stat: :math:`K_m`, one of ``"mu_c"``, ``"sigma_c"``, ``"mu_s"``,
            ``"sigma_s"`` (Table 3). Default: ``"mu_c"``
        scaling_stat: :math:`K_s`, the same four. Default: ``"mu_c"``

    Shape:
        - Input: :math:`(N, C, *)` with 0 to 3 spatial dims (2D to 5D); ``N`` may differ
          between processes and be 0 on some.
        - Output: :math:`(N, C, *)` (same shape as input)

    Example::

        >>> import torch
        >>> from rbn_torch import RepresentativeBatchNorm2d, SyncRepresentativeBatchNorm
        >>> layer = SyncRepresentativeBatchNorm(8)  # no process group here: computes locally
        >>> layer(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), RepresentativeBatchNorm2d(8))
        >>> net = SyncRepresentativeBatchNorm.convert_sync_batchnorm(net)
        >>> type(net[1]).__name__
        'SyncRepresentativeBatchNorm'
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, *, bias=True, centering=True, scaling=True,
                 centering_stat="mu_c", scaling_stat="mu_c"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         centering=centering, scaling=scaling, centering_stat=centering_stat,
                         scaling_stat=scaling_stat)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if not 2 <= input.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input (got {input.dim()}D input)")

    def forward(self, input):
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {input.shape[1]})")
        # nn.BatchNorm's bookkeeping in training mode (the only mode that synchronizes).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        params = rbn_reference.Parameters(self.weight, self.bias, self.center_weight, self.scale_weight,
                                          self.scale_bias)
        return _sync_representative_batch_norm(input, *running, params, factor, self.eps, self.centering_stat,
                                               self.scaling_stat, group)

    def _sync_group(self):
        """The process group to synchronize over, or None where the layer computes locally."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = dist.group.WORLD if self.process_group is None else self.process_group
        return group if dist.get_world_size(group) > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Replace every ``RepresentativeBatchNorm1d/2d/3d`` in ``module`` by a ``SyncRepresentativeBatchNorm``.

        Modelled on ``nn.SyncBatchNorm.convert_sync_batchnorm``: the new layers share the old
        ones' parameters (so ``requires_grad`` and optimizer references carry over) and buffers,
        and keep eps, momentum, the training flag and the calibration settings. A
        ``SyncRepresentativeBatchNorm`` is rebuilt too, with the new ``process_group``. Plain
        BatchNorm layers are left alone (``nn.SyncBatchNorm.convert_sync_batchnorm`` takes them).

        Args:
            module: the network, or a single RBN layer.
            process_group: the group that shares the statistics; ``None`` is the world group.
                Default: ``None``

        Returns:
            ``module`` with its RBN layers replaced, or the new layer if ``module`` is one.

        Example::

            >>> import torch
            >>> from rbn_torch import RepresentativeBatchNorm1d, SyncRepresentativeBatchNorm
            >>> layer = RepresentativeBatchNorm1d(4, scaling_stat="sigma_c").eval()
            >>> sync = SyncRepresentativeBatchNorm.convert_sync_batchnorm(layer)
            >>> sync.scaling_stat, sync.training, sync.weight is layer.weight
            ('sigma_c', False, True)
        """
        converted = module
        if isinstance(module, _RepresentativeBatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group, bias=module.bias is not None,
                            centering=module.centering, scaling=module.scaling,
                            centering_stat=module.centering_stat, scaling_stat=module.scaling_stat)
            with torch.no_grad():
                for name in rbn_reference.PARAM_NAMES:
                    if getattr(module, name) is not None:
                        setattr(converted, name, getattr(module, name))
            for name in rbn_reference.STATE_NAMES:
                setattr(converted, name, getattr(module, name))
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


def _sync_representative_batch_norm(input, running_mean, running_var, params, momentum, eps, centering_stat,
                                    scaling_stat, group):
    """Training-mode Eq. 12 of ``input`` with batch moments over ``group``; updates the running stats."""
    world_size = dist.get_world_size(group)
    rbn_reference.check_input(input.shape, input.dtype, input.is_floating_point(), uses_batch_statistics=True,
                              processes=world_size)
    channels = input.shape[1]
    # As representative_batch_norm: half precision computed in float32, returned in its own dtype.
    compute_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    # An explicit size: reshape(N, C, -1) is ambiguous for an empty shard.
    x = input.reshape(input.shape[0], channels, math.prod(input.shape[2:])).to(compute_dtype)
    params = rbn_reference.Parameters(*(None if p is None else p.reshape(channels, 1).to(compute_dtype)
                                        for p in params))
    stats = (centering_stat if params.center_weight is not None else "mu_c",
             scaling_stat if params.scale_weight is not None else "mu_c")
    if stats[0] in _CHANNEL_STATISTICS and stats[1] in _CHANNEL_STATISTICS:
        y, batch_mean, batch_var, count = _SyncChannelRBN.apply(x, eps, stats, group, *params)
    else:
        y, batch_mean, batch_var, count = _sync_literal_path(x, params, eps, stats, group)
    if running_mean is not None:
        _update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum)
    return y.reshape(input.shape).to(input.dtype)


def _sync_literal_path(x, params, eps, stats, group):
    """Eq. 12 step by step (spatial statistics), plain autograd through the moments' all_reduce."""
    x_cm = x
    if params.center_weight is not None:
        x_cm = x + params.center_weight * _instance_statistic(stats[0], x, eps)
    if x_cm.numel():
        local_var, local_mean = torch.var_mean(x_cm, (0, 2), correction=0, keepdim=True)
    else:  # an empty shard contributes nothing, yet keeps the all_reduce in its graph for backward
        local_mean = local_var = x_cm.sum((0, 2), keepdim=True)
    batch_mean, batch_var, count = _AllReduceMoments.apply(local_mean, local_var, x.shape[0] * x.shape[2], group)
    # The centering calibration is applied above; _literal_path standardizes with the merged moments.
    # It also takes the shard's own moments, which it ignores here (one more pass over x_cm, and
    # a "degrees of freedom" warning for an empty shard).
    with warnings.catch_warnings():
        if not x_cm.numel():
            warnings.simplefilter("ignore", UserWarning)
        y = _literal_path(x_cm, params._replace(center_weight=None), (batch_mean, batch_var),
                          rbn_reference.Options(eps, *stats))[0]
    return y, batch_mean.detach(), batch_var.detach(), count


class _AllReduceMoments(torch.autograd.Function):
    """Batch mean ``E`` and biased variance ``V`` over a group from each process's ``n``, mean, variance.

    Forward: one ``all_reduce`` (sum) of ``[n, n * mean, n * (var + mean^2)]``, in float64.
    Each process's variance is about its own mean (two-pass, stable), so only the spread of
    the processes' means goes through a sum of squares, whose cancellation costs
    ``eps_64 * (mean / std)^2`` relative in float64: 1e-8 at a mean of 1e4 stds, far below a
    float32 input's own rounding of ``eps_32 * mean / std``.
    Backward: one ``all_reduce`` of ``[dL/dE, dL/dV]`` (every process's loss depends on them);
    then ``d mean = n / N * (dE + 2 dV (mean - E))`` and ``d var = n / N * dV``, in deviations
    from ``E`` again, not in raw squares.
    """

    @staticmethod
    def forward(ctx, mean, var, count, group):
        local = torch.zeros(2 * mean.numel() + 1, dtype=torch.float64, device=mean.device)
        mean64 = mean.detach().reshape(-1).to(torch.float64)
        if count:  # an empty shard's moments are NaN: it sends zeros, and still joins
            local[0] = count
            var64 = var.detach().reshape(-1).to(torch.float64)
            local[1:].view(2, -1).copy_(torch.stack([count * mean64, count * (var64 + mean64.square())]))
        dist.all_reduce(local, group=group)
        total = round(local[0].item())
        if total < 2:  # every process sees the same total, so all of them raise
            raise ValueError(f"Expected more than 1 value per channel when training, got {total} over "
                             f"{dist.get_world_size(group)} processes")
        batch_mean, square = local[1:].view(2, -1) / total
        ctx.group, ctx.weight = group, count / total
        ctx.save_for_backward(mean64 - batch_mean)
        batch_var = (square - batch_mean.square()).clamp_min(0)
        return batch_mean.view_as(mean).to(mean.dtype), batch_var.view_as(var).to(var.dtype), total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean, grad_var, _count):
        grads = torch.cat([grad_mean.reshape(-1), grad_var.reshape(-1)]).to(torch.float64)
        dist.all_reduce(grads, group=ctx.group)
        grad_batch_mean, grad_batch_var = grads.view(2, -1)
        (deviation,) = ctx.saved_tensors
        grad_local_mean = ctx.weight * (grad_batch_mean + 2 * grad_batch_var * deviation)
        grad_local_var = ctx.weight * grad_batch_var
        if not ctx.weight:  # the empty shard's deviation is NaN; its share of the gradient is 0
            grad_local_mean = torch.zeros_like(grad_local_mean)
        return (grad_local_mean.view_as(grad_mean).to(grad_mean.dtype),
                grad_local_var.view_as(grad_var).to(grad_var.dtype), None, None)


class _SyncChannelRBN(torch.autograd.Function):
    """The channel-statistics form (``Y = A * (X - mean) + B`` per (n, c)) with merged batch moments.

    As ``functional._ChannelRBN`` (and with its helpers): one moments pass and one elementwise
    pass forward; backward one reduction pass and the input gradient, autograd only on the
    (N, C)-sized coefficient graph, which holds ``_AllReduceMoments`` (its backward is this
    layer's one backward ``all_reduce``). The graph runs on every process, an empty shard's
    included. Double backward is not supported (as ``nn.SyncBatchNorm``).
    """

    @staticmethod
    def forward(ctx, x, eps, stats, group, *params):
        if x.numel():
            *moments, centred = _fused_moments(x)
        else:  # an empty shard: no values, but the same coefficient graph, of N = 0 rows
            moments, centred = [x.new_zeros(x.shape[0], x.shape[1], 1) for _ in range(2)], x.clone()
        mean, var = (moment.requires_grad_() for moment in moments)
        params = rbn_reference.Parameters(*(None if p is None else p.detach().requires_grad_(p.requires_grad)
                                            for p in params))
        with torch.enable_grad():
            # With running=None the coefficients' batch moments are this shard's, about its own mean.
            options = rbn_reference.Options(eps, *stats)
            local_mean, local_var = _channel_coefficients(mean, var, params, None, options)[2:]
            batch_mean, batch_var, count = _AllReduceMoments.apply(local_mean, local_var,
                                                                   x.shape[0] * x.shape[2], group)
            scale, shift, _, _ = _channel_coefficients(mean, var, params, (batch_mean, batch_var), options)
            scale = scale.expand_as(shift)  # per channel only without scaling calibration
        ctx.save_for_backward(x)
        ctx.graph = (scale, shift, mean, var, params)
        y = _fused_output(x, scale.detach(), shift.detach(), mean.detach(), centred)
        batch_mean, batch_var = batch_mean.detach(), batch_var.detach()
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var, count

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _batch_mean, _batch_var, _count):
        (x,) = ctx.saved_tensors
        scale, shift, mean, var, params = ctx.graph
        scale_value, mean_value = scale.detach(), mean.detach()
        if x.numel():
            grad_scale, grad_shift = _instance_gradient_sums(dy, x, mean_value)
        else:
            grad_scale = grad_shift = torch.zeros_like(shift)
        wanted = [t for t in (mean, var, *params) if t is not None and t.requires_grad]
        # retain_graph: the small graph lives as long as ctx, for a retain_graph=True outer backward.
        found = torch.autograd.grad((scale, shift), wanted, (grad_scale, grad_shift), retain_graph=True,
                                    allow_unused=True)
        found = {id(t): grad for t, grad in zip(wanted, found)}
        grad_params = [None if p is None else found.get(id(p)) for p in params]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_mean, grad_var = (torch.zeros_like(t) if found[id(t)] is None else found[id(t)] for t in (mean, var))
            grad_x = _input_gradient(dy, x, mean_value, var.detach(), scale_value, grad_shift, grad_mean, grad_var,
                                     far_means=True)
        return (grad_x, None, None, None, *grad_params)

