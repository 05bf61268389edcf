"""BatchNorm -> RBN conversion and strict loading of canonical-name NumPy state dicts."""

import jittor as jt
import numpy as np
from rbn_reference import PARAM_NAMES, check_state_dict, fit_shape

from .modules import RepresentativeBatchNorm


def convert_bn_to_rbn(module, *, predicate=None, preserve_output=True, **rbn_kwargs):
    """Replace every ``jittor.nn.BatchNorm`` in ``module`` by a :class:`RepresentativeBatchNorm`.

    Like PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place
    and the (possibly new) root is returned. Only layers for which
    ``predicate(qualified_name, layer)`` is true are converted (all when None). ``rbn_kwargs``
    go to the new layers (``centering_stat=...``, ``scaling=False``, ...). Jittor's
    ``BatchNorm1d/2d/3d`` are one class, so the new layers are the rank-agnostic
    ``RepresentativeBatchNorm``.

    Weight, bias, running statistics, eps, momentum, sync, ``is_train`` and the parameters'
    dtype carry over. ``jittor.nn.BatchNorm`` keeps no batch count (``num_batches_tracked``
    starts at 0) and its ``running_var`` holds biased variances: they are taken as they are.

    With ``preserve_output=True`` the converted model computes what the BatchNorm model
    computed: the calibrations start as no-ops (w_m = w_v = 0) and ``1 / sigmoid(w_b)``
    is folded into ``weight``. With ``False`` the new layers keep the BatchNorm's weight,
    so the scaling calibration multiplies every output by ``sigmoid(1) ~ 0.73`` at first,
    as when training an RBN model from the paper's initialization.
    """
    return _convert(module, "", predicate, preserve_output, rbn_kwargs)


def _convert(module, name, predicate, preserve_output, rbn_kwargs):
    """A new RBN if ``module`` is a BatchNorm to convert, else ``module`` with its children converted."""
    if isinstance(module, jt.nn.BatchNorm) and (predicate is None or predicate(name, module)):
        return _rbn_from_bn(module, preserve_output, rbn_kwargs)
    for child_name, child in list(module.named_children()):
        new = _convert(child, f"{name}.{child_name}" if name else child_name, predicate,
                       preserve_output, rbn_kwargs)
        if new is not child:
            module.add_module(child_name, new)
    return module


def _rbn_from_bn(bn, preserve_output, rbn_kwargs):
    kwargs = dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, is_train=bn.is_train,
                  sync=bn.sync)
    kwargs.update(rbn_kwargs)
    rbn = RepresentativeBatchNorm(bn.num_features, **kwargs)
    if isinstance(bn.weight, jt.Var) and bn.weight.dtype == "float64":
        rbn.float64()
    scaled = preserve_output and rbn.scale_bias is not None
    if scaled and not (bn.affine and rbn.affine):
        raise ValueError("preserve_output=True needs affine BatchNorm and RBN layers to fold "
                         "1/sigmoid(scale_bias) into weight (got a layer without affine); "
                         "pass preserve_output=False or scaling=False")
    if rbn.affine and bn.affine:
        weight = bn.weight / jt.sigmoid(rbn.scale_bias) if scaled else bn.weight
        rbn.weight.update(weight.cast(rbn.weight.dtype))
        rbn.bias.update(bn.bias.cast(rbn.bias.dtype))
    if rbn.track_running_stats:
        rbn.running_mean.update(bn.running_mean.cast(rbn.running_mean.dtype))
        rbn.running_var.update(bn.running_var.cast(rbn.running_var.dtype))
    return rbn


def state_dict_to_numpy(module):
    """``module``'s state dict as NumPy arrays with PyTorch's (canonical) names and shapes."""
    arrays = {}
    for name, var in module.state_dict().items():
        array = var.numpy()
        # Jittor has no 0-d Vars: the batch count is stored with shape (1,)
        arrays[name] = array.reshape(()) if name.rpartition(".")[2] == "num_batches_tracked" else array
    return arrays


def load_numpy_state_dict(module, arrays, *, strict=True):
    """Load ``arrays`` (name -> NumPy array, Jittor Var or CPU PyTorch tensor) into ``module``.

    Unlike ``jittor.nn.Module.load_state_dict``, nothing is skipped silently: missing and
    unexpected names (with ``strict``) and mis-shaped values (always) raise ONE
    ``rbn_reference.StateDictError`` (a ``KeyError`` and a ``ValueError``) listing them all, and
    nothing is loaded then. Values are cast to the dtype of the Var they replace. RBN
    parameters also load from the authors' ``(1, C, 1, 1)`` shape; a missing
    ``num_batches_tracked`` keeps its count (checkpoints of Jittor's own BatchNorm have none)
    and one addressed to a ``jittor.nn.BatchNorm`` is ignored (it keeps no count). Returns
    ``(missing_keys, unexpected_keys)``.
    """
    targets = module.state_dict()
    owners = dict(module.named_modules())
    missing = [name for name in targets if name not in arrays
               and name.rpartition(".")[2] != "num_batches_tracked"]
    unexpected = [name for name in arrays if name not in targets
                  and not _is_batch_norm_count(name, owners)]
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
            targets[name].update(jt.array(array))
    return missing, unexpected


def _owner(name, owners):
    return owners.get(name.rpartition(".")[0])


def _is_batch_norm_count(name, owners):
    return (name.rpartition(".")[2] == "num_batches_tracked"
            and isinstance(_owner(name, owners), jt.nn.BatchNorm))


def _to_target_shape(name, array, shape, owners):
    """``array`` reshaped to ``shape`` if it is an accepted form of it, else None."""
    leaf = name.rpartition(".")[2]
    if leaf == "num_batches_tracked" and array.size == 1:
        return array.reshape(shape)
    return fit_shape(array, shape, rbn_vector=leaf in PARAM_NAMES
                     and isinstance(_owner(name, owners), RepresentativeBatchNorm))
