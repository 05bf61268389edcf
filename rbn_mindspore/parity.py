"""Adapter of the shared parity harness (``rbn_reference.parity``) for MindSpore.

Runs the user-facing Cells in the current execution mode (PyNative by default; the tests
also run it under ``GRAPH_MODE``).
"""

import mindspore as ms
import numpy as np
from mindspore import Tensor

from rbn_reference.parity import NotSupported

from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d
from .state_dict import canonical_parameters, load_numpy_state_dict, state_dict_to_numpy

FRAMEWORK = "mindspore"
LAYERS = {2: RepresentativeBatchNorm1d, 3: RepresentativeBatchNorm1d, 4: RepresentativeBatchNorm2d,
          5: RepresentativeBatchNorm3d}


def version():
    """MindSpore's version, for the parity report's header.

    Returns:
        str, ``mindspore.__version__``.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from rbn_mindspore.parity import version
        >>> version().startswith("2.")
        True
    """
    return ms.__version__


def run_module(x, params, state, dy, *, training, momentum, eps, centering_stat, scaling_stat, steps):
    """One parity case (``rbn_reference.parity``'s adapter interface): the Cell of ``x``'s rank
    loaded with the canonical ``params``/``state``, ``steps`` calls in the given mode, each one
    differentiated against ``dy``, the last one's results returned. Returns ``{"y", "grads",
    "state"}`` as NumPy under canonical names. float16 input is computed with the float32 Cell
    (mixed precision); other dtypes raise ``NotSupported``."""
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise NotSupported(f"rbn_mindspore computes in float16, float32 or float64 (got {x.dtype})")
    layer = LAYERS[x.ndim](
        x.shape[1], eps=eps, momentum=None if momentum is None else 1.0 - momentum,
        affine="weight" in params, use_batch_statistics=True if state is None else None,
        dtype=ms.float64 if x.dtype == np.float64 else ms.float32,
        centering="center_weight" in params, scaling="scale_weight" in params,
        centering_stat=centering_stat, scaling_stat=scaling_stat)
    load_numpy_state_dict(layer, {**params, **(state or {})}, strict=state is not None)
    layer.set_train(training)
    inputs, upstream = Tensor(x), Tensor(dy)
    weights = layer.trainable_params()

    def objective(inputs):
        y = layer(inputs)
        return (y * upstream).sum(), y

    # Every step goes through the one gradient function (its forward updates the moving statistics
    # too): in GRAPH_MODE a plain call before it would compile a second graph for each case.
    step = ms.value_and_grad(objective, 0, weights, has_aux=True)
    for _ in range(steps):
        (_, y), (grad_x, grad_weights) = step(inputs)
    names = {id(param): name for name, param in canonical_parameters(layer).items()}
    grads = {"x": grad_x.asnumpy()}
    grads.update({names[id(weight)]: grad.asnumpy() for weight, grad in zip(weights, grad_weights)})
    arrays = state_dict_to_numpy(layer)
    new_state = None
    if state is not None:
        new_state = {name: arrays[name] for name in ("running_mean", "running_var", "num_batches_tracked")}
    return {"y": y.asnumpy(), "grads": grads, "state": new_state}
