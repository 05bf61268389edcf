"""Representative BatchNorm layers, following ``jittor.nn.BatchNorm``."""

import jittor as jt
from rbn_reference import check_statistic

from . import functional as F


class RepresentativeBatchNorm(jt.nn.Module):
    """Representative BatchNorm (Gao et al., CVPR 2021) for (N, C) to (N, C, D, H, W) inputs.

    A drop-in for ``jittor.nn.BatchNorm`` (same arguments, ``execute``, ``is_train``,
    ``train()``/``eval()``, MPI ``sync``), plus the centering calibration
    ``X + w_m * K_m`` before standardization and the scaling calibration
    ``X_s * sigmoid(w_v * K_s + w_b)`` after it (Eq. 12). What differs from
    ``jittor.nn.BatchNorm``:

    - ``running_var`` receives the UNBIASED batch variance, as in PyTorch (Jittor's
      BatchNorm feeds the biased one), and ``momentum=None`` is PyTorch's cumulative
      average; the update is ``(1 - momentum) * old + momentum * batch`` either way.
    - batch moments are two-pass, exact for inputs far from zero mean.
    - ``affine=False`` leaves ``weight``/``bias`` as None (Jittor's BatchNorm uses 1.0/0.0),
      ``track_running_stats=False`` always normalizes with batch statistics, and
      ``num_batches_tracked`` counts training calls.
    - ``load_state_dict`` is strict (see :func:`rbn_jittor.load_numpy_state_dict`).

    Parameters ``weight`` (gamma), ``bias`` (beta), ``center_weight`` (w_m),
    ``scale_weight`` (w_v), ``scale_bias`` (w_b) have shape (C,); the running statistics
    are stop_grad Vars, so optimizers leave them alone. ``centering_stat``/``scaling_stat``
    pick ``K_m``/``K_s`` among Table 3's ``mu_c``, ``sigma_c``, ``mu_s``, ``sigma_s``.
    Like every Jittor layer, ``eval()`` stops the parameters' gradients; set
    ``is_train = False`` instead to differentiate in inference mode.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, is_train=True,
                 sync=True, *, track_running_stats=True, centering=True, scaling=True,
                 centering_stat="mu_c", scaling_stat="mu_c"):
        check_statistic("centering_stat", centering_stat)
        check_statistic("scaling_stat", scaling_stat)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.is_train = is_train
        self.sync = sync
        self.track_running_stats = track_running_stats
        self.centering = centering
        self.scaling = scaling
        self.centering_stat = centering_stat
        self.scaling_stat = scaling_stat
        shape = (num_features,)
        self.weight = jt.ones(shape) if affine else None
        self.bias = jt.zeros(shape) if affine else None
        self.center_weight = jt.zeros(shape) if centering else None
        self.scale_weight = jt.zeros(shape) if scaling else None
        self.scale_bias = jt.ones(shape) if scaling else None
        if track_running_stats:
            self.running_mean = jt.zeros(shape).stop_grad()
            self.running_var = jt.ones(shape).stop_grad()
            self.num_batches_tracked = jt.zeros((1,), "int64").stop_grad()
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self):
        if self.track_running_stats:
            for stat, value in ((self.running_mean, 0), (self.running_var, 1),
                                (self.num_batches_tracked, 0)):
                stat.update(jt.full_like(stat, value))

    def reset_parameters(self):
        """Paper's initialization: gamma = 1, beta = 0, w_m = 0, w_v = 0, w_b = 1."""
        self.reset_running_stats()
        for name, value in (("weight", 1), ("bias", 0), ("center_weight", 0),
                            ("scale_weight", 0), ("scale_bias", 1)):
            param = getattr(self, name)
            if param is not None:
                param.update(jt.full_like(param, value))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, is_train={self.is_train}, sync={self.sync}, "
                f"track_running_stats={self.track_running_stats}, "
                f"centering={self.centering}, scaling={self.scaling}, "
                f"centering_stat={self.centering_stat!r}, scaling_stat={self.scaling_stat!r}")

    def _check_input_dim(self, x):
        if not 2 <= x.ndim <= 5:
            raise ValueError(f"expected 2D to 5D input (got {x.ndim}D input)")

    def execute(self, x):
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {x.shape[1]})")
        momentum = self.momentum
        if self.is_train and self.track_running_stats:
            self.num_batches_tracked.update(self.num_batches_tracked + 1)
            if momentum is None:  # cumulative average, kept lazy: no sync to read the count
                count = self.num_batches_tracked.cast(self.running_mean.dtype)
                momentum = jt.ones_like(count) / count  # 1.0 / count can come out float32
        return F.representative_batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.center_weight, self.scale_weight, self.scale_bias,
            training=self.is_train, momentum=momentum, eps=self.eps,
            centering_stat=self.centering_stat, scaling_stat=self.scaling_stat,
            sync=self.sync)

    def load_state_dict(self, params, strict=True):
        """Strict, unlike ``jittor.nn.Module.load_state_dict``: see ``load_numpy_state_dict``."""
        from .convert import load_numpy_state_dict  # convert.py imports this module

        return load_numpy_state_dict(self, params, strict=strict)


class RepresentativeBatchNorm1d(RepresentativeBatchNorm):
    def _check_input_dim(self, x):
        if x.ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.ndim}D input)")


class RepresentativeBatchNorm2d(RepresentativeBatchNorm):
    def _check_input_dim(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected 4D input (got {x.ndim}D input)")


class RepresentativeBatchNorm3d(RepresentativeBatchNorm):
    def _check_input_dim(self, x):
        if x.ndim != 5:
            raise ValueError(f"expected 5D input (got {x.ndim}D input)")
