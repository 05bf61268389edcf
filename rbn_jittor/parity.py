"""The shared parity harness's adapter for Jittor (see ``rbn_reference.parity``)."""

import jittor as jt

from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d
from .state_dict import load_numpy_state_dict, state_dict_to_numpy

FRAMEWORK = "jittor"

LAYERS = {2: RepresentativeBatchNorm1d, 3: RepresentativeBatchNorm1d,
           4: RepresentativeBatchNorm2d, 5: RepresentativeBatchNorm3d}


def version():
    """The Jittor version the parity report names.

    Example::

        >>> from rbn_jittor.parity import version
        >>> version().startswith("1.")
        True
    """
    return jt.__version__


def run_module(x, params, state, dy, *, training, momentum, eps, centering_stat, scaling_stat, steps):
    """Build the layer for ``x.ndim``, call it ``steps`` times, differentiate the last call.

    Jittor's momentum convention is PyTorch's, so ``momentum`` passes through. Eval mode is
    ``is_train=False`` rather than ``eval()``, which would stop the parameters' gradients.
    """
    # float64 stays float64 only with this flag off (jt.array would convert it to float32)
    with jt.flag_scope(auto_convert_64_to_32=0):
        layer = LAYERS[x.ndim](
            x.shape[1], eps=eps, momentum=momentum, affine="weight" in params,
            is_train=training, track_running_stats=state is not None,
            centering="center_weight" in params, scaling="scale_weight" in params,
            centering_stat=centering_stat, scaling_stat=scaling_stat)
        if x.dtype.name == "float64":
            layer.float64()
        load_numpy_state_dict(layer, {**params, **(state or {})})
        x_var, dy_var = jt.array(x), jt.array(dy)
        for _ in range(steps):
            y = layer(x_var)
        names = list(params)
        grads = jt.grad((y * dy_var).sum(), [x_var] + [getattr(layer, name) for name in names])
        arrays = state_dict_to_numpy(layer)
        return {
            "y": y.numpy(),
            "grads": {name: grad.numpy() for name, grad in zip(["x"] + names, grads)},
            "state": None if state is None else {name: arrays[name] for name in state},
        }
