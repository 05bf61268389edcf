"""Jittor side of ``rbn.checkpoint``: checkpoint files and whole-model glue.

Every framework's ``models/porting.py`` offers the same names: ``read``/``write`` (a file
as framework-named NumPy arrays), ``to_canonical``/``from_canonical`` (names),
``set_mode``, ``logits``, ``sgd_step``, and the pieces ``models``, ``BatchNorm2d``,
``RepresentativeBatchNorm2d``, ``load_numpy_state_dict``, ``state_dict_to_numpy``.
Arrays cross frameworks as NumPy under canonical (PyTorch/torchvision) names.
"""
import jittor as jt
import numpy as np
from jittor import nn

from rbn import safe_pickle

from .. import models  # noqa: F401  (the interface above)
from ..state_dict import load_numpy_state_dict, state_dict_to_numpy  # noqa: F401
from ..modules import RepresentativeBatchNorm2d  # noqa: F401

FRAMEWORK = "jittor"
BatchNorm2d = nn.BatchNorm2d  # the baseline norm layer


def read(path):
    """A ``jt.save``/``Module.save`` file (checksummed pickle) as framework-named arrays.

    Read by ``rbn.safe_pickle``, never ``jt.load``: a pickle can name any function to call, and
    only arrays, dicts and numbers are allowed here.
    """
    state = safe_pickle.load_jittor(path)
    if not isinstance(state, dict):
        raise ValueError(f"expected a dict of arrays, got {type(state).__name__}")
    state = {name: value.numpy() if isinstance(value, jt.Var) else value for name, value in state.items()}
    not_arrays = sorted(name for name, value in state.items() if not isinstance(value, np.ndarray))
    if not_arrays:
        raise ValueError(f"entries that are not arrays: {', '.join(not_arrays)}")
    return state


def write(path, arrays):
    jt.save(dict(arrays), path)


def to_canonical(arrays):
    return dict(arrays)


def from_canonical(arrays):
    return dict(arrays)


def set_mode(model, training):
    """Train or eval mode for the norm layers; dropout stays off so runs are deterministic.

    ``is_train`` is set directly: ``Module.eval()`` would also stop the parameters' gradients.
    """
    for module in model.modules():
        module.is_train = training and not isinstance(module, nn.Dropout)


def logits(model, x, training):
    set_mode(model, training)
    with jt.no_grad():
        return model(jt.array(x)).numpy()


def sgd_step(model, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy, in train mode."""
    set_mode(model, True)
    loss = nn.cross_entropy_loss(model(jt.array(x)), jt.array(target))
    parameters = [p for p in model.parameters() if not p.is_stop_grad()]
    for parameter, grad in zip(parameters, jt.grad(loss, parameters)):
        parameter.update(parameter - lr * grad)
    jt.sync_all()
