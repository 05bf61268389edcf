"""BatchNorm -> Representative BatchNorm conversion and checkpoints under canonical names.

MindSpore names stay on the Cells (gamma, beta, moving_mean, moving_variance); the canonical
names of the other frameworks (PyTorch's: weight, bias, running_mean, running_var) appear
only here, at the boundary.
"""

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from rbn_reference import check_state_dict, fit_shape

from .modules import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d,
                      _RepresentativeBatchNorm)

RBN_FOR_BN = {nn.BatchNorm1d: RepresentativeBatchNorm1d, nn.BatchNorm2d: RepresentativeBatchNorm2d,
              nn.BatchNorm3d: RepresentativeBatchNorm3d}
CANONICAL_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"}
# MindSpore's BatchNorm has no batch counter; a layer without one ignores it on load.
OPTIONAL_NAMES = ("num_batches_tracked",)


def convert_bn_to_rbn(cell, *, predicate=None, preserve_output=True, **rbn_kwargs):
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``cell`` by the RepresentativeBatchNorm of the
    same dimension, copying gamma, beta, the moving statistics, eps, momentum,
    use_batch_statistics and the training flag.

    ``predicate(name, bn)`` chooses which layers to convert (``name`` is the dotted path,
    "" for ``cell`` itself). ``rbn_kwargs`` go to the new layers (``centering``, ``scaling``,
    ``centering_stat``, ``scaling_stat``). With ``preserve_output=True`` the converted network
    computes what it computed before: the calibrations start at the paper's init (w_m = 0,
    w_v = 0) and gamma is divided by the initial gate sigmoid(w_b) = sigmoid(1).
    Returns the converted cell (a new one when ``cell`` itself is a BatchNorm).
    """
    replaced = _convert(cell, "", predicate, preserve_output, rbn_kwargs)
    if replaced is not None:
        return replaced
    # A Cell set as an attribute only gets its attribute name as a prefix ("bn1.gamma"): give
    # every Parameter its full dotted path, as a network built in one go has (checkpoints use it).
    for name, param in cell.parameters_and_names():
        param.name = name
    return cell


def _convert(cell, name, predicate, preserve_output, rbn_kwargs):
    """The replacement of ``cell`` if it is a BatchNorm to convert, else None (children converted)."""
    if type(cell) in RBN_FOR_BN:
        if predicate is None or predicate(name, cell):
            return _rbn_from_bn(cell, preserve_output, rbn_kwargs)
        return None
    children = list(cell.name_cells().items())
    for position, (child_name, child) in enumerate(children):
        replacement = _convert(child, f"{name}.{child_name}" if name else child_name, predicate,
                               preserve_output, rbn_kwargs)
        if replacement is None:
            continue
        # Containers run their own list of cells (SequentialCell.cell_list), which setattr
        # would leave pointing at the old BatchNorm: go through their __setitem__.
        if isinstance(cell, (nn.SequentialCell, nn.CellList)):
            cell[position] = replacement
        elif isinstance(cell, nn.CellDict):
            cell[child_name] = replacement
        else:
            setattr(cell, child_name, replacement)
    return None


def _rbn_from_bn(bn, preserve_output, rbn_kwargs):
    inner = bn.bn2d if isinstance(bn, nn.BatchNorm3d) else bn  # BatchNorm3d wraps a BatchNorm2d
    affine = inner.gamma.requires_grad
    rbn = RBN_FOR_BN[type(bn)](
        inner.num_features, eps=inner.eps, momentum=1.0 - inner.momentum,  # stored as 1 - momentum
        affine=affine, use_batch_statistics=inner.use_batch_statistics, data_format=inner.format,
        dtype=inner.gamma.dtype, **rbn_kwargs)
    gamma = inner.gamma.value()
    if preserve_output and rbn.scaling:
        if not affine:
            raise ValueError("preserve_output=True needs an affine BatchNorm when scaling is on "
                             "(gamma must absorb the initial gate sigmoid(1)); pass scaling=False "
                             "or preserve_output=False")
        gamma = gamma / ops.sigmoid(rbn.scale_bias.value())
    rbn.gamma.set_data(gamma.copy())
    rbn.beta.set_data(inner.beta.value().copy())
    rbn.moving_mean.set_data(inner.moving_mean.value().copy())
    rbn.moving_variance.set_data(inner.moving_variance.value().copy())
    rbn.set_train(bn.training)
    return rbn


# ----------------------------------------------------------------------------- canonical names


def state_dict_to_numpy(cell):
    """``{canonical name: np.ndarray}`` of a layer or a whole network (copies)."""
    return {name: param.asnumpy().copy() for name, param in canonical_parameters(cell).items()}


def load_numpy_state_dict(cell, arrays, *, strict=True):
    """Load canonical-name NumPy ``arrays`` (what the other frameworks export) into ``cell``.

    Raises one ``rbn_reference.StateDictError`` (a ``KeyError`` and a ``ValueError``) listing
    every mis-shaped array and, unless ``strict=False``, every missing or unexpected key; nothing
    is loaded then. RBN vectors are also accepted in the authors' (1, C, 1, 1) shape.
    ``num_batches_tracked`` is optional both ways (MindSpore's BatchNorm has none). Values are
    cast to each Parameter's dtype. Returns ``cell``.
    """
    params = canonical_parameters(cell)
    cells = dict(cell.cells_and_names())
    rbn_vectors = {name for name in params
                   if isinstance(cells.get(name.rpartition(".")[0]), _RepresentativeBatchNorm)}
    missing = sorted(name for name in set(params) - set(arrays) if _leaf(name) not in OPTIONAL_NAMES)
    unexpected = sorted(name for name in set(arrays) - set(params) if _leaf(name) not in OPTIONAL_NAMES)
    mis_shaped = {}
    values = {}
    for name in set(params) & set(arrays):
        value = np.asarray(arrays[name])
        fitted = fit_shape(value, params[name].shape, rbn_vector=name in rbn_vectors)
        if fitted is None:
            mis_shaped[name] = (tuple(params[name].shape), value.shape)
        else:
            values[name] = fitted
    check_state_dict("state dict", missing, unexpected, mis_shaped, strict=strict)
    for name, value in values.items():
        param = params[name]
        param.set_data(Tensor(value, dtype=param.dtype))
    return cell


def _leaf(name):
    return name.rpartition(".")[2]


# ----------------------------------------------------------------------------- MindSpore extras


def load_checkpoint(cell, ckpt_file_name, *, strict=True):
    """``mindspore.load_checkpoint`` + ``load_param_into_net``, raising on any mismatch.

    ``load_param_into_net`` alone never raises (it returns what it did not load). This checks
    names and shapes first and raises one error listing every problem, as
    :func:`load_numpy_state_dict` does, with MindSpore's own names. Returns ``cell``.
    """
    param_dict = ms.load_checkpoint(ckpt_file_name)
    params = {param.name: param for param in cell.get_parameters()}  # the names checkpoints use
    missing = sorted(set(params) - set(param_dict))
    unexpected = sorted(set(param_dict) - set(params))
    mis_shaped = {name: (tuple(params[name].shape), tuple(param_dict[name].shape))
                  for name in set(params) & set(param_dict)
                  if tuple(param_dict[name].shape) != tuple(params[name].shape)}
    check_state_dict(ckpt_file_name, missing, unexpected, mis_shaped, strict=strict)
    not_loaded, _ = ms.load_param_into_net(cell, param_dict)
    if set(not_loaded) - set(missing):  # its own checks (dtype) failed silently
        raise ValueError(f"load_param_into_net did not load {sorted(set(not_loaded) - set(missing))}")
    return cell


def canonical_parameters(cell):
    """``{canonical dotted name: Parameter}`` for every Parameter of ``cell``.

    Norm layers (ours and ``nn.BatchNorm1d/2d/3d``) get PyTorch's names; a BatchNorm3d's inner
    ``bn2d`` level is dropped; frozen gamma/beta (``affine=False``) are left out, as PyTorch has
    none. Every other Parameter keeps its MindSpore path.
    """
    norm_prefixes = {}
    for name, sub in cell.cells_and_names():
        if isinstance(sub, nn.BatchNorm3d):
            norm_prefixes[f"{name}.bn2d" if name else "bn2d"] = name
        elif isinstance(sub, (_RepresentativeBatchNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            norm_prefixes.setdefault(name, name)
    result = {}
    for path, param in cell.parameters_and_names():
        prefix, _, leaf = path.rpartition(".")
        if prefix in norm_prefixes and leaf in CANONICAL_NAMES:
            if leaf in ("gamma", "beta") and not param.requires_grad:
                continue
            canonical_prefix = norm_prefixes[prefix]
            path = f"{canonical_prefix}.{CANONICAL_NAMES[leaf]}" if canonical_prefix else CANONICAL_NAMES[leaf]
        result[path] = param
    return result
