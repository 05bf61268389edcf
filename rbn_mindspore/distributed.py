"""Synchronized Representative BatchNorm: Eq. 12 with batch statistics over MindSpore's collectives.

``mindspore.nn.SyncBatchNorm`` runs on Ascend only and is a BatchNorm. ``SyncRepresentativeBatchNorm``
computes the batch moments of ``X_cm`` over the processes of a communication group with
``ops.AllReduce`` (CPU: the ``mccl`` backend under ``msrun`` or the dynamic-cluster variables;
GPU/Ascend: theirs): per-instance moments locally, then the counts and the sums of the instance
means, then the spread around the common mean (``functional._synced_batch_moments``). The
backward goes through MindSpore's own gradient of ``AllReduce``. Every process of the group runs
every collective in every training step, also one that holds no samples (count 0).
"""

import hashlib
import itertools

import mindspore.common.dtype as mstype
from mindspore.communication import GlobalComm, create_group, get_group_size, get_rank

from .convert import replace_cells
from .modules import _RepresentativeBatchNorm

__all__ = ["SyncRepresentativeBatchNorm"]

# rank list -> group name: one communication group per list and process, shared by the layers.
_GROUPS = {}


class SyncRepresentativeBatchNorm(_RepresentativeBatchNorm):
    r"""
    Representative Batch Normalization with the batch statistics of several processes, on
    MindSpore's collectives (``mindspore.communication``; CPU with the ``mccl`` backend under
    ``msrun`` or the dynamic-cluster environment variables, GPU/Ascend with theirs), as
    ``mindspore.nn.SyncBatchNorm`` (Ascend only) is for BatchNorm. Eq. 12:

    .. math::
        X_{cm} = X + w_m \odot K_m, \qquad
        X_m = X_{cm} - \mathrm{E}[X_{cm}], \qquad
        X_s = \frac{X_m}{\sqrt{\mathrm{Var}[X_{cm}] + \epsilon}}, \\
        X_{cs} = X_s \odot \mathrm{sigmoid}(w_v \odot K_s + w_b), \qquad
        Y = X_{cs} \odot \gamma + \beta

    with :math:`\mathrm{E}`, :math:`\mathrm{Var}` over the union of the batches of the processes
    in this process's group in training, each weighted by its number of values (batches may
    differ in size, or be empty): ``AllReduce`` of (C,)-sized sums forward, stable (the spread is
    summed around the common mean); the gradients go back through MindSpore's AllReduce gradient.
    The per-instance statistics :math:`K_m`, :math:`K_s` stay local. Without an initialised
    communication, in a group of one, or when the moving statistics are used, it computes what
    :class:`RepresentativeBatchNorm2d` computes. Every process of a group must call it in every
    step.

    Args:
        num_features (int): `C`.
        eps (float, optional): :math:`\epsilon`. Default: ``1e-5`` .
        momentum (float, optional): as :class:`RepresentativeBatchNorm2d`. Default: ``0.9`` .
        affine (bool, optional): as :class:`RepresentativeBatchNorm2d`. Default: ``True`` .
        gamma_init, beta_init, moving_mean_init, moving_var_init (optional): initializers.
            Default: ``'ones'``, ``'zeros'``, ``'zeros'``, ``'ones'`` .
        use_batch_statistics (bool, optional): as :class:`RepresentativeBatchNorm2d`.
            Default: ``None`` .
        process_groups (list, optional): as in ``mindspore.nn.SyncBatchNorm``: lists of rank ids,
            each list a group that shares its statistics (``[[0, 1], [2, 3]]``); every id in
            ``[0, world size)`` at most once; a process in no list, or in a list of one, computes
            locally. The groups are created (``mindspore.communication.create_group``) once per
            rank list. ``None`` synchronizes all processes. Default: ``None`` .
        dtype (:class:`mindspore.dtype`, optional): float32 or float64; float64 trains only where
            the statistics are local (MindSpore's ``AllReduce`` takes no float64).
            Default: ``mstype.float32`` .
        centering, scaling, centering_stat, scaling_stat (optional): keyword-only, as
            :class:`RepresentativeBatchNorm2d`.

    Inputs:
        - **x** (Tensor) - :math:`(N, C)` to :math:`(N, C, D, H, W)`, NCHW; N may differ between
          processes, and be 0.

    Outputs:
        Tensor of the shape and dtype of `x`.

    Raises:
        TypeError: If `process_groups` is not a list of lists of ints, or a float64 layer trains
            with synchronized statistics.
        ValueError: If a rank id in `process_groups` is negative, repeated, or not below the
            world size.
        RuntimeError: If `process_groups` is given without an initialised communication
            (``mindspore.communication.init()``).
        ValueError: As :class:`RepresentativeBatchNorm2d`.

    Supported Platforms:
        ``CPU`` (tested with 2 processes) ``GPU`` ``Ascend`` (untested)

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore import SyncRepresentativeBatchNorm
        >>> net = SyncRepresentativeBatchNorm(3).set_train()  # one process: local statistics
        >>> print(net(ms.Tensor(np.arange(12, dtype=np.float32).reshape(2, 3, 2))).shape)
        (2, 3, 2)
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.9, affine=True, gamma_init="ones", beta_init="zeros",
                 moving_mean_init="zeros", moving_var_init="ones", use_batch_statistics=None, process_groups=None,
                 dtype=mstype.float32, **rbn_kwargs):
        super().__init__(num_features, eps, momentum, affine, gamma_init, beta_init, moving_mean_init,
                         moving_var_init, use_batch_statistics, "NCHW", dtype, **rbn_kwargs)
        self.process_groups = process_groups
        self._group = _sync_group(process_groups)

    def _check_input_dim(self, ndim):
        if not 2 <= ndim <= 5:
            raise ValueError(f"expected 2D to 5D input (got {ndim}D input)")

    @classmethod
    def convert_sync_batchnorm(cls, cell, process_groups=None):
        r"""Replace every ``RepresentativeBatchNorm1d/2d/3d`` (and ``SyncRepresentativeBatchNorm``) in
        `cell` by a ``SyncRepresentativeBatchNorm`` over `process_groups`, as PyTorch's
        ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for BatchNorm. The new layers hold the old
        ones' Parameters themselves (gamma, beta, the calibration weights, the moving statistics,
        ``num_batches_tracked``: values, names and ``requires_grad`` carry over, and so do
        optimizers built on them) and keep eps, momentum, affine, use_batch_statistics, the
        calibration settings and the training flag. Plain ``nn.BatchNorm*d`` are left alone
        (:func:`rbn_mindspore.convert_bn_to_rbn` turns them into RBN first).

        Args:
            cell (Cell): a network, or one RBN layer.
            process_groups (list, optional): as for the layer. Default: ``None`` .

        Returns:
            Cell, `cell` converted in place, or the new layer when `cell` is itself an RBN layer.

        Raises:
            ValueError: If an RBN layer has ``data_format='NHWC'`` (the synchronized layer is NCHW,
                as ``mindspore.nn.SyncBatchNorm``), or `process_groups` is invalid (see the layer).

        Supported Platforms:
            ``CPU`` (tested) ``GPU`` ``Ascend``

        Examples:
            >>> import mindspore as ms
            >>> from rbn_mindspore import RepresentativeBatchNorm2d, SyncRepresentativeBatchNorm
            >>> net = ms.nn.SequentialCell([ms.nn.Conv2d(3, 4, 3),
            ...                             RepresentativeBatchNorm2d(4, scaling_stat="sigma_c")])
            >>> net = SyncRepresentativeBatchNorm.convert_sync_batchnorm(net)
            >>> type(net[1]).__name__, net[1].scaling_stat, net[1].gamma.name
            ('SyncRepresentativeBatchNorm', 'sigma_c', '1.gamma')
        """
        def replacement(name, layer):
            return cls._from_layer(layer, process_groups) if isinstance(layer, _RepresentativeBatchNorm) else None

        return replace_cells(cell, replacement)

    @classmethod
    def _from_layer(cls, layer, process_groups):
        if layer.data_format != "NCHW":
            raise ValueError(f"SyncRepresentativeBatchNorm takes NCHW input: cannot convert a layer with "
                             f"data_format={layer.data_format!r}")
        sync = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.gamma_init, layer.beta_init,
                   layer.moving_mean_init, layer.moving_var_init, layer.use_batch_statistics, process_groups,
                   layer.gamma.dtype, centering=layer.centering, scaling=layer.scaling,
                   centering_stat=layer.centering_stat, scaling_stat=layer.scaling_stat)
        for name, _ in layer.parameters_and_names():
            setattr(sync, name, getattr(layer, name))  # the Parameter itself: value, name, requires_grad
        sync.set_train(layer.training)
        return sync


def _sync_group(process_groups):
    """The communication group of this process for `process_groups`, or None (compute locally)."""
    if process_groups is None:
        return GlobalComm.WORLD_COMM_GROUP if GlobalComm.INITED and get_group_size() > 1 else None
    if not isinstance(process_groups, list) or not all(
            isinstance(ranks, list) and all(isinstance(rank, int) and not isinstance(rank, bool) for rank in ranks)
            for ranks in process_groups):
        raise TypeError(f"process_groups must be a list of lists of rank ids (ints), as [[0, 1], [2, 3]] "
                        f"(got {process_groups!r})")
    ranks = list(itertools.chain(*process_groups))
    if len(set(ranks)) != len(ranks) or min(ranks, default=0) < 0:
        raise ValueError(f"process_groups must hold each rank id at most once, none negative (got {process_groups})")
    if not GlobalComm.INITED:
        raise RuntimeError("process_groups needs an initialised communication: call mindspore.communication.init() "
                           "(under msrun or the MS_ROLE/MS_SCHED_HOST/MS_WORKER_NUM variables) first")
    world_size, rank = get_group_size(), get_rank()
    if max(ranks, default=0) >= world_size:
        raise ValueError(f"rank ids in process_groups must be below the world size {world_size} "
                         f"(got {process_groups})")
    mine = next((ranks for ranks in process_groups if rank in ranks), [rank])
    if len(mine) == 1:
        return None
    key = tuple(sorted(mine))
    if key not in _GROUPS:
        # a name from the rank list, as mindspore.nn.SyncBatchNorm names its groups
        _GROUPS[key] = f"rbn_{len(key)}_{hashlib.sha256('_'.join(map(str, key)).encode()).hexdigest()[:16]}"
        create_group(_GROUPS[key], list(key))
    return _GROUPS[key]
