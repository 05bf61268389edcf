"""Checkpoints: the canonical NumPy exchange with the other frameworks, and strict loading.

MindSpore names stay on the Cells (gamma, beta, moving_mean, moving_variance); the canonical
names of the other frameworks (PyTorch's: weight, bias, running_mean, running_var) appear
only here, at the boundary.
"""

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from rbn_reference import check_state_dict, fit_shape

from .modules import _RepresentativeBatchNorm

__all__ = ["state_dict_to_numpy", "load_numpy_state_dict", "canonical_parameters", "load_checkpoint",
           "CANONICAL_NAMES"]

CANONICAL_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"}
# MindSpore's BatchNorm has no batch counter; a layer without one ignores it on load.
OPTIONAL_NAMES = ("num_batches_tracked",)

_EQUATION = r"""
    The layers compute Eq. 12 (:math:`X_{cm} = X + w_m K_m`, :math:`X_m = X_{cm} - \mathrm{E}[X_{cm}]`,
    :math:`X_s = X_m / \sqrt{\mathrm{Var}[X_{cm}] + \epsilon}`,
    :math:`X_{cs} = X_s \cdot \mathrm{sigmoid}(w_v K_s + w_b)`, :math:`Y = X_{cs} \gamma + \beta`);
    the canonical names of its parameters are ``weight`` (:math:`\gamma`), ``bias``
    (:math:`\beta`), ``center_weight`` (:math:`w_m`), ``scale_weight`` (:math:`w_v`),
    ``scale_bias`` (:math:`w_b`), ``running_mean``, ``running_var``, ``num_batches_tracked``.
"""


