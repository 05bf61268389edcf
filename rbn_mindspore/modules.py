"""RepresentativeBatchNorm1d/2d/3d Cells: ``mindspore.nn.BatchNorm1d/2d/3d`` plus the two calibrations."""

import mindspore.common.dtype as mstype
from mindspore import Parameter, Tensor, nn
from mindspore.common.initializer import initializer

from rbn_reference import check_statistic

from .functional import _HALF_TYPES, representative_batch_norm


class _RepresentativeBatchNorm(nn.Cell):
    """The Cell behind RepresentativeBatchNorm1d/2d/3d (documented there): parameters, moving
    statistics, resets, and the mapping of MindSpore's names onto the functional's canonical ones."""

    def __init__(self, num_features, eps=1e-5, momentum=0.9, affine=True, gamma_init="ones",
                 beta_init="zeros", moving_mean_init="zeros", moving_var_init="ones",
                 use_batch_statistics=None, data_format="NCHW", dtype=mstype.float32, *,
                 centering=True, scaling=True, centering_stat="mu_c", scaling_stat="mu_c"):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int (got {num_features!r})")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None (got {momentum!r})")
        if use_batch_statistics is not None and not isinstance(use_batch_statistics, bool):
            raise ValueError(f"use_batch_statistics must be a bool or None (got {use_batch_statistics!r})")
        if data_format not in ("NCHW", "NHWC"):
            raise ValueError(f"data_format must be 'NCHW' or 'NHWC' (got {data_format!r})")
        if dtype not in (mstype.float32, mstype.float64):
            raise TypeError(f"dtype must be mindspore.float32 or mindspore.float64 (got {dtype})")
        check_statistic("centering_stat", centering_stat)
        check_statistic("scaling_stat", scaling_stat)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.use_batch_statistics = use_batch_statistics
        self.data_format = data_format
        self.centering = centering
        self.scaling = scaling
        self.centering_stat = centering_stat
        self.scaling_stat = scaling_stat
        self.gamma_init, self.beta_init = gamma_init, beta_init
        self._group = None  # a communication group: rbn_mindspore.distributed.SyncRepresentativeBatchNorm
        self.moving_mean_init, self.moving_var_init = moving_mean_init, moving_var_init

        self.gamma = Parameter(initializer(gamma_init, num_features, dtype), name="gamma", requires_grad=affine)
        self.beta = Parameter(initializer(beta_init, num_features, dtype), name="beta", requires_grad=affine)
        self.moving_mean = Parameter(initializer(moving_mean_init, num_features, dtype), name="moving_mean",
                                     requires_grad=False)
        self.moving_variance = Parameter(initializer(moving_var_init, num_features, dtype),
                                         name="moving_variance", requires_grad=False)
        self.num_batches_tracked = Parameter(Tensor(0, mstype.int64), name="num_batches_tracked",
                                             requires_grad=False)
        self.center_weight = None
        self.scale_weight = self.scale_bias = None
        if centering:
            self.center_weight = Parameter(initializer("zeros", num_features, dtype), name="center_weight")
        if scaling:
            self.scale_weight = Parameter(initializer("zeros", num_features, dtype), name="scale_weight")
            self.scale_bias = Parameter(initializer("ones", num_features, dtype), name="scale_bias")

    @property
    def momentum(self):
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        self._momentum = value
        # The functional's (PyTorch) factor, computed here in Python: in Graph mode
        # ``1.0 - self.momentum`` inside construct is float32 arithmetic (1 - 0.9 = 0.10000002).
        self._update_factor = None if value is None else 1.0 - value

    def reset_running_stats(self):
        """Moving statistics back to their init, the batch counter to 0."""
        self.moving_mean.set_data(initializer(self.moving_mean_init, self.num_features, self.moving_mean.dtype))
        self.moving_variance.set_data(initializer(self.moving_var_init, self.num_features,
                                                  self.moving_variance.dtype))
        self.num_batches_tracked.set_data(Tensor(0, mstype.int64))

    def reset_parameters(self):
        """Everything back to its init: statistics, gamma/beta, calibrations as in the paper."""
        self.reset_running_stats()
        self.gamma.set_data(initializer(self.gamma_init, self.num_features, self.gamma.dtype))
        self.beta.set_data(initializer(self.beta_init, self.num_features, self.beta.dtype))
        if self.centering:
            self.center_weight.set_data(initializer("zeros", self.num_features, self.center_weight.dtype))
        if self.scaling:
            self.scale_weight.set_data(initializer("zeros", self.num_features, self.scale_weight.dtype))
            self.scale_bias.set_data(initializer("ones", self.num_features, self.scale_bias.dtype))

    def extend_repr(self):
        return (f"num_features={self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, use_batch_statistics={self.use_batch_statistics}, "
                f"centering={self.centering}, scaling={self.scaling}, "
                f"centering_stat={self.centering_stat}, scaling_stat={self.scaling_stat}")

    def _check_input_dim(self, ndim):
        raise NotImplementedError

    def add_flags(self, **flags):
        """Mixed precision (``to_float``, ``mindspore.amp`` O2/O3) reaches every Cell here: RBN stays a
        float32 island, as ``AMP_BLACK_LIST`` keeps ``nn.BatchNorm*d`` under O2. With a float16
        flag MindSpore would cast the inputs of every op inside ``construct`` to float16, and the
        statistics overflow (an unbiased batch variance of inf)."""
        if flags.get("fp16") or flags.get("bf16"):
            flags = dict(flags, fp16=False, bf16=False, fp32=True)
        return super().add_flags(**flags)

    def construct(self, x):
        self._check_input_dim(x.ndim)
        # float16/bfloat16 into a float32 layer is mixed precision (AMP O2/O3 cast the inputs of
        # every Cell): computed in float32, as MindSpore's BatchNorm. Anything else is a mistake.
        if x.dtype != self.gamma.dtype and not (x.dtype in _HALF_TYPES and self.gamma.dtype == mstype.float32):
            raise TypeError(f"expected {self.gamma.dtype} input (got {x.dtype} input)")
        if self.data_format == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {x.shape[1]})")
        use_batch_statistics = self.training if self.use_batch_statistics is None else self.use_batch_statistics
        # MindSpore's names on the Cell, the canonical ones in the functional.
        y = representative_batch_norm(
            x, self.moving_mean, self.moving_variance,
            weight=self.gamma, bias=self.beta,  # applied even when frozen (affine=False), as in nn.BatchNorm2d
            center_weight=self.center_weight, scale_weight=self.scale_weight, scale_bias=self.scale_bias,
            training=use_batch_statistics,
            momentum=self._update_factor,
            eps=self.eps, centering_stat=self.centering_stat, scaling_stat=self.scaling_stat,
            num_batches_tracked=self.num_batches_tracked, group=self._group)
        if self.data_format == "NHWC":
            y = y.transpose(0, 2, 3, 1)
        return y


