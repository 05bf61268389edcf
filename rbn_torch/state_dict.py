"""State dicts as canonical NumPy arrays, and strict loading of them.

PyTorch's (torchvision's) parameter names are the canonical names that every framework
package maps its own to, so the mapping here is the identity; the authors' released
``(1, C, 1, 1)`` parameter shape is mapped to ``(C,)``.
"""

import numpy as np
import torch

from rbn_reference import check_state_dict, fit_shape

from .modules import _RepresentativeBatchNorm

__all__ = ["state_dict_to_numpy", "load_numpy_state_dict"]


def state_dict_to_numpy(module):
    """``module.state_dict()`` as NumPy arrays under canonical names (PyTorch's are canonical).

    The exchange format of ``rbn convert`` and of the other framework packages'
    ``load_numpy_state_dict``: an RBN layer's (C,) ``weight``, ``bias``, ``center_weight``
    (w_m), ``scale_weight`` (w_v), ``scale_bias`` (w_b) of Eq. 12 and BatchNorm's buffers.

    Args:
        module (nn.Module): any module.

    Returns:
        dict: name -> ``numpy.ndarray`` (a copy for non-CPU tensors), dtypes kept.

    Example::

        >>> from rbn_torch import RepresentativeBatchNorm2d, state_dict_to_numpy
        >>> arrays = state_dict_to_numpy(RepresentativeBatchNorm2d(3))
        >>> sorted(arrays)  # doctest: +NORMALIZE_WHITESPACE
        ['bias', 'center_weight', 'num_batches_tracked', 'running_mean', 'running_var',
         'scale_bias', 'scale_weight', 'weight']
        >>> arrays["scale_bias"]
        array([1., 1., 1.], dtype=float32)
    """
    return {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}


def load_numpy_state_dict(module, arrays, *, strict=True):
    """Load canonical-name NumPy ``arrays`` into ``module``, checking every key first.

    Raises one ``rbn_reference.StateDictError`` (a ``KeyError`` and a ``ValueError``) listing
    every mis-shaped array and, unless ``strict=False``, every missing or unexpected key; nothing
    is loaded then. RBN parameters are also accepted in the authors' (1, C, 1, 1) shape.

    Args:
        module (nn.Module): the model to load into.
        arrays (dict): canonical name -> array (anything ``numpy.asarray`` takes).
        strict (bool, keyword-only): also refuse missing and unexpected keys. Default: True.

    Returns:
        ``module``.

    Example::

        >>> import numpy as np
        >>> from rbn_torch import RepresentativeBatchNorm2d, load_numpy_state_dict, state_dict_to_numpy
        >>> arrays = state_dict_to_numpy(RepresentativeBatchNorm2d(3))
        >>> arrays["center_weight"] = np.full((1, 3, 1, 1), 0.5, dtype=np.float32)  # the authors' shape
        >>> load_numpy_state_dict(RepresentativeBatchNorm2d(3), arrays).center_weight.tolist()
        [0.5, 0.5, 0.5]
        >>> del arrays["running_var"]
        >>> load_numpy_state_dict(RepresentativeBatchNorm2d(3), arrays)
        Traceback (most recent call last):
        ...
        rbn_reference.validation.StateDictError: cannot load state dict: missing keys ['running_var']
    """
    expected = module.state_dict()
    rbn_parameters = {f"{prefix}.{name}" if prefix else name
                      for prefix, layer in module.named_modules() if isinstance(layer, _RepresentativeBatchNorm)
                      for name, _ in layer.named_parameters(recurse=False)}
    missing = set(expected) - set(arrays)
    unexpected = set(arrays) - set(expected)
    mis_shaped = {}
    tensors = {}
    for name in set(expected) & set(arrays):
        value = np.asarray(arrays[name])
        fitted = fit_shape(value, expected[name].shape, rbn_vector=name in rbn_parameters)
        if fitted is None:
            mis_shaped[name] = (tuple(expected[name].shape), value.shape)
        else:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(fitted))
    check_state_dict("state dict", missing, unexpected, mis_shaped, strict=strict)
    module.load_state_dict(tensors, strict=False)
    return module
