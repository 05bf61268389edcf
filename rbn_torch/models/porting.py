"""PyTorch side of ``rbn.checkpoint``: checkpoint files and whole-model glue.

Every framework's ``models/porting.py`` offers the same names: ``read``/``write`` (a file
as framework-named NumPy arrays), ``to_canonical``/``from_canonical`` (names),
``set_mode``, ``logits``, ``sgd_step``, ``export_onnx``, and the pieces ``models``, ``BatchNorm2d``,
``RepresentativeBatchNorm2d``, ``load_numpy_state_dict``, ``state_dict_to_numpy``.
Arrays cross frameworks as NumPy under canonical (PyTorch/torchvision) names.
"""
import torch
from rbn.files import atomic_output
from torch import nn

from .. import models  # noqa: F401  (the interface above)
from ..state_dict import load_numpy_state_dict, state_dict_to_numpy  # noqa: F401
from ..modules import RepresentativeBatchNorm2d  # noqa: F401

FRAMEWORK = "torch"
BatchNorm2d = nn.BatchNorm2d  # the baseline norm layer


def read(path):
    """A state dict file as framework-named arrays.

    Training scripts often save ``{"state_dict": ..., "epoch": ...}`` or ``{"model": ...}``:
    the state dict is taken from there. Loaded with ``weights_only=True``: a file never runs code.

    Args:
        path (str or PathLike): a ``torch.save`` file.

    Returns:
        dict: name -> ``numpy.ndarray``.

    Example::

        >>> import os, tempfile, torch
        >>> from rbn_torch.models import porting
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "bn.pt")
        ...     torch.save({"state_dict": torch.nn.BatchNorm2d(2).state_dict(), "epoch": 3}, path)
        ...     sorted(porting.read(path))
        ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
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
    """Save framework-named NumPy ``arrays`` as a ``torch.save`` state dict at ``path``.

    Example::

        >>> import os, tempfile, numpy as np
        >>> from rbn_torch.models import porting
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "w.pt")
        ...     porting.write(path, {"weight": np.ones(2, dtype=np.float32)})
        ...     porting.read(path)["weight"]
        array([1., 1.], dtype=float32)
    """
    torch.save({name: torch.from_numpy(array) for name, array in arrays.items()}, path)


def to_canonical(arrays):
    """Framework names to canonical names: the identity, PyTorch's names are the canonical ones.

    Example::

        >>> from rbn_torch.models import porting
        >>> porting.to_canonical({"bn1.weight": 1})
        {'bn1.weight': 1}
    """
    return dict(arrays)


def from_canonical(arrays):
    """Canonical names to framework names: the identity, as ``to_canonical``.

    Example::

        >>> from rbn_torch.models import porting
        >>> porting.from_canonical({"bn1.weight": 1})
        {'bn1.weight': 1}
    """
    return dict(arrays)


def set_mode(model, training):
    """Train or eval mode for the norm layers; dropout stays off so runs are deterministic.

    Example::

        >>> from rbn_torch.models import mobilenet_v2, porting
        >>> model = mobilenet_v2(num_classes=10)
        >>> porting.set_mode(model, True)
        >>> model.features[0][1].training, model.classifier[0].training
        (True, False)
    """
    model.train(training)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()


def logits(model, x, training):
    """The logits of ``model`` for the NumPy batch ``x`` (N, 3, H, W), without autograd.

    Example::

        >>> import numpy as np
        >>> from rbn_torch.models import porting, resnet18
        >>> porting.logits(resnet18(num_classes=10), np.zeros((2, 3, 32, 32), np.float32), False).shape
        (2, 10)
    """
    set_mode(model, training)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def sgd_step(model, x, target, lr):
    """One plain SGD step (no momentum, no weight decay) on the cross-entropy, in train mode.

    Args:
        model (nn.Module): a zoo network.
        x (numpy.ndarray): (N, 3, H, W) batch.
        target (numpy.ndarray): (N,) int64 class indices.
        lr (float): the learning rate.

    Example::

        >>> import numpy as np
        >>> from rbn_torch.models import porting, resnet18
        >>> model = resnet18(num_classes=10)
        >>> before = model.fc.bias.detach().clone()
        >>> porting.sgd_step(model, np.random.rand(2, 3, 32, 32).astype(np.float32), np.array([0, 1]), 0.1)
        >>> bool((model.fc.bias != before).any())
        True
    """
    set_mode(model, True)
    loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(target))
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= lr * parameter.grad


def export_onnx(model, path, *, input_shape, opset=None, dynamo=True, force=False):
    """Write the eval-mode ``model`` as an ONNX file at ``path``, with a dynamic batch axis.

    The RBN layers export as plain ops (in eval mode Eq. 12 is an affine map per (n, c):
    ``Y = A * (X - mean) + B`` with ``A``, ``B`` from the per-instance mean and variance, the
    running statistics and the parameters), so any runtime runs the file: the custom
    ``autograd.Function`` of training never reaches the exporter. The model is exported in eval
    mode and left in the mode it was in. The file is written whole or not at all
    (``rbn.files.atomic_output``); the graph's input is ``"input"``, its output ``"logits"``.

    Args:
        model (nn.Module): the network.
        path (str or PathLike): the ``.onnx`` file to write.
        input_shape (tuple of int, keyword-only): the example input's shape, e.g. (1, 3, 224, 224);
            its first axis is exported as the dynamic ``batch`` axis.
        opset (int, keyword-only): the ONNX opset; None takes the exporter's default. Default: None.
        dynamo (bool, keyword-only): the ``torch.export``-based exporter (needs ``onnxscript``);
            False takes the TorchScript one. Default: True.
        force (bool, keyword-only): overwrite an existing ``path``. Default: False.

    Raises:
        FileExistsError: ``path`` exists and not ``force``.

    Example::

        >>> import os, tempfile, torch
        >>> from rbn_torch.models import porting
        >>> from rbn_torch import RepresentativeBatchNorm2d
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), RepresentativeBatchNorm2d(4))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "net.onnx")
        ...     porting.export_onnx(net, path, input_shape=(2, 3, 8, 8), dynamo=False)
        ...     os.path.getsize(path) > 0, net.training
        (True, True)
    """
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    options = {} if opset is None else {"opset_version": opset}
    if dynamo:
        options["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        options["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    training = model.training
    model.eval()
    try:
        with atomic_output(path, force=force) as temporary:
            torch.onnx.export(model, (example,), temporary, input_names=["input"], output_names=["logits"],
                              dynamo=dynamo, verbose=False, **options)
    finally:
        model.train(training)
