"""Argument checks shared by the oracle and every framework package, on shapes and names only.

One wording everywhere, like the frameworks' own layers: what was expected, what came.
"""

import math

import numpy as np

from .statistics import STATISTICS


def check_statistic(argname, value):
    """Raise ``ValueError`` unless ``value`` names one of the statistics of Table 3."""
    if value not in STATISTICS:
        raise ValueError(f"{argname} must be one of {', '.join(STATISTICS)} (got {value!r})")


def check_input(shape, dtype, is_floating, *, uses_batch_statistics, processes=1):
    """An (N, C, *spatial) floating-point input with 0 to 3 spatial dims.

    With batch statistics each channel needs more than one value (as ``F.batch_norm``), counted
    over the ``processes`` that share the batch statistics (each holding this shape).
    """
    shape = tuple(shape)
    if not is_floating:
        raise TypeError(f"expected a floating-point input (got {dtype})")
    if not 2 <= len(shape) <= 5:
        raise ValueError(f"expected 2D to 5D input (got {len(shape)}D input)")
    if uses_batch_statistics and math.prod(shape[:1] + shape[2:]) * processes == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {shape}")


def check_channel_vectors(channels, shapes):
    """Every per-channel vector (name -> shape, None when absent) has shape (C,)."""
    for name, shape in shapes.items():
        if shape is not None and tuple(shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) for an input with {channels} channels "
                             f"(got {tuple(shape)})")


PAIRS = (("weight", "bias"), ("scale_weight", "scale_bias"), ("running_mean", "running_var"))


def check_pairs(present):
    """Arguments that only make sense together (name -> whether given) are given together."""
    for first, second in PAIRS:
        if first in present and present[first] != present.get(second):
            raise ValueError(f"{first!r} and {second!r} must be given together or not at all")


def check_dtypes(dtype, dtypes):
    """Every per-channel vector (name -> dtype, None when absent) has the input's ``dtype``."""
    for name, value in dtypes.items():
        if value is not None and value != dtype:
            raise TypeError(f"{name} has dtype {value}, expected the input's {dtype}")


class StateDictError(KeyError, ValueError):
    """A state dict that does not fit the model: missing, unexpected or mis-shaped entries.

    Every framework package raises it, so one ``except`` works for all three. It is a
    ``KeyError`` (names) and a ``ValueError`` (shapes) at once: code written for either keeps
    working.
    """

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def fit_shape(array, shape, *, rbn_vector):
    """``array`` in ``shape``: as it is or, for an RBN vector, from the authors' released
    ``(1, C, 1, 1)`` form; None when it fits neither."""
    shape = tuple(shape)
    if array.shape == shape:
        return array
    if rbn_vector and array.shape == (1, *shape, 1, 1):
        return array.reshape(shape)
    return None


def check_state_dict(what, missing, unexpected, mis_shaped, *, strict):
    """Raise one ``StateDictError`` listing every problem (names only count when ``strict``).

    ``mis_shaped``: ``{name: (expected shape, shape that came)}``.
    """
    problems = [f"{name}: expected shape {tuple(want)} (got {tuple(got)})"
                for name, (want, got) in sorted(mis_shaped.items())]
    if strict and missing:
        problems.append(f"missing keys {sorted(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {sorted(unexpected)}")
    if problems:
        raise StateDictError(f"cannot load {what}: " + "; ".join(problems))


def check_arrays(what, arrays, shapes):
    """Raise one ``StateDictError`` unless ``arrays`` has exactly the names of ``shapes`` (name ->
    expected shape), each array in its shape."""
    mis_shaped = {name: (shape, np.shape(arrays[name]))
                  for name, shape in shapes.items() if name in arrays and np.shape(arrays[name]) != tuple(shape)}
    check_state_dict(what, set(shapes) - set(arrays), set(arrays) - set(shapes), mis_shaped, strict=True)
