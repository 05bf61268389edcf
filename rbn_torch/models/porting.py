"""PyTorch side of ``rbn.checkpoint``: checkpoint files and whole-model glue.

Every framework's ``models/porting.py`` offers the same names: ``read``/``write`` (a file
as framework-named NumPy arrays), ``to_canonical``/``from_canonical`` (names),
``set_mode``, ``logits``, ``sgd_step``, and the pieces ``models``, ``BatchNorm2d``,
``RepresentativeBatchNorm2d``, ``load_numpy_state_dict``, ``state_dict_to_numpy``.
Arrays cross frameworks as NumPy under canonical (PyTorch/torchvision) names.
"""
import torch
from torch import nn

from .. import models  # noqa: F401  (the interface above)
from ..convert import load_numpy_state_dict, state_dict_to_numpy  # noqa: F401
from ..modules import RepresentativeBatchNorm2d  # noqa: F401

FRAMEWORK = "torch"
BatchNorm2d = nn.BatchNorm2d  # the baseline norm layer


def read(path):
    """A state dict file as framework-named arrays.

    Training scripts often save ``{"state_dict": ..., "epoch": ...}`` or ``{"model": ...}``:
    the state dict is taken from there.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    wrapped = [key for key in ("state_dict", "model") if isinstance(state, dict) and isinstance(state.get(key), dict)]
    if wrapped:
        state = state[wrapped[0]]
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict, got {type(state).__name__}")
    not_tensors = sorted(name for name, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"entries that are not tensors: {', '.join(not_tensors)}")
    return {name: value.numpy() for name, value in state.items()}


def write(path, arrays):
    torch.save({name: torch.from_numpy(array) for name, array in arrays.items()}, path)


def to_canonical(arrays):
    return dict(arrays)


def from_canonical(arrays):
    return dict(arrays)


def set_mode(model, training):
    """Train or eval mode for the norm layers; dropout stays off so runs are deterministic."""
    model.train(training)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()


def logits(model, x, training):
    set_mode(model, training)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def sgd_step(model, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy, in train mode."""
    set_mode(model, True)
    loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(target))
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= lr * parameter.grad
