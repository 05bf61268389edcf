"""The canonical NumPy exchange of state dicts, and strict loading.

Canonical names are PyTorch's (and torchvision's): ``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked`` and the calibrations ``center_weight``,
``scale_weight``, ``scale_bias``. Jittor's own names are the same; what differs is the batch
count, which RBN layers keep as ``_num_batches_tracked`` (out of ``parameters()`` and of
Jittor's ``state_dict()``) and which is shape (1,) in Jittor, 0-d in the NumPy dict.

RBN layers (``modules.py``) are recognized by that attribute, so this module does not import
``modules.py`` and the layers' ``load_state_dict`` can use it.
"""

import jittor as jt
import numpy as np
from rbn_reference import PARAM_NAMES, check_state_dict, fit_shape

_COUNT = "num_batches_tracked"


def state_dict_to_numpy(module):
    """``module``'s state dict as NumPy arrays with PyTorch's (canonical) names and shapes.

    Jittor's ``state_dict()`` plus every RBN layer's ``num_batches_tracked`` (a 0-d int64
    array, after its ``running_var``, where PyTorch puts it).

    Args:
        module (jittor.nn.Module): a layer or a network.

    Returns:
        dict: name -> ``numpy.ndarray``.

    Example::

        >>> import rbn_jittor
        >>> arrays = rbn_jittor.state_dict_to_numpy(rbn_jittor.RepresentativeBatchNorm2d(4))
        >>> sorted(arrays)  # doctest: +NORMALIZE_WHITESPACE
        ['bias', 'center_weight', 'num_batches_tracked', 'running_mean', 'running_var',
         'scale_bias', 'scale_weight', 'weight']
        >>> arrays["num_batches_tracked"].shape, arrays["weight"].shape
        ((), (4,))
    """
    counts = _counts(module)
    arrays = {}
    for name, var in module.state_dict().items():
        arrays[name] = var.numpy()
        prefix, _, leaf = name.rpartition(".")
        count_name = f"{prefix}.{_COUNT}" if prefix else _COUNT
        if leaf == "running_var" and count_name in counts:
            arrays[count_name] = counts[count_name].numpy().reshape(())
    return arrays


def load_numpy_state_dict(module, arrays, *, strict=True):
    """Load ``arrays`` (name -> NumPy array, Jittor Var or CPU PyTorch tensor) into ``module``.

    Unlike ``jittor.nn.Module.load_state_dict``, nothing is skipped silently: missing and
    unexpected names (with ``strict``) and mis-shaped values (always) raise ONE
    ``rbn_reference.StateDictError`` (a ``KeyError`` and a ``ValueError``) listing them all, and
    nothing is loaded then. Values are cast to the dtype of the Var they replace. RBN
    parameters also load from the authors' ``(1, C, 1, 1)`` shape; a missing
    ``num_batches_tracked`` keeps its count (checkpoints of Jittor's own BatchNorm, and
    Jittor's ``Module.save``, have none) and one addressed to a ``jittor.nn.BatchNorm`` is
    ignored (it keeps no count).

    Args:
        module (jittor.nn.Module): a layer or a network.
        arrays (dict): name -> array, canonical names.
        strict (bool): refuse missing and unexpected names. Keyword-only. Default: True.

    Returns:
        tuple: ``(missing_keys, unexpected_keys)``, lists of names.

    Example::

        >>> import rbn_jittor
        >>> source, target = rbn_jittor.RepresentativeBatchNorm2d(4), rbn_jittor.RepresentativeBatchNorm2d(4)
        >>> arrays = rbn_jittor.state_dict_to_numpy(source)
        >>> arrays["num_batches_tracked"] = arrays["num_batches_tracked"] + 5
        >>> rbn_jittor.load_numpy_state_dict(target, arrays)
        ([], [])
        >>> int(target.num_batches_tracked.item())
        5
    """
    targets = {**module.state_dict(), **_counts(module)}
    owners = dict(module.named_modules())
    missing = [name for name in targets if name not in arrays and name.rpartition(".")[2] != _COUNT]
    unexpected = [name for name in arrays if name not in targets and not _is_batch_norm_count(name, owners)]
    mis_shaped = {}
    values = {}
    for name, value in arrays.items():
        if name not in targets:
            continue
        target = targets[name]
        array = value.numpy() if isinstance(value, jt.Var) else np.asarray(value)
        fitted = _to_target_shape(name, array, tuple(target.shape), owners)
        if fitted is None:
            mis_shaped[name] = (tuple(target.shape), array.shape)
            continue
        values[name] = fitted.astype(str(target.dtype))
    check_state_dict("state dict", missing, unexpected, mis_shaped, strict=strict)
    with jt.flag_scope(auto_convert_64_to_32=0):  # else float64 arrays arrive as float32
        for name, array in values.items():
            # synced: a (1,) array left in the graph can run another dtype's kernel (functional._constant)
            targets[name].update(jt.array(array)).sync()
    return missing, unexpected


def _is_rbn(module):
    """Whether ``module`` is an RBN layer (``modules.RepresentativeBatchNorm``), by its batch count."""
    return hasattr(module, "_num_batches_tracked")


def _counts(module):
    """Every RBN layer's batch count Var under its canonical name."""
    return {f"{prefix}.{_COUNT}" if prefix else _COUNT: layer._num_batches_tracked
            for prefix, layer in module.named_modules()
            if _is_rbn(layer) and layer._num_batches_tracked is not None}


def _owner(name, owners):
    return owners.get(name.rpartition(".")[0])


def _is_batch_norm_count(name, owners):
    return name.rpartition(".")[2] == _COUNT and isinstance(_owner(name, owners), jt.nn.BatchNorm)


def _to_target_shape(name, array, shape, owners):
    """``array`` reshaped to ``shape`` if it is an accepted form of it, else None."""
    leaf = name.rpartition(".")[2]
    if leaf == _COUNT and array.size == 1:
        return array.reshape(shape)
    return fit_shape(array, shape, rbn_vector=leaf in PARAM_NAMES and _is_rbn(_owner(name, owners)))