_DOCSTRING = r"""
    Representative Batch Normalization (Gao et al., CVPR 2021) over a {rank} input: MindSpore's
    ``nn.BatchNorm{dims}`` with a centering calibration before the normalization and a scaling
    calibration before the affine transform (Eq. 12):

    .. math::
        X_{{cm}} = X + w_m \odot K_m, \qquad
        X_m = X_{{cm}} - \mathrm{{E}}[X_{{cm}}], \qquad
        X_s = \frac{{X_m}}{{\sqrt{{\mathrm{{Var}}[X_{{cm}}] + \epsilon}}}}, \\
        X_{{cs}} = X_s \odot \mathrm{{sigmoid}}(w_v \odot K_s + w_b), \qquad
        Y = X_{{cs}} \odot \gamma + \beta

    :math:`K_m`, :math:`K_s` are per-instance statistics: ``"mu_c"`` (the mean over the spatial
    dims, the paper's choice), ``"sigma_c"`` (their standard deviation), ``"mu_s"``,
    ``"sigma_s"`` (over the channels). :math:`w_m` is `center_weight`, :math:`w_v`,
    :math:`w_b` are `scale_weight`, `scale_bias` (init 0, 0, 1, as in the paper; Parameters
    named so). :math:`\mathrm{{E}}`, :math:`\mathrm{{Var}}` are the batch statistics when batch
    statistics are used, else `moving_mean`, `moving_variance`, updated as in MindSpore's
    BatchNorm: ``moving = momentum * moving + (1 - momentum) * batch``, with the unbiased batch
    variance. The input is never modified. :func:`rbn_mindspore.functional.representative_batch_norm`
    is the pure function (with the canonical names ``weight``, ``bias``, ``running_mean``,
    ``running_var``; :func:`rbn_mindspore.state_dict_to_numpy` maps the names).

    Args:
        num_features (int): `C`, the number of channels of the input.
        eps (float, optional): :math:`\epsilon`. Default: ``1e-5`` .
        momentum (float, optional): weight of the old moving statistics in the update; ``None``
            keeps a cumulative average, counted in the int64 Parameter `num_batches_tracked`
            (present in every layer, as in PyTorch). Default: ``0.9`` .
        affine (bool, optional): whether :math:`\gamma` and :math:`\beta` are trained. As in
            MindSpore's BatchNorm (and unlike PyTorch's), ``False`` freezes them at their init
            (`gamma_init`, `beta_init`) and still applies them. Default: ``True`` .
        gamma_init (Union[Tensor, str, Initializer, numbers.Number], optional): initializer of
            :math:`\gamma`. Default: ``'ones'`` .
        beta_init (Union[Tensor, str, Initializer, numbers.Number], optional): initializer of
            :math:`\beta`. Default: ``'zeros'`` .
        moving_mean_init (Union[Tensor, str, Initializer, numbers.Number], optional): initializer
            of the moving mean. Default: ``'zeros'`` .
        moving_var_init (Union[Tensor, str, Initializer, numbers.Number], optional): initializer
            of the moving variance. Default: ``'ones'`` .
        use_batch_statistics (bool, optional): ``True``: always the batch statistics (and
            updates); ``False``: always the moving statistics; ``None``: batch statistics in
            training (``set_train()``), moving ones otherwise. Default: ``None`` .
        data_format (str, optional): {data_format} Default: ``'NCHW'`` .
        dtype (:class:`mindspore.dtype`, optional): dtype of the Parameters and of the input,
            ``mstype.float32`` or ``mstype.float64``. Default: ``mstype.float32`` .
        centering (bool, optional): keyword-only; the centering calibration (Eq. 5).
            Default: ``True`` .
        scaling (bool, optional): keyword-only; the scaling calibration (Eq. 9). Default: ``True`` .
        centering_stat (str, optional): keyword-only; :math:`K_m`. Default: ``"mu_c"`` .
        scaling_stat (str, optional): keyword-only; :math:`K_s`. Default: ``"mu_c"`` .

    Inputs:
        - **x** (Tensor) - {input_shape}, of the layer's dtype; a float32 layer also takes
          float16/bfloat16 (mixed precision, ``mindspore.amp`` O2/O3): statistics and per-channel
          math in float32, Parameters and moving statistics stay float32, the output in the
          input's dtype, as MindSpore's BatchNorm does.

    Outputs:
        Tensor of the shape and dtype of `x`.

    Raises:
        TypeError: If `dtype` is not float32 or float64, or `x` has another dtype (but float16/
            bfloat16 into a float32 layer).
        ValueError: If `num_features` is not a positive int, `momentum` is not in [0, 1] or
            ``None``, `use_batch_statistics` is not a bool or ``None``, `data_format` is neither
            ``'NCHW'`` nor ``'NHWC'``{data_format_raise}, or a statistic name is unknown.
        ValueError: If `x` {rank_raise}, or has not `num_features` channels. (As MindSpore's
            BatchNorm, one value per channel in training gives `beta` and a NaN moving variance; an
            empty batch gives an empty output and leaves the moving statistics as they are.)

    Note:
        To train in PyNative mode on CPU, call ``mindspore.runtime.launch_blocking()`` once before
        building the network: with PyNative's asynchronous queue each layer waits for it twice a
        step (1.5-1.7x BatchNorm's step on a ResNet; 1.01-1.08x without the queue, docs/mindspore.md).

    Supported Platforms:
        ``CPU`` (tested: fused kernels, or the BatchNorm-primitive path) ``GPU`` ``Ascend``
        (the BatchNorm-primitive path; untested)

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore import {name}
        >>> net = {name}(num_features=3).set_train()
        >>> x = ms.Tensor(np.arange({size}, dtype=np.float32).reshape({example_shape}))
        >>> output = net(x)
        >>> print(output.shape)
        {example_shape}
        >>> print(net.moving_mean.asnumpy().round(3))
        {example_mean}
"""


