"""The instance statistics of Table 3 and their backward, as pure NumPy functions.

Every statistic keeps the reduced axes (``keepdims``) so that it broadcasts against the
feature map it came from:

- ``mu_c``    mean over the spatial dims             -> shape (N, C, 1, ...)
- ``sigma_c`` sqrt(biased var over spatial + eps)     -> shape (N, C, 1, ...)
- ``mu_s``    mean over the channel dim              -> shape (N, 1, *spatial)
- ``sigma_s`` sqrt(biased var over channels + eps)    -> shape (N, 1, *spatial)

``eps`` inside the square root keeps the gradient finite where a slice is constant
(it always is for ``sigma_c`` of an input with no spatial dims: there ``mu_c(X) = X`` and
``sigma_c(X) = sqrt(eps)``). The layer's own ``eps`` is used, so one number controls both.
"""

import numpy as np

STATISTICS = ("mu_c", "sigma_c", "mu_s", "sigma_s")


def reduction_axes(statistic, ndim):
    """Axes a statistic reduces over: the spatial dims for ``*_c``, the channel dim for ``*_s``."""
    if statistic.endswith("_c"):
        return tuple(range(2, ndim))
    return (1,)


def instance_statistic(statistic, x, eps):
    """``K`` of Eq. 5 / Eq. 9: the named statistic of ``x``, keeping the reduced axes."""
    axes = reduction_axes(statistic, x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    if statistic.startswith("mu"):
        return mean
    return np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)


def instance_statistic_backward(statistic, x, k, dk):
    """Gradient w.r.t. ``x`` of ``sum(dk * K(x))`` where ``k = K(x)``.

    mean:  dK/dx = 1/n                      -> dx = dk / n
    sigma: dK/dx = (x - mean) / (n * sigma) -> dx = dk * (x - mean) / (n * k)
    """
    axes = reduction_axes(statistic, x.ndim)
    count = int(np.prod([x.shape[axis] for axis in axes]))
    if statistic.startswith("mu"):
        return np.broadcast_to(dk / count, x.shape)
    mean = x.mean(axis=axes, keepdims=True)
    return dk * (x - mean) / (count * k)
