"""Representative BatchNorm layers, following ``jittor.nn.BatchNorm``."""

import jittor as jt
from rbn_reference import check_statistic

from . import functional as F
from .state_dict import load_numpy_state_dict

_EQUATION = """
    Per (n, c) instance, with ``K_m``, ``K_s`` the statistics ``centering_stat``,
    ``scaling_stat`` (Table 3: ``mu_c``, ``sigma_c``, ``mu_s``, ``sigma_s``)::

        X_cm = X + w_m * K_m(X)
        X_m  = X_cm - E[X_cm]
        X_s  = X_m / sqrt(Var[X_cm] + eps)
        X_cs = X_s * sigmoid(w_v * K_s(X_s) + w_b)
        Y    = X_cs * gamma + beta

    ``E``, ``Var`` are the batch mean and biased variance per channel in training, the
    running statistics in eval mode.
"""

_ARGS = """
    Args:
        num_features (int): C, the number of channels.
        eps (float): added to the variances. Default: 1e-5.
        momentum (float or None): factor of the new batch value in the running update;
            None is PyTorch's cumulative average. Default: 0.1.
        affine (bool): learn gamma (``weight``) and beta (``bias``). Default: True.
        is_train (bool): start in training mode. Default: True.
        sync (bool): under ``mpirun``, the batch moments of the union of the processes' batches,
            weighted by their sizes (every process needs a sample). Default: True, as
            ``jittor.nn.BatchNorm``.
        track_running_stats (bool): keep running statistics; without them batch statistics
            are used in eval mode too. Keyword-only. Default: True.
        centering (bool): learn w_m, the centering calibration. Keyword-only. Default: True.
        scaling (bool): learn w_v and w_b, the scaling calibration. Keyword-only. Default: True.
        centering_stat (str): K_m. Keyword-only. Default: ``"mu_c"``.
        scaling_stat (str): K_s. Keyword-only. Default: ``"mu_c"``.
"""


class RepresentativeBatchNorm(jt.nn.Module):
    __doc__ = """Representative BatchNorm (Gao et al., CVPR 2021) for (N, C) to (N, C, D, H, W) inputs.

    A drop-in for ``jittor.nn.BatchNorm`` (same arguments, ``execute``, ``is_train``,
    ``train()``/``eval()``, MPI ``sync``), plus the centering calibration before
    standardization and the scaling calibration after it (Eq. 12).
""" + _EQUATION + """
    What differs from ``jittor.nn.BatchNorm``:

    - ``running_var`` receives the UNBIASED batch variance, as in PyTorch (Jittor's
      BatchNorm feeds the biased one), and ``momentum=None`` is PyTorch's cumulative
      average; the update is ``(1 - momentum) * old + momentum * batch`` either way.
    - batch moments are two-pass, exact for inputs far from zero mean.
    - ``affine=False`` leaves ``weight``/``bias`` as None (Jittor's BatchNorm uses 1.0/0.0),
      and ``track_running_stats=False`` always normalizes with batch statistics.
    - ``num_batches_tracked`` counts training calls. It is kept out of ``parameters()`` and
      of Jittor's ``state_dict()`` (as ``_num_batches_tracked``, the way Jittor keeps its own
      non-trainable state), so ``jt.grad(loss, model.parameters())`` works as with
      ``jittor.nn.BatchNorm``; :func:`rbn_jittor.state_dict_to_numpy` and
      :func:`rbn_jittor.load_numpy_state_dict` carry it.
    - ``load_state_dict`` is strict (see :func:`rbn_jittor.load_numpy_state_dict`).

    Parameters ``weight`` (gamma), ``bias`` (beta), ``center_weight`` (w_m),
    ``scale_weight`` (w_v), ``scale_bias`` (w_b) have shape (C,) and the paper's init
    (1, 0, 0, 0, 1); the running statistics are stop_grad Vars, so optimizers leave them
    alone. Like every Jittor layer, ``eval()`` stops the parameters' gradients; set
    ``is_train = False`` instead to differentiate in inference mode.
""" + _ARGS + """
    Shape:
        - Input: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W).
        - Output: the same shape and dtype as the input.

    Example::

        >>> import jittor as jt
        >>> import rbn_jittor
        >>> layer = rbn_jittor.RepresentativeBatchNorm(4)
        >>> tuple(layer(jt.randn(3, 4, 5, 4)).shape)
        (3, 4, 5, 4)
        >>> tuple(layer(jt.randn(3, 4)).shape)
        (3, 4)
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
            # "_": out of parameters() (jt.grad refuses an integer target) and of Jittor's state_dict()
            self._num_batches_tracked = jt.zeros((1,), "int64").stop_grad()
        else:
            self.running_mean = self.running_var = self._num_batches_tracked = None

    @property
    def num_batches_tracked(self):
        """The number of training calls, an int64 Var of shape (1,) (None without running statistics)."""
        return self._num_batches_tracked

    def reset_running_stats(self):
        """Running mean 0, running variance 1, batch count 0."""
        if self.track_running_stats:
            for stat, value in ((self.running_mean, 0), (self.running_var, 1),
                                (self._num_batches_tracked, 0)):
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
            raise ValueError(f"expected 2D to 5D input (got {x.ndim}D input): the layer takes (N, C) "
                             "to (N, C, D, H, W)")

    def execute(self, x):
        """Normalize ``x`` (see the class docstring); in training, update the running statistics."""
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (got {x.shape[1]}): the input must be "
                             f"channels-first (N, C, ...), or build the layer with num_features={x.shape[1]}")
        momentum = self.momentum
        if self.is_train and self.track_running_stats:
            self._num_batches_tracked.update(self._num_batches_tracked + 1)
            if momentum is None:  # cumulative average, kept lazy: no sync to read the count
                count = self._num_batches_tracked.cast(self.running_mean.dtype)
                momentum = jt.ones_like(count) / count  # 1.0 / count can come out float32
        return F.representative_batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.center_weight, self.scale_weight, self.scale_bias,
            training=self.is_train, momentum=momentum, eps=self.eps,
            centering_stat=self.centering_stat, scaling_stat=self.scaling_stat,
            sync=self.sync)

    def load_state_dict(self, params, strict=True):
        """Strict, unlike ``jittor.nn.Module.load_state_dict``: see :func:`rbn_jittor.load_numpy_state_dict`."""
        return load_numpy_state_dict(self, params, strict=strict)


def _rank_error(x, expected, name, advice):
    return ValueError(f"expected {expected} input (got {x.ndim}D input): {name} takes {advice}")


class RepresentativeBatchNorm1d(RepresentativeBatchNorm):
    __doc__ = """Representative BatchNorm for (N, C) or (N, C, L) inputs, like ``jittor.nn.BatchNorm1d``.