def canonical_parameters(cell):
    r"""``{canonical dotted name: Parameter}`` for every Parameter of `cell`.
    {equation}
    Norm layers (ours and ``nn.BatchNorm1d/2d/3d``) get PyTorch's names (``CANONICAL_NAMES``);
    a BatchNorm3d's inner ``bn2d`` level is dropped. Every other Parameter keeps its MindSpore
    path. Frozen gamma/beta (``affine=False``) are included: MindSpore applies them.

    Args:
        cell (Cell): a layer or a whole network.

    Returns:
        dict[str, Parameter], the Parameters themselves (not copies), each of its own shape.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from rbn_mindspore import RepresentativeBatchNorm2d, canonical_parameters
        >>> params = canonical_parameters(RepresentativeBatchNorm2d(3))
        >>> params["weight"].name, params["running_var"].name, params["running_var"].shape
        ('gamma', 'moving_variance', (3,))
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
            canonical_prefix = norm_prefixes[prefix]
            path = f"{canonical_prefix}.{CANONICAL_NAMES[leaf]}" if canonical_prefix else CANONICAL_NAMES[leaf]
        result[path] = param
    return result


def state_dict_to_numpy(cell):
    r"""``{canonical name: np.ndarray}`` of a layer or a whole network (copies), what
    ``rbn_torch`` and ``rbn_jittor`` load.
    {equation}
    Args:
        cell (Cell): a layer or a whole network; names as in :func:`canonical_parameters`.

    Returns:
        dict[str, numpy.ndarray], per-channel vectors of shape :math:`(C,)`, ``num_batches_tracked``
        an int64 scalar, other Parameters in their own shape.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from rbn_mindspore import RepresentativeBatchNorm2d, state_dict_to_numpy
        >>> arrays = state_dict_to_numpy(RepresentativeBatchNorm2d(3))
        >>> sorted(arrays)
        ['bias', 'center_weight', 'num_batches_tracked', 'running_mean', 'running_var', 'scale_bias', 'scale_weight', 'weight']
        >>> arrays["scale_bias"]
        array([1., 1., 1.], dtype=float32)
    """
    arrays = {name: param.asnumpy().copy() for name, param in canonical_parameters(cell).items()}
    for weight_name, bias_name, _ in _frozen_affine_pairs(canonical_parameters(cell)):
        if (arrays[weight_name] == 1).all() and (arrays[bias_name] == 0).all():
            del arrays[weight_name], arrays[bias_name]
    return arrays


def load_numpy_state_dict(cell, arrays, *, strict=True):
    r"""Load canonical-name NumPy `arrays` (what the other frameworks export) into `cell`.
    {equation}
    RBN vectors are also accepted in the authors' :math:`(1, C, 1, 1)` shape.
    ``num_batches_tracked`` is optional both ways (MindSpore's BatchNorm has none). Values are
    cast to each Parameter's dtype; nothing is loaded when anything is wrong. Frozen gamma/beta
    (``affine=False``) are optional too: a norm layer whose entries come without ``weight`` and
    ``bias`` (PyTorch's ``affine=False``) gets gamma 1 and beta 0, which is what it computed.

    Args:
        cell (Cell): a layer or a whole network.
        arrays (dict[str, numpy.ndarray]): canonical names, as :func:`state_dict_to_numpy` gives.
        strict (bool, optional): keyword-only; missing and unexpected names are errors.
            Default: ``True`` .

    Returns:
        Cell, `cell`.

    Raises:
        rbn_reference.StateDictError: (a ``KeyError`` and a ``ValueError``) listing every
            mis-shaped array and, if `strict`, every missing or unexpected name.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import numpy as np
        >>> from rbn_mindspore import RepresentativeBatchNorm1d, load_numpy_state_dict, state_dict_to_numpy
        >>> arrays = state_dict_to_numpy(RepresentativeBatchNorm1d(2))
        >>> arrays["weight"] = np.array([2.0, 3.0])
        >>> layer = load_numpy_state_dict(RepresentativeBatchNorm1d(2), arrays)
        >>> layer.gamma.asnumpy()
        array([2., 3.], dtype=float32)
    """
    params = canonical_parameters(cell)
    cells = dict(cell.cells_and_names())
    rbn_vectors = {name for name in params
                   if isinstance(cells.get(name.rpartition(".")[0]), _RepresentativeBatchNorm)}
    identity = {}  # frozen gamma/beta absent from a layer that is in ``arrays``: no affine
    for weight_name, bias_name, running_mean_name in _frozen_affine_pairs(params):
        if weight_name not in arrays and bias_name not in arrays and running_mean_name in arrays:
            identity[weight_name] = np.ones(params[weight_name].shape)
            identity[bias_name] = np.zeros(params[bias_name].shape)
    missing = sorted(name for name in set(params) - set(arrays) - set(identity) if _leaf(name) not in OPTIONAL_NAMES)
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
    for name, value in {**identity, **values}.items():
        param = params[name]
        # In place: a train step already compiled (ms.jit) keeps reading a Parameter's old memory
        # after set_data, as after mindspore.load_param_into_net (measured, MindSpore 2.10 CPU).
        param.copy_(Tensor(value, dtype=param.dtype))
    return cell


def load_checkpoint(cell, ckpt_file_name, *, strict=True):
    r"""``mindspore.load_checkpoint`` + ``load_param_into_net``, raising on any mismatch.
    {equation}
    ``load_param_into_net`` alone never raises (it returns what it did not load). This checks
    names and shapes first and raises one error listing every problem, as
    :func:`load_numpy_state_dict` does, with MindSpore's own names (``layer1.0.bn1.gamma``).

    Args:
        cell (Cell): a layer or a whole network.
        ckpt_file_name (str): a ``mindspore.save_checkpoint`` file.
        strict (bool, optional): keyword-only; missing and unexpected names are errors.
            Default: ``True`` .

    Returns:
        Cell, `cell`.

    Raises:
        rbn_reference.StateDictError: (a ``KeyError`` and a ``ValueError``) listing every
            mis-shaped Parameter and, if `strict`, every missing or unexpected name.
        ValueError: If ``load_param_into_net`` skipped a Parameter for another reason (dtype).

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import os, tempfile
        >>> import mindspore as ms
        >>> from rbn_mindspore import RepresentativeBatchNorm2d, load_checkpoint
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "rbn.ckpt")
        ...     ms.save_checkpoint(RepresentativeBatchNorm2d(3, gamma_init="zeros"), path)
        ...     load_checkpoint(RepresentativeBatchNorm2d(3), path).gamma.asnumpy()
        array([0., 0., 0.], dtype=float32)
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


def _leaf(name):
    return name.rpartition(".")[2]


def _frozen_affine_pairs(params):
    """(weight, bias, running_mean) names of every norm layer whose gamma and beta are both frozen."""
    for name, param in params.items():
        if _leaf(name) == "weight" and not param.requires_grad:
            prefix = name[:-len("weight")]
            bias_name, running_mean_name = prefix + "bias", prefix + "running_mean"
            if running_mean_name in params and bias_name in params and not params[bias_name].requires_grad:
                yield name, bias_name, running_mean_name


# One text of the equation for the four docstrings above.
for _function in (canonical_parameters, state_dict_to_numpy, load_numpy_state_dict, load_checkpoint):
    _function.__doc__ = _function.__doc__.replace("{equation}", _EQUATION)
