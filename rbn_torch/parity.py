"""Adapter of rbn_torch to the shared parity harness (rbn_reference.parity)."""

import numpy as np
import torch

from .state_dict import load_numpy_state_dict, state_dict_to_numpy
from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d

FRAMEWORK = "torch"

# The RBN layer for an input rank.
LAYERS = {2: RepresentativeBatchNorm1d, 3: RepresentativeBatchNorm1d, 4: RepresentativeBatchNorm2d,
                   5: RepresentativeBatchNorm3d}


def version():
    """The torch version the parity report names.

    Example::

        >>> from rbn_torch.parity import version
        >>> version().startswith("2.")
        True
    """
    return torch.__version__


def run_module(x, params, state, dy, *, training, momentum, eps, centering_stat, scaling_stat, steps):
    """One parity case through rbn_torch: the layer for ``x.ndim``, called ``steps`` times.

    The layer computes Eq. 12 (``X_cm = X + w_m*K_m``; ``X_m = X_cm - E[X_cm]``;
    ``X_s = X_m / sqrt(Var[X_cm] + eps)``; ``X_cs = X_s * sigmoid(w_v*K_s + w_b)``;
    ``Y = X_cs*gamma + beta``) on the harness's NumPy arrays; the last call is differentiated
    with upstream gradient ``dy``.

    Args:
        x (numpy.ndarray): (N, C, *) input, float32 or float64.
        params (dict): canonical name -> (C,) array; an absent name switches its part off.
        state (dict or None): running statistics and ``num_batches_tracked``, or None (untracked).
        dy (numpy.ndarray): upstream gradient, shaped as ``x``.
        training, momentum, eps, centering_stat, scaling_stat (keyword-only): the layer's options.
        steps (int, keyword-only): calls of the layer (running statistics over several steps).

    Returns:
        dict: ``y``, ``grads`` (``x`` and each parameter) and ``state`` (None when untracked), as arrays.

    Example::

        >>> import numpy as np
        >>> from rbn_torch.parity import run_module
        >>> x, dy = np.ones((2, 3, 4)) + np.arange(4), np.ones((2, 3, 4))
        >>> out = run_module(x, {"weight": np.ones(3), "bias": np.zeros(3)}, None, dy, training=True,
        ...                  momentum=0.1, eps=1e-5, centering_stat="mu_c", scaling_stat="mu_c", steps=1)
        >>> out["y"].shape, sorted(out["grads"])
        ((2, 3, 4), ['bias', 'weight', 'x'])
    """
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    layer = LAYERS[x.ndim](
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