class RepresentativeBatchNorm1d(_RepresentativeBatchNorm):
    __doc__ = _DOCSTRING.format(
        name="RepresentativeBatchNorm1d", rank="2D or 3D", dims="1d", input_shape=":math:`(N, C)` or :math:`(N, C, L)`",
        data_format="only ``'NCHW'`` (channels second).", data_format_raise=" (or is ``'NHWC'``, at the call)",
        rank_raise="is not 2D or 3D", size=6, example_shape="(2, 3)", example_mean="[0.15 0.25 0.35]")

    def _check_input_dim(self, ndim):
        if ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {ndim}D input)")
        if self.data_format != "NCHW":
            raise ValueError(f"data_format {self.data_format!r} is only for 2d layers")


class RepresentativeBatchNorm2d(_RepresentativeBatchNorm):
    __doc__ = _DOCSTRING.format(
        name="RepresentativeBatchNorm2d", rank="4D", dims="2d",
        input_shape=":math:`(N, C, H, W)`, or :math:`(N, H, W, C)` with ``data_format='NHWC'``",
        data_format="``'NCHW'`` or ``'NHWC'`` (also on CPU, unlike MindSpore's BatchNorm).",
        data_format_raise="", rank_raise="is not 4D", size=24, example_shape="(2, 3, 2, 2)",
        example_mean="[0.75 1.15 1.55]")

    def _check_input_dim(self, ndim):
        if ndim != 4:
            raise ValueError(f"expected 4D input (got {ndim}D input)")


class RepresentativeBatchNorm3d(_RepresentativeBatchNorm):
    __doc__ = _DOCSTRING.format(
        name="RepresentativeBatchNorm3d", rank="5D", dims="3d", input_shape=":math:`(N, C, D, H, W)`",
        data_format="only ``'NCHW'`` (channels second).", data_format_raise=" (or is ``'NHWC'``, at the call)",
        rank_raise="is not 5D", size=48, example_shape="(2, 3, 2, 2, 2)", example_mean="[1.55 2.35 3.15]")

    def _check_input_dim(self, ndim):
        if ndim != 5:
            raise ValueError(f"expected 5D input (got {ndim}D input)")
        if self.data_format != "NCHW":
            raise ValueError(f"data_format {self.data_format!r} is only for 2d layers")
