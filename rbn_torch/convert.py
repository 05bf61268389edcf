"""Turning BatchNorm networks into RBN networks, and state dicts as canonical NumPy arrays."""

import numpy as np
import torch
from torch import nn

from rbn_reference import check_state_dict, fit_shape

from .modules import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d,
                      _RepresentativeBatchNorm)

__all__ = ["convert_bn_to_rbn", "state_dict_to_numpy", "load_numpy_state_dict"]

_RBN_FOR_BN = ((nn.BatchNorm1d, RepresentativeBatchNorm1d), (nn.BatchNorm2d, RepresentativeBatchNorm2d),
               (nn.BatchNorm3d, RepresentativeBatchNorm3d))


def convert_bn_to_rbn(module, *, predicate=None, preserve_output=True, **rbn_kwargs):
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` by the RBN of the same dimensionality.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``: returns ``module`` with its children
    replaced (or the new layer if ``module`` itself is a BatchNorm). Only layers for which
    ``predicate(qualified_name, layer)`` is true are converted (default: all), e.g. one stage
    of a ResNet as in Table 4. ``rbn_kwargs`` (``centering``, ``scaling``, ``centering_stat``,
    ``scaling_stat``) go to every new layer. Weight, bias, running statistics,
    ``num_batches_tracked``, eps, momentum, device, dtype, ``requires_grad`` and the training
    flag carry over.

    ``preserve_output=True`` makes the converted network compute what it computed before (to
    rounding), in training and eval mode: centering calibration starts as a no-op (w_m = 0) and
    the constant gate ``sigmoid(w_b) = sigmoid(1)`` of the scaling calibration is divided
    out of ``weight``, so pretrained BatchNorm networks can be fine-tuned with RBN.
    ``preserve_output=False`` copies ``weight`` unchanged, which is the paper's
    initialisation: each converted layer's output starts scaled by ``sigmoid(1) ~ 0.73``.
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


def state_dict_to_numpy(module):
    """``module.state_dict()`` as NumPy arrays under canonical names (PyTorch's are canonical)."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}


def load_numpy_state_dict(module, arrays, *, strict=True):
    """Load canonical-name NumPy ``arrays`` into ``module``, checking every key first.

    Raises one ``rbn_reference.StateDictError`` (a ``KeyError`` and a ``ValueError``) listing
    every mis-shaped array and, unless ``strict=False``, every missing or unexpected key; nothing
    is loaded then. RBN parameters are also accepted in the authors' (1, C, 1, 1) shape.
    """
    expected = module.state_dict()
    rbn_parameters = {f"{prefix}.{name}" if prefix else name
                      for prefix, layer in module.named_modules() if isinstance(layer, _RepresentativeBatchNorm)
                      for name, _ in layer.named_parameters(recurse=False)}
    missing = set(expected) - set(arrays)
    unexpected = set(arrays) - set(expected)
    mis_shaped = {}
    tensors = {}
    for name in set(expected) & set(arrays):
        value = np.asarray(arrays[name])
        fitted = fit_shape(value, expected[name].shape, rbn_vector=name in rbn_parameters)
        if fitted is None:
            mis_shaped[name] = (tuple(expected[name].shape), value.shape)
        else:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(fitted))
    check_state_dict("state dict", missing, unexpected, mis_shaped, strict=strict)
    module.load_state_dict(tensors, strict=False)
    return module
