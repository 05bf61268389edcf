"""BatchNorm -> RBN conversion of Jittor models."""

import jittor as jt

from .modules import RepresentativeBatchNorm


def convert_bn_to_rbn(module, *, predicate=None, preserve_output=True, **rbn_kwargs):
    """Replace every ``jittor.nn.BatchNorm`` in ``module`` by a :class:`RepresentativeBatchNorm`.

    Like PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place
    and the (possibly new) root is returned. Only layers for which
    ``predicate(qualified_name, layer)`` is true are converted (all when None). ``rbn_kwargs``
    go to the new layers (``centering_stat=...``, ``scaling=False``, ...). Jittor's
    ``BatchNorm1d/2d/3d`` are one class, so the new layers are the rank-agnostic
    ``RepresentativeBatchNorm``.

    Weight, bias, running statistics, eps, momentum, sync, ``is_train`` and the parameters'
    dtype carry over. ``jittor.nn.BatchNorm`` keeps no batch count (``num_batches_tracked``
    starts at 0) and its ``running_var`` holds biased variances: they are taken as they are.

    With ``preserve_output=True`` the converted model computes what the BatchNorm model
    computed: the calibrations start as no-ops (w_m = w_v = 0) and ``1 / sigmoid(w_b)``
    is folded into ``weight``. With ``False`` the new layers keep the BatchNorm's weight,
    so the scaling calibration multiplies every output by ``sigmoid(1) ~ 0.73`` at first,
    as when training an RBN model from the paper's initialization. Frozen BatchNorm weights
    (``stop_grad()``, e.g. for fine-tuning) convert the same way and stay frozen.

    Each new layer computes Eq. 12 (see :class:`RepresentativeBatchNorm`)::

        X_cm = X + w_m * K_m(X);  X_m = X_cm - E[X_cm];  X_s = X_m / sqrt(Var[X_cm] + eps)
        X_cs = X_s * sigmoid(w_v * K_s(X_s) + w_b);  Y = X_cs * gamma + beta

    Args:
        module (jittor.nn.Module): a network, or a single ``jittor.nn.BatchNorm``.
        predicate (callable, optional): ``predicate(qualified_name, layer) -> bool`` picks the
            layers to convert. Keyword-only. Default: None (all).
        preserve_output (bool): start the new layers where they compute the BatchNorm's
            output. Keyword-only. Default: True.
        **rbn_kwargs: keyword arguments of :class:`RepresentativeBatchNorm` for the new layers.

    Returns:
        jittor.nn.Module: ``module`` with its BatchNorms replaced (a new layer if ``module``
        itself is a BatchNorm).

    Shape:
        - Input and output: those of ``module``, unchanged.

    Example::

        >>> import jittor as jt
        >>> import rbn_jittor
        >>> net = jt.nn.Sequential(jt.nn.Conv2d(3, 4, 3), jt.nn.BatchNorm2d(4), jt.nn.ReLU())
        >>> net = net.eval()
        >>> x = jt.randn(3, 3, 7, 6)
        >>> want = net(x)
        >>> net = rbn_jittor.convert_bn_to_rbn(net)
        >>> type(net[1]).__name__
        'RepresentativeBatchNorm'
        >>> bool(((net(x) - want).abs().max() < 1e-5).item())
        True
    """
    return _convert(module, "", predicate, preserve_output, rbn_kwargs)


def _convert(module, name, predicate, preserve_output, rbn_kwargs):
    """A new RBN if ``module`` is a BatchNorm to convert, else ``module`` with its children converted."""
    if isinstance(module, jt.nn.BatchNorm) and (predicate is None or predicate(name, module)):
        return _rbn_from_bn(module, preserve_output, rbn_kwargs)
    for child_name, child in list(module.named_children()):
        new = _convert(child, f"{name}.{child_name}" if name else child_name, predicate,
                       preserve_output, rbn_kwargs)
        if new is not child:
            module.add_module(child_name, new)
    return module


def _rbn_from_bn(bn, preserve_output, rbn_kwargs):
    kwargs = dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, is_train=bn.is_train,
                  sync=bn.sync)
    kwargs.update(rbn_kwargs)
    rbn = RepresentativeBatchNorm(bn.num_features, **kwargs)
    if isinstance(bn.weight, jt.Var) and bn.weight.dtype == "float64":
        rbn.float64()
    scaled = preserve_output and rbn.scale_bias is not None
    if scaled and not (bn.affine and rbn.affine):
        raise ValueError("preserve_output=True needs affine BatchNorm and RBN layers to fold "
                         "1/sigmoid(scale_bias) into weight (got a layer without affine); "
                         "pass preserve_output=False or scaling=False")
    if rbn.affine and bn.affine:
        weight = bn.weight / jt.sigmoid(rbn.scale_bias) if scaled else bn.weight
        rbn.weight.update(weight.cast(rbn.weight.dtype))
        rbn.bias.update(bn.bias.cast(rbn.bias.dtype))
        for name in ("weight", "bias"):  # a frozen BatchNorm (fine-tuning) stays frozen
            if getattr(bn, name).is_stop_grad():
                getattr(rbn, name).stop_grad()
    if rbn.track_running_stats:
        rbn.running_mean.update(bn.running_mean.cast(rbn.running_mean.dtype))
        rbn.running_var.update(bn.running_var.cast(rbn.running_var.dtype))
    return rbn
