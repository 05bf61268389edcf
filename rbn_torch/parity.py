"""Adapter of rbn_torch to the shared parity harness (rbn_reference.parity)."""

import numpy as np
import torch

from .convert import load_numpy_state_dict, state_dict_to_numpy
from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d

FRAMEWORK = "torch"

_LAYER_FOR_NDIM = {2: RepresentativeBatchNorm1d, 3: RepresentativeBatchNorm1d, 4: RepresentativeBatchNorm2d,
                   5: RepresentativeBatchNorm3d}


def version():
    return torch.__version__


def run_module(x, params, state, dy, *, training, momentum, eps, centering_stat, scaling_stat, steps):
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    layer = _LAYER_FOR_NDIM[x.ndim](
        x.shape[1], eps=eps, momentum=momentum, affine="weight" in params, track_running_stats=state is not None,
        dtype=dtype, centering="center_weight" in params, scaling="scale_weight" in params,
        centering_stat=centering_stat, scaling_stat=scaling_stat)
    load_numpy_state_dict(layer, {**params, **(state or {})})
    layer.train(training)
    inputs = torch.from_numpy(x).requires_grad_()
    for _ in range(steps):
        y = layer(inputs)
    named = dict(layer.named_parameters())
    grads = torch.autograd.grad(y, [inputs, *named.values()], torch.from_numpy(dy))
    return {
        "y": y.detach().numpy(),
        "grads": dict(zip(["x", *named], (grad.numpy() for grad in grads))),
        "state": None if state is None else {name: value for name, value in state_dict_to_numpy(layer).items()
                                             if name not in params},
    }
