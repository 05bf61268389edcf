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

    Args:
        path (str or PathLike): a ``jt.save`` or ``Module.save`` file.

    Returns:
        dict: name -> ``numpy.ndarray``.

    Example::

        >>> import os, tempfile
        >>> from jittor import nn
        >>> from rbn_jittor.models import porting
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "bn.pkl")
        ...     nn.BatchNorm2d(2).save(path)
        ...     sorted(porting.read(path))
        ['bias', 'running_mean', 'running_var', 'weight']
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
    """Save framework-named NumPy ``arrays`` as a ``jt.save`` file at ``path``.

    Example::

        >>> import os, tempfile, numpy as np
        >>> from rbn_jittor.models import porting
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "w.pkl")
        ...     porting.write(path, {"weight": np.ones(2, dtype=np.float32)})
        ...     porting.read(path)["weight"]
        array([1., 1.], dtype=float32)
    """
    jt.save(dict(arrays), path)


def to_canonical(arrays):
    """Framework names to canonical names: the identity, Jittor's zoo uses PyTorch's names.

    Example::

        >>> from rbn_jittor.models import porting
        >>> porting.to_canonical({"bn1.weight": 1})
        {'bn1.weight': 1}
    """
    return dict(arrays)


def from_canonical(arrays):
    """Canonical names to framework names: the identity, as ``to_canonical``.

    Example::

        >>> from rbn_jittor.models import porting
        >>> porting.from_canonical({"bn1.running_var": 1})
        {'bn1.running_var': 1}
    """
    return dict(arrays)


def set_mode(model, training):
    """Train or eval mode for the norm layers; dropout stays off so runs are deterministic.

    ``is_train`` is set directly: ``Module.eval()`` would also stop the parameters' gradients.

    Example::

        >>> from jittor import nn
        >>> from rbn_jittor.models import porting
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> porting.set_mode(model, True)
        >>> [module.is_train for module in model.modules()]
        [True, True, False]
    """
    for module in model.modules():
        module.is_train = training and not isinstance(module, nn.Dropout)


def logits(model, x, training):
    """The model's output for the NumPy batch ``x`` as NumPy, in train or eval mode, without gradients.

    Example::

        >>> import numpy as np
        >>> from rbn_jittor.models import porting, resnet18
        >>> porting.logits(resnet18(num_classes=10), np.zeros((2, 3, 32, 32), np.float32), False).shape
        (2, 10)
    """
    set_mode(model, training)
    with jt.no_grad():
        return model(jt.array(x)).numpy()


def sgd_step(model, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy, in train mode.

    Example::

        >>> import numpy as np
        >>> from jittor import nn
        >>> from rbn_jittor.models import porting
        >>> model = nn.Linear(2, 3)
        >>> before = model.weight.numpy().copy()
        >>> porting.sgd_step(model, np.ones((4, 2), np.float32), np.array([0, 1, 2, 0]), 0.1)
        >>> bool((model.weight.numpy() != before).any())
        True
    """
    set_mode(model, True)
    loss = nn.cross_entropy_loss(model(jt.array(x)), jt.array(target))
    parameters = [p for p in model.parameters() if not p.is_stop_grad()]
    for parameter, grad in zip(parameters, jt.grad(loss, parameters)):
        parameter.update(parameter - lr * grad)
    jt.sync_all()
