"""Turning BatchNorm networks into RBN networks."""

import torch
from torch import nn

from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d

__all__ = ["convert_bn_to_rbn"]

_RBN_FOR_BN = ((nn.BatchNorm1d, RepresentativeBatchNorm1d), (nn.BatchNorm2d, RepresentativeBatchNorm2d),
               (nn.BatchNorm3d, RepresentativeBatchNorm3d))


def convert_bn_to_rbn(module, *, predicate=None, preserve_output=True, **rbn_kwargs):
    r"""Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` by the RBN of the same dimensionality.

    Like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`: returns ``module`` with its
    children replaced (or the new layer if ``module`` itself is a BatchNorm). Weight, bias,
    running statistics, ``num_batches_tracked``, eps, momentum, device, dtype, ``requires_grad``
    (frozen layers stay frozen) and the training flag carry over.

    The new layers compute Eq. 12:

    .. math::
        X_{cm} = X + w_m \odot K_m(X) \\
        X_m = X_{cm} - E[X_{cm}] \\
        X_s = X_m / \sqrt{Var[X_{cm}] + \epsilon} \\
        X_{cs} = X_s \odot \sigma(w_v \odot K_s(X_s) + w_b) \\
        Y = X_{cs} \odot \gamma + \beta

    At the paper's init (:math:`w_m = 0`, :math:`w_v = 0`, :math:`w_b = 1`) centering is a
    no-op and the scaling gate is the constant :math:`\sigma(1) \approx 0.73`.
    ``preserve_output=True`` divides that gate out of :math:`\gamma`, so that the converted
    network computes what it computed before (to rounding), in training and eval mode, and a
    pretrained BatchNorm network can be fine-tuned with RBN. ``preserve_output=False`` copies
    :math:`\gamma` unchanged (the paper's from-scratch init: outputs scaled by ~0.73).

    Args:
        module (nn.Module): a network, or one BatchNorm layer.
        predicate (callable, keyword-only): ``predicate(qualified_name, layer)`` picks the layers
            to convert, e.g. one stage of a ResNet as in Table 4. Default: None (all).
        preserve_output (bool, keyword-only): fold the initial gate into ``weight``. Needs an
            affine BatchNorm unless ``scaling=False``. Default: True.
        **rbn_kwargs: ``centering``, ``scaling``, ``centering_stat``, ``scaling_stat`` of every
            new layer.

    Returns:
        ``module``, converted in place (or the new layer).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from rbn_torch import convert_bn_to_rbn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> x = torch.randn(2, 3, 8, 8)
        >>> before = net(x)
        >>> net = convert_bn_to_rbn(net)
        >>> type(net[1]).__name__
        'RepresentativeBatchNorm2d'
        >>> torch.allclose(net(x), before, atol=1e-6)
        True
    """
    predicate = predicate or (lambda name, layer: True)
    return _convert(module, "", predicate, preserve_output, rbn_kwargs)


def _convert(module, name, predicate, preserve_output, rbn_kwargs):
    rbn_class = next((rbn for bn, rbn in _RBN_FOR_BN if isinstance(module, bn)), None)
    if rbn_class is not None and predicate(name, module):
        return _rbn_from_bn(module, rbn_class, preserve_output, rbn_kwargs)
    for child_name, child in module.named_children():
        qualified = f"{name}.{child_name}" if name else child_name
        converted = _convert(child, qualified, predicate, preserve_output, rbn_kwargs)
        if converted is not child:
            setattr(module, child_name, converted)
    return module


def _rbn_from_bn(bn, rbn_class, preserve_output, rbn_kwargs):
    reference = bn.weight if bn.affine else bn.running_mean
    if bn.affine and bn.bias is None:
        rbn_kwargs = {**rbn_kwargs, "bias": False}
    rbn = rbn_class(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                    device=None if reference is None else reference.device,
                    dtype=None if reference is None else reference.dtype, **rbn_kwargs)
    if preserve_output and rbn.scaling and not rbn.affine:
        raise ValueError("preserve_output=True needs an affine BatchNorm to fold the scaling gate into; "
                         "pass scaling=False or preserve_output=False")
    with torch.no_grad():
        if bn.affine:
            folded = preserve_output and rbn.scaling
            rbn.weight.copy_(bn.weight / torch.sigmoid(rbn.scale_bias) if folded else bn.weight)
            rbn.weight.requires_grad_(bn.weight.requires_grad)
        if bn.affine and bn.bias is not None:
            rbn.bias.copy_(bn.bias)
            rbn.bias.requires_grad_(bn.bias.requires_grad)
        if bn.track_running_stats:
            rbn.running_mean.copy_(bn.running_mean)
            rbn.running_var.copy_(bn.running_var)
            rbn.num_batches_tracked.copy_(bn.num_batches_tracked)
    rbn.train(bn.training)
    return rbn
