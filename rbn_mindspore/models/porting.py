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
    """A ``save_checkpoint`` file as framework-named arrays.

    Args:
        path (str): a ``mindspore.save_checkpoint`` file.

    Returns:
        dict, name -> ``numpy.ndarray``.

    Raises:
        ValueError: ``path`` is not a MindSpore checkpoint.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import os, tempfile
        >>> from mindspore import nn, save_checkpoint
        >>> from rbn_mindspore.models import porting
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "bn.ckpt")
        ...     save_checkpoint(nn.SequentialCell([nn.BatchNorm2d(2)]), path)
        ...     sorted(porting.read(path))
        ['0.beta', '0.gamma', '0.moving_mean', '0.moving_variance']
    """
    return {name: parameter.asnumpy() for name, parameter in ms.load_checkpoint(path).items()}


def write(path, arrays):
    """Save framework-named NumPy ``arrays`` as a ``mindspore.save_checkpoint`` file at ``path``.

    Args:
        path (str): the file to write.
        arrays (dict): name -> ``numpy.ndarray``.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from rbn_mindspore.models import porting
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "w.ckpt")
        ...     porting.write(path, {"fc.weight": np.ones(2, dtype=np.float32)})
        ...     porting.read(path)["fc.weight"]
        array([1., 1.], dtype=float32)
    """
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(array)} for name, array in arrays.items()], path)


def to_canonical(arrays):
    """MindSpore names to canonical names: a norm layer's ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance`` become ``weight``, ``bias``, ``running_mean``, ``running_var``.

    Args:
        arrays (dict): MindSpore-named arrays (or anything else as values).

    Returns:
        dict, the same values under canonical names.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from rbn_mindspore.models import porting
        >>> porting.to_canonical({"bn1.gamma": 1, "bn1.moving_variance": 2, "conv1.weight": 3})
        {'bn1.weight': 1, 'bn1.running_var': 2, 'conv1.weight': 3}
    """
    renamed = {}
    for name, array in arrays.items():
        prefix, _, leaf = name.rpartition(".")
        renamed[f"{prefix}.{CANONICAL_NAMES[leaf]}" if prefix and leaf in CANONICAL_NAMES else name] = array
    return renamed


def from_canonical(arrays):
    """Canonical names to MindSpore names, the inverse of ``to_canonical``.

    Args:
        arrays (dict): canonically named arrays.

    Returns:
        dict, the same values under MindSpore's names.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from rbn_mindspore.models import porting
        >>> porting.from_canonical({"bn1.weight": 1, "bn1.running_mean": 2, "conv1.weight": 3})
        {'bn1.gamma': 1, 'bn1.moving_mean': 2, 'conv1.weight': 3}
    """
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
    """Train or eval mode for the norm layers; dropout stays off so runs are deterministic.

    Args:
        model (Cell): the network.
        training (bool): train mode for everything but ``nn.Dropout``.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from mindspore import nn
        >>> from rbn_mindspore.models import porting
        >>> model = nn.SequentialCell([nn.Dense(2, 2), nn.Dropout(p=0.5)])
        >>> porting.set_mode(model, True)
        >>> [cell.training for _, cell in model.cells_and_names()]
        [True, True, False]
    """
    model.set_train(training)
    for _, cell in model.cells_and_names():
        if isinstance(cell, nn.Dropout):
            cell.set_train(False)


def logits(model, x, training):
    """The model's output for the NumPy batch ``x`` as NumPy, in train or eval mode.

    Args:
        model (Cell): the network.
        x (numpy.ndarray): the input batch.
        training (bool): train mode (batch statistics) or eval mode (running statistics).

    Returns:
        numpy.ndarray, the output.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import numpy as np
        >>> from rbn_mindspore.models import porting, resnet18
        >>> porting.logits(resnet18(num_classes=10), np.zeros((2, 3, 32, 32), np.float32), False).shape
        (2, 10)
    """
    set_mode(model, training)
    return model(ms.Tensor(x)).asnumpy()


def sgd_step(model, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy, in train mode.

    Args:
        model (Cell): the network, updated in place.
        x (numpy.ndarray): the input batch.
        target (numpy.ndarray): class indices, shape (N,).
        lr (float): the learning rate.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import numpy as np
        >>> from mindspore import nn
        >>> from rbn_mindspore.models import porting
        >>> model = nn.Dense(2, 3)
        >>> before = model.weight.asnumpy().copy()
        >>> porting.sgd_step(model, np.ones((4, 2), np.float32), np.array([0, 1, 2, 0]), 0.1)
        >>> bool((model.weight.asnumpy() != before).any())
        True
    """
    set_mode(model, True)
    parameters = model.trainable_params()

    def loss(inputs, labels):
        return ops.cross_entropy(model(inputs), labels)

    grads = ms.grad(loss, grad_position=None, weights=parameters)(ms.Tensor(x), ms.Tensor(target.astype(np.int32)))
    for parameter, grad in zip(parameters, grads):
        parameter.set_data(parameter - lr * grad)
