"""MindSpore side of ``rbn.checkpoint``: checkpoint files and whole-model glue.

Every framework's ``models/porting.py`` offers the same names: ``read``/``write`` (a file
as framework-named NumPy arrays), ``to_canonical``/``from_canonical`` (names),
``set_mode``, ``logits``, ``sgd_step``, and the pieces ``models``, ``BatchNorm2d``,
``RepresentativeBatchNorm2d``, ``load_numpy_state_dict``, ``state_dict_to_numpy``.
Arrays cross frameworks as NumPy under canonical (PyTorch/torchvision) names. MindSpore's
differ mechanically: a norm layer's ``gamma``, ``beta``, ``moving_mean``,
``moving_variance`` are canonical ``weight``, ``bias``, ``running_mean``, ``running_var``;
``nn.Dense`` keeps ``weight``/``bias`` in torch's (out, in) layout and convolutions share
torch's layout.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .. import models  # noqa: F401  (the interface above)
from ..modules import RepresentativeBatchNorm2d  # noqa: F401
from ..state_dict import CANONICAL_NAMES, load_numpy_state_dict, state_dict_to_numpy  # noqa: F401

FRAMEWORK = "mindspore"
BatchNorm2d = nn.BatchNorm2d  # the baseline norm layer


def read(path):
    """A ``save_checkpoint`` file as framework-named arrays."""
    return {name: parameter.asnumpy() for name, parameter in ms.load_checkpoint(path).items()}


def write(path, arrays):
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(array)} for name, array in arrays.items()], path)


def to_canonical(arrays):
    renamed = {}
    for name, array in arrays.items():
        prefix, _, leaf = name.rpartition(".")
        renamed[f"{prefix}.{CANONICAL_NAMES[leaf]}" if prefix and leaf in CANONICAL_NAMES else name] = array
    return renamed


def from_canonical(arrays):
    # A norm layer is recognised by its running mean: its weight/bias are gamma/beta, while a
    # convolution's or a Dense's weight keeps its name.
    norm_prefixes = {name[:-len(".running_mean")] for name in arrays if name.endswith(".running_mean")}
    mindspore_names = {canonical: mindspore for mindspore, canonical in CANONICAL_NAMES.items()}
    renamed = {}
    for name, array in arrays.items():
        prefix, _, leaf = name.rpartition(".")
        renamed[f"{prefix}.{mindspore_names[leaf]}" if prefix in norm_prefixes and leaf in mindspore_names
                else name] = array
    return renamed


def set_mode(model, training):
    """Train or eval mode for the norm layers; dropout stays off so runs are deterministic."""
    model.set_train(training)
    for _, cell in model.cells_and_names():
        if isinstance(cell, nn.Dropout):
            cell.set_train(False)


def logits(model, x, training):
    set_mode(model, training)
    return model(ms.Tensor(x)).asnumpy()


def sgd_step(model, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy, in train mode."""
    set_mode(model, True)
    parameters = model.trainable_params()

    def loss(inputs, labels):
        return ops.cross_entropy(model(inputs), labels)

    grads = ms.grad(loss, grad_position=None, weights=parameters)(ms.Tensor(x), ms.Tensor(target.astype(np.int32)))
    for parameter, grad in zip(parameters, grads):
        parameter.set_data(parameter - lr * grad)
