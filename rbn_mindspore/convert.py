"""BatchNorm -> Representative BatchNorm conversion of a MindSpore network."""

from mindspore import nn, ops

from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d

__all__ = ["convert_bn_to_rbn"]

RBN_FOR_BN = {nn.BatchNorm1d: RepresentativeBatchNorm1d, nn.BatchNorm2d: RepresentativeBatchNorm2d,
              nn.BatchNorm3d: RepresentativeBatchNorm3d}


def convert_bn_to_rbn(cell, *, predicate=None, preserve_output=True, **rbn_kwargs):
    r"""Replace every ``nn.BatchNorm1d/2d/3d`` in `cell` by the Representative BatchNorm of the
    same dimension (Eq. 12:
    :math:`X_{cm} = X + w_m K_m`, :math:`X_m = X_{cm} - \mathrm{E}[X_{cm}]`,
    :math:`X_s = X_m / \sqrt{\mathrm{Var}[X_{cm}] + \epsilon}`,
    :math:`X_{cs} = X_s \cdot \mathrm{sigmoid}(w_v K_s + w_b)`, :math:`Y = X_{cs} \gamma + \beta`),
    copying gamma, beta (frozen ones stay frozen: ``affine=False`` or frozen for fine-tuning),
    the moving statistics, eps, momentum, use_batch_statistics, data_format, dtype and the
    training flag (``num_batches_tracked`` starts at 0).

    With `preserve_output` the converted network computes what it computed before: the
    calibrations start at the paper's init (:math:`w_m = 0`, :math:`w_v = 0`) and gamma is
    divided by the initial gate :math:`\mathrm{sigmoid}(w_b) = \mathrm{sigmoid}(1)`. Every
    Parameter then gets its full dotted name (``layer1.0.bn1.gamma``), as in a network built
    with RBN from the start, so ``save_checkpoint`` writes the same names.

    Args:
        cell (Cell): a network, or a BatchNorm itself.
        predicate (Callable[[str, Cell], bool], optional): keyword-only; which BatchNorms to
            convert, from their dotted name (``""`` for `cell` itself) and the layer. ``None``
            converts all. Default: ``None`` .
        preserve_output (bool, optional): keyword-only; see above. ``False`` keeps gamma (the
            paper's from-scratch init). Default: ``True`` .
        rbn_kwargs: keyword-only ``centering``, ``scaling``, ``centering_stat``, ``scaling_stat``
            for every new layer.

    Returns:
        Cell, `cell` converted in place, or a new layer when `cell` is itself a BatchNorm. It takes
        and returns the same shapes as before.

    Raises:
        ValueError: If an `rbn_kwargs` value is invalid.
        TypeError: If `rbn_kwargs` has an unknown name.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore import RepresentativeBatchNorm2d, convert_bn_to_rbn
        >>> net = ms.nn.SequentialCell([ms.nn.Conv2d(3, 4, 3), ms.nn.BatchNorm2d(4)])
        >>> x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32))
        >>> before = net(x).asnumpy()
        >>> net = convert_bn_to_rbn(net)
        >>> isinstance(net[1], RepresentativeBatchNorm2d), net[1].gamma.name
        (True, '1.gamma')
        >>> bool(np.allclose(net(x).asnumpy(), before, atol=1e-5))
        True
    """
    def replacement(name, layer):
        if type(layer) in RBN_FOR_BN:
            return _rbn_from_bn(layer, preserve_output, rbn_kwargs) if predicate is None or predicate(name, layer) \
                else layer
        return None

    return replace_cells(cell, replacement)


def replace_cells(cell, replacement):
    """`cell` with every sub-Cell for which ``replacement(dotted name, cell)`` is not None replaced
    by what it returns (not descending into it), or that replacement if `cell` itself has one.
    The shared walk of ``convert_bn_to_rbn`` and ``SyncRepresentativeBatchNorm.convert_sync_batchnorm``."""
    replaced = _replace(cell, "", replacement)
    if replaced is not None and replaced is not cell:
        return replaced
    # A Cell set as an attribute only gets its attribute name as a prefix ("bn1.gamma"): give
    # every Parameter its full dotted path, as a network built in one go has (checkpoints use it).
    for name, param in cell.parameters_and_names():
        param.name = name
    return cell


def _replace(cell, name, replacement):
    """The replacement of ``cell``, else None (its children replaced in place)."""
    new = replacement(name, cell)
    if new is not None:
        return new
    children = list(cell.name_cells().items())
    for position, (child_name, child) in enumerate(children):
        new = _replace(child, f"{name}.{child_name}" if name else child_name, replacement)
        if new is None or new is child:
            continue
        # Containers run their own list of cells (SequentialCell.cell_list), which setattr
        # would leave pointing at the old BatchNorm: go through their __setitem__.
        if isinstance(cell, (nn.SequentialCell, nn.CellList)):
            cell[position] = new
        elif isinstance(cell, nn.CellDict):
            cell[child_name] = new
        else:
            setattr(cell, child_name, new)
    return None


def _rbn_from_bn(bn, preserve_output, rbn_kwargs):
    inner = bn.bn2d if isinstance(bn, nn.BatchNorm3d) else bn  # BatchNorm3d wraps a BatchNorm2d
    # MindSpore's BatchNorm keeps no affine flag: affine=False and gamma/beta frozen for
    # fine-tuning are the same thing, frozen Parameters that are still applied. So are ours.
    rbn = RBN_FOR_BN[type(bn)](
        inner.num_features, eps=inner.eps, momentum=1.0 - inner.momentum,  # stored as 1 - momentum
        affine=inner.gamma.requires_grad, use_batch_statistics=inner.use_batch_statistics,
        data_format=inner.format, dtype=inner.gamma.dtype, **rbn_kwargs)
    gamma = inner.gamma.value()
    if preserve_output and rbn.scaling:
        gamma = gamma / ops.sigmoid(rbn.scale_bias.value())
    rbn.gamma.set_data(gamma.copy())
    rbn.beta.set_data(inner.beta.value().copy())
    rbn.gamma.requires_grad = inner.gamma.requires_grad
    rbn.beta.requires_grad = inner.beta.requires_grad
    rbn.moving_mean.set_data(inner.moving_mean.value().copy())
    rbn.moving_variance.set_data(inner.moving_variance.value().copy())
    rbn.set_train(bn.training)
    return rbn