""" + _EQUATION + """
    See :class:`RepresentativeBatchNorm` for what differs from ``jittor.nn.BatchNorm``.
""" + _ARGS + """
    Shape:
        - Input: (N, C) or (N, C, L).
        - Output: the same shape and dtype as the input.

    Example::

        >>> import jittor as jt
        >>> import rbn_jittor
        >>> layer = rbn_jittor.RepresentativeBatchNorm1d(4)
        >>> tuple(layer(jt.randn(3, 4)).shape)
        (3, 4)
    """

    def _check_input_dim(self, x):
        if x.ndim not in (2, 3):
            raise _rank_error(x, "2D or 3D", "RepresentativeBatchNorm1d", "(N, C) or (N, C, L); "
                              "use RepresentativeBatchNorm2d for (N, C, H, W), 3d for (N, C, D, H, W)")


class RepresentativeBatchNorm2d(RepresentativeBatchNorm):
    __doc__ = """Representative BatchNorm for (N, C, H, W) inputs, like ``jittor.nn.BatchNorm2d``.
""" + _EQUATION + """
    See :class:`RepresentativeBatchNorm` for what differs from ``jittor.nn.BatchNorm``.
""" + _ARGS + """
    Shape:
        - Input: (N, C, H, W).
        - Output: the same shape and dtype as the input.

    Example::

        >>> import jittor as jt
        >>> import rbn_jittor
        >>> layer = rbn_jittor.RepresentativeBatchNorm2d(4, centering_stat="sigma_c")
        >>> tuple(layer(jt.randn(3, 4, 5, 4)).shape)
        (3, 4, 5, 4)
        >>> int(layer.num_batches_tracked.item())
        1
    """

    def _check_input_dim(self, x):
        if x.ndim != 4:
            raise _rank_error(x, "4D", "RepresentativeBatchNorm2d", "(N, C, H, W); "
                              "use RepresentativeBatchNorm1d for (N, C) or (N, C, L), 3d for (N, C, D, H, W)")


class RepresentativeBatchNorm3d(RepresentativeBatchNorm):
    __doc__ = """Representative BatchNorm for (N, C, D, H, W) inputs, like ``jittor.nn.BatchNorm3d``.
""" + _EQUATION + """
    See :class:`RepresentativeBatchNorm` for what differs from ``jittor.nn.BatchNorm``.
""" + _ARGS + """
    Shape:
        - Input: (N, C, D, H, W).
        - Output: the same shape and dtype as the input.

    Example::

        >>> import jittor as jt
        >>> import rbn_jittor
        >>> layer = rbn_jittor.RepresentativeBatchNorm3d(4)
        >>> tuple(layer(jt.randn(3, 4, 2, 3, 3)).shape)
        (3, 4, 2, 3, 3)
    """

    def _check_input_dim(self, x):
        if x.ndim != 5:
            raise _rank_error(x, "5D", "RepresentativeBatchNorm3d", "(N, C, D, H, W); "
                              "use RepresentativeBatchNorm2d for (N, C, H, W), 1d for (N, C) or (N, C, L)")
