"""RepresentativeBatchNorm1d/2d/3d: drop-in replacements for nn.BatchNorm1d/2d/3d."""

import rbn_reference
import torch
from rbn_reference import CALIBRATION_NAMES
from torch import nn
from torch.nn import init
from torch.nn.modules.batchnorm import _NormBase

from .functional import representative_batch_norm

__all__ = ["RepresentativeBatchNorm1d", "RepresentativeBatchNorm2d", "RepresentativeBatchNorm3d"]


class _RepresentativeBatchNorm(_NormBase):
    """Base of the RBN layers: BatchNorm's parameters and buffers plus the calibrations.

    Arguments are ``nn.BatchNorm``'s; keyword-only ``centering``/``scaling`` switch the
    calibrations (Table 2), ``centering_stat``/``scaling_stat`` pick their statistics
    (Table 3: ``"mu_c"``, ``"sigma_c"``, ``"mu_s"``, ``"sigma_s"``).

    Built on ``_NormBase`` and not ``_BatchNorm``, so that helpers that rebuild every
    ``_BatchNorm`` (``nn.SyncBatchNorm.convert_sync_batchnorm``, BatchNorm freezers) do not
    take it for a plain BatchNorm and drop the calibration parameters. Subclasses name the
    input ranks they take in ``_ranks``.
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
        for name in CALIBRATION_NAMES:
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
        for name, value in zip(CALIBRATION_NAMES, (0.0, 0.0, 1.0)):
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
        for name in ("weight", "bias", *CALIBRATION_NAMES):
            value = state_dict.get(prefix + name)
            if value is not None and value.dim() == 4 and value.shape[0] == value.shape[2] == value.shape[3] == 1:
                state_dict[prefix + name] = value.reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, input):
        self._check_input_dim(input)
        # Sizes are tensors under jit.trace; see functional._check_arguments.
        if not torch.jit.is_tracing() and input.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {input.shape[1]}): the layer was built "
                             f"with num_features={self.num_features}; match it to the previous layer's "
                             f"output channels")
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
            training=use_batch_stats, momentum=factor, eps=self.eps, centering_stat=self.centering_stat,
            scaling_stat=self.scaling_stat)

    def _check_input_dim(self, input):
        if input.dim() not in self._ranks:
            expected = " or ".join(f"{rank}D" for rank in self._ranks)
            advice = _RANK_ADVICE.get(input.dim(), "RBN takes (N, C, *) input with 0 to 3 spatial dims")
            raise ValueError(f"expected {expected} input (got {input.dim()}D input): {advice}")


# What to use instead, by the rank that came (the wording starts as nn.BatchNorm's).
_RANK_ADVICE = {2: "use RepresentativeBatchNorm1d for (N, C) input",
                3: "use RepresentativeBatchNorm1d for (N, C, L) input",
                4: "use RepresentativeBatchNorm2d for (N, C, H, W) input",
                5: "use RepresentativeBatchNorm3d for (N, C, D, H, W) input"}

_LAYER_DOC = r"""Representative Batch Normalization (Gao et al., CVPR 2021) over {shape} input.

    A drop-in for :class:`torch.nn.{batchnorm}` with the same arguments, parameters, buffers and
    state-dict names, plus the paper's two calibrations. Per (n, c) instance, with :math:`K_m`,
    :math:`K_s` the statistics ``centering_stat``, ``scaling_stat`` (Table 3), Eq. 12:

    .. math::
        X_{{cm}} = X + w_m \odot K_m(X) \
        X_m = X_{{cm}} - E[X_{{cm}}] \
        X_s = X_m / \sqrt{{Var[X_{{cm}}] + \epsilon}} \
        X_{{cs}} = X_s \odot \sigma(w_v \odot K_s(X_s) + w_b) \
        Y = X_{{cs}} \odot \gamma + eta

    :math:`E`, :math:`Var` are per-channel batch statistics in training and the running
    statistics in eval mode, kept exactly as ``nn.{batchnorm}`` keeps them (``momentum``, the
    unbiased variance, ``num_batches_tracked``). Parameters are (C,) vectors: ``weight``
    (:math:`\gamma`, init 1), ``bias`` (:math:`eta`, 0), ``center_weight`` (:math:`w_m`, 0),
    ``scale_weight`` (:math:`w_v`, 0), ``scale_bias`` (:math:`w_b`, 1). An empty batch gives an
    empty output, NaN/Inf propagate, and half-precision input is computed in float32, all as
    ``nn.{batchnorm}`` does.

    Args:
        num_features (int): C, the number of channels.
        eps (float): added to the variances. Default: 1e-5.
        momentum (float or None): factor of the new batch value in the running update; None is
            a cumulative average. Default: 0.1.
        affine (bool): learn :math:`\gamma` and :math:`eta`. Default: True.
        track_running_stats (bool): keep running statistics for eval mode. Default: True.
        device, dtype: of the parameters and buffers. Default: None.
        bias (bool, keyword-only): learn :math:`eta` (with ``affine``). Default: True.
        centering (bool, keyword-only): centering calibration (Table 2). Default: True.
        scaling (bool, keyword-only): scaling calibration (Table 2). Default: True.
        centering_stat (str, keyword-only): :math:`K_m`: ``"mu_c"``, ``"sigma_c"``, ``"mu_s"``
            or ``"sigma_s"``. Default: ``"mu_c"``.
        scaling_stat (str, keyword-only): :math:`K_s`, the same four. Default: ``"mu_c"``.

    Shape:
        - Input: {shape}
        - Output: {shape} (same shape and dtype as input)

    Example::

        >>> import torch
        >>> from rbn_torch import {name}
        >>> layer = {name}(3)
        >>> x = torch.randn({example})
        >>> layer(x).shape
        torch.Size([{example}])
        >>> layer.num_batches_tracked
        tensor(1)
    """


class RepresentativeBatchNorm1d(_RepresentativeBatchNorm):
    __doc__ = _LAYER_DOC.format(name="RepresentativeBatchNorm1d", batchnorm="BatchNorm1d",
                                shape=":math:`(N, C)` or :math:`(N, C, L)`", example="4, 3, 10")
    _ranks = (2, 3)


class RepresentativeBatchNorm2d(_RepresentativeBatchNorm):
    __doc__ = _LAYER_DOC.format(name="RepresentativeBatchNorm2d", batchnorm="BatchNorm2d",
                                shape=":math:`(N, C, H, W)`", example="4, 3, 8, 8")
    _ranks = (4,)


class RepresentativeBatchNorm3d(_RepresentativeBatchNorm):
    __doc__ = _LAYER_DOC.format(name="RepresentativeBatchNorm3d", batchnorm="BatchNorm3d",
                                shape=":math:`(N, C, D, H, W)`", example="4, 3, 2, 8, 8")
    _ranks = (5,)
