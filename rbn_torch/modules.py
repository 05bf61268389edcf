"""RepresentativeBatchNorm1d/2d/3d: drop-in replacements for nn.BatchNorm1d/2d/3d."""

import rbn_reference
import torch
from torch import nn
from torch.nn import init
from torch.nn.modules.batchnorm import _NormBase

from .functional import representative_batch_norm

__all__ = ["RepresentativeBatchNorm1d", "RepresentativeBatchNorm2d", "RepresentativeBatchNorm3d"]

_CALIBRATION_PARAMETERS = ("center_weight", "scale_weight", "scale_bias")


class _RepresentativeBatchNorm(_NormBase):
    """Base of the RBN layers: BatchNorm's parameters and buffers plus the calibrations.

    Arguments are ``nn.BatchNorm``'s; keyword-only ``centering``/``scaling`` switch the
    calibrations (Table 2), ``centering_stat``/``scaling_stat`` pick their statistics
    (Table 3: ``"mu_c"``, ``"sigma_c"``, ``"mu_s"``, ``"sigma_s"``).

    Built on ``_NormBase`` and not ``_BatchNorm``, so that helpers that rebuild every
    ``_BatchNorm`` (``nn.SyncBatchNorm.convert_sync_batchnorm``, BatchNorm freezers) do not
    take it for a plain BatchNorm and drop the calibration parameters.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, *, bias=True, centering=True, scaling=True, centering_stat="mu_c", scaling_stat="mu_c"):
        rbn_reference.check_statistic("centering_stat", centering_stat)
        rbn_reference.check_statistic("scaling_stat", scaling_stat)
        # ``bias=False`` (affine weight only) is recent in nn.BatchNorm; older torch lacks the argument.
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         **({} if bias else {"bias": False}))
        self.centering = centering
        self.scaling = scaling
        self.centering_stat = centering_stat
        self.scaling_stat = scaling_stat
        enabled = {"center_weight": centering, "scale_weight": scaling, "scale_bias": scaling}
        for name in _CALIBRATION_PARAMETERS:
            if enabled[name]:
                self.register_parameter(name, nn.Parameter(torch.empty(num_features, device=device, dtype=dtype)))
            else:
                self.register_parameter(name, None)
        self._reset_calibration()

    def reset_parameters(self):
        super().reset_parameters()
        self._reset_calibration()

    def _reset_calibration(self):
        """The paper's init (w_m = 0, w_v = 0, w_b = 1): centering a no-op, scaling a constant gate."""
        # _NormBase.__init__ calls reset_parameters before the calibration parameters exist.
        for name, value in zip(_CALIBRATION_PARAMETERS, (0.0, 0.0, 1.0)):
            if getattr(self, name, None) is not None:
                init.constant_(getattr(self, name), value)

    def extra_repr(self):
        text = super().extra_repr()
        if self.centering:
            text += f", centering_stat={self.centering_stat!r}"
        else:
            text += ", centering=False"
        if self.scaling:
            text += f", scaling_stat={self.scaling_stat!r}"
        else:
            text += ", scaling=False"
        return text

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The authors' released code stores every parameter as (1, C, 1, 1).
        for name in ("weight", "bias", *_CALIBRATION_PARAMETERS):
            value = state_dict.get(prefix + name)
            if value is not None and value.dim() == 4 and value.shape[0] == value.shape[2] == value.shape[3] == 1:
                state_dict[prefix + name] = value.reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, input):
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {input.shape[1]})")
        # Exactly nn.BatchNorm's bookkeeping: which statistics to use, and the update factor.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        return representative_batch_norm(
            input, self.running_mean if tracked else None, self.running_var if tracked else None,
            self.weight, self.bias, self.center_weight, self.scale_weight, self.scale_bias,
            use_batch_stats, factor, self.eps, self.centering_stat, self.scaling_stat)


class RepresentativeBatchNorm1d(_RepresentativeBatchNorm):
    """Representative BatchNorm over (N, C) or (N, C, L) input; a drop-in for ``nn.BatchNorm1d``."""

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class RepresentativeBatchNorm2d(_RepresentativeBatchNorm):
    """Representative BatchNorm over (N, C, H, W) input; a drop-in for ``nn.BatchNorm2d``."""

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class RepresentativeBatchNorm3d(_RepresentativeBatchNorm):
    """Representative BatchNorm over (N, C, D, H, W) input; a drop-in for ``nn.BatchNorm3d``."""

    def _check_input_dim(self, input):
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
