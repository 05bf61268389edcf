"""RepresentativeBatchNorm1d/2d/3d Cells: ``mindspore.nn.BatchNorm*d`` plus the two calibrations."""

import mindspore.common.dtype as mstype
from mindspore import Parameter, Tensor, nn
from mindspore.common.initializer import initializer

from rbn_reference import check_statistic

from .functional import representative_batch_norm


class _RepresentativeBatchNorm(nn.Cell):
    r"""Representative BatchNorm (Gao et al., CVPR 2021): BatchNorm with a centering
    calibration ``X_cm = X + w_m * K_m`` before it and a scaling calibration
    ``X_cs = X_s * sigmoid(w_v * K_s + w_b)`` before the affine transform (Eq. 12).

    The interface is ``mindspore.nn.BatchNorm2d``'s, with MindSpore's names and momentum
    convention; what differs:

    - keyword-only ``centering``/``scaling`` switch the calibrations, ``centering_stat``/
      ``scaling_stat`` choose K_m/K_s among ``mu_c``, ``sigma_c``, ``mu_s``, ``sigma_s``.
    - ``momentum=None`` keeps a cumulative average of the batch statistics, counted in the
      non-trainable Parameter ``num_batches_tracked`` (always present, as in PyTorch).
    - ``dtype`` may be float64 (MindSpore's BatchNorm takes float16/float32 only); the input
      must have the layer's dtype.
    - ``data_format="NHWC"`` (2d only) also works on CPU.

    Names: ``gamma``/``beta``/``moving_mean``/``moving_variance`` are PyTorch's ``weight``/
    ``bias``/``running_mean``/``running_var`` (the canonical names of the other frameworks, see
    :func:`rbn_mindspore.state_dict_to_numpy`); ``center_weight`` (w_m), ``scale_weight``
    (w_v), ``scale_bias`` (w_b) are the same everywhere. ``momentum`` 0.9 here is PyTorch's 0.1:
    ``moving = momentum * moving + (1 - momentum) * batch``, with the unbiased batch variance.
    Calibrations start as in the paper: w_m = 0, w_v = 0, w_b = 1. With ``affine=False``,
    ``gamma``/``beta`` stay 1/0 and are not trained (as in MindSpore's BatchNorm).
    """

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

    def construct(self, x):
        self._check_input_dim(x.ndim)
        if x.dtype != self.gamma.dtype:
            raise TypeError(f"expected {self.gamma.dtype} input (got {x.dtype} input)")
        if self.data_format == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {x.shape[1]})")
        use_batch_statistics = self.training if self.use_batch_statistics is None else self.use_batch_statistics
        y = representative_batch_norm(
            x, self.moving_mean, self.moving_variance,
            self.gamma if self.affine else None, self.beta if self.affine else None,
            self.center_weight, self.scale_weight, self.scale_bias,
            training=use_batch_statistics,
            momentum=self._update_factor,
            eps=self.eps, centering_stat=self.centering_stat, scaling_stat=self.scaling_stat,
            num_batches_tracked=self.num_batches_tracked)
        if self.data_format == "NHWC":
            y = y.transpose(0, 2, 3, 1)
        return y


class RepresentativeBatchNorm1d(_RepresentativeBatchNorm):
    __doc__ = _RepresentativeBatchNorm.__doc__ + "\n    Input (N, C) or (N, C, L).\n"

    def _check_input_dim(self, ndim):
        if ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {ndim}D input)")
        if self.data_format != "NCHW":
            raise ValueError(f"data_format {self.data_format!r} is only for 2d layers")


class RepresentativeBatchNorm2d(_RepresentativeBatchNorm):
    __doc__ = _RepresentativeBatchNorm.__doc__ + "\n    Input (N, C, H, W), or (N, H, W, C) with data_format='NHWC'.\n"

    def _check_input_dim(self, ndim):
        if ndim != 4:
            raise ValueError(f"expected 4D input (got {ndim}D input)")


class RepresentativeBatchNorm3d(_RepresentativeBatchNorm):
    __doc__ = _RepresentativeBatchNorm.__doc__ + "\n    Input (N, C, D, H, W).\n"

    def _check_input_dim(self, ndim):
        if ndim != 5:
            raise ValueError(f"expected 5D input (got {ndim}D input)")
        if self.data_format != "NCHW":
            raise ValueError(f"data_format {self.data_format!r} is only for 2d layers")
