"""The shared parity harness: seeded cases, the oracle's run, and the comparison.

Every framework package has a ``parity.py`` adapter with ``FRAMEWORK``, ``version()`` and
``run_module(x, params, state, dy, *, training, momentum, eps, centering_stat,
scaling_stat, steps)``: it builds its own RepresentativeBatchNorm for ``x.ndim``, loads the
canonical ``params``/``state``, calls the layer ``steps`` times, and returns the last call's
output, the gradients of ``sum(y * dy)`` and the running statistics, all as NumPy arrays
under canonical names. :func:`check_case` gives it and the oracle the same arrays and
compares; the pytest suites and ``rbn parity`` both go through it.
"""

import zlib
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from .rbn import backward, forward
from .tolerances import FINITE_DIFFERENCE_STEP, compute_dtype, finite_difference_tolerance, tolerance

TRAINING_STEPS = 3  # several updates of the running statistics, so their recurrence is checked


class NotSupported(Exception):
    """Raised by an adapter for a configuration its framework cannot compute."""


class CaseArrays(NamedTuple):
    """A case's inputs: ``x``, the canonical ``params`` and ``state`` (None: untracked), the upstream ``dy``."""

    x: np.ndarray
    params: dict
    state: Optional[dict]
    dy: np.ndarray


@dataclass(frozen=True)
class Case:
    """One seeded configuration of the layer; ``arrays(dtype)`` draws its inputs."""

    id: str
    shape: tuple
    centering_stat: str = "mu_c"
    scaling_stat: str = "mu_c"
    affine: bool = True
    centering: bool = True
    scaling: bool = True
    momentum: Optional[float] = 0.1
    track_running_stats: bool = True
    eps: float = 1e-5
    offset_factor: float = 1.0  # scales the inputs' channel means (2 to 6 in magnitude at 1.0)
    scale_factor: float = 1.0  # scales their standard deviations (0.5 to 2 at 1.0)

    def __str__(self):
        return self.id

    @property
    def offset_ratio(self):
        """The largest |channel mean| / std the inputs can have, for ``tolerance(dtype, offset_ratio)``."""
        return 6.0 * abs(self.offset_factor) / (0.5 * self.scale_factor)

    @property
    def config(self):
        """Keyword arguments shared by the oracle and every adapter."""
        return dict(momentum=self.momentum, eps=self.eps,
                    centering_stat=self.centering_stat, scaling_stat=self.scaling_stat)

    def arrays(self, dtype="float64"):
        """Inputs far from zero mean, parameters away from their init so every term matters.

        ``x`` and ``dy`` are in ``dtype``; the parameters and running statistics in
        ``compute_dtype(dtype)`` (float32 for float16 input, as BatchNorm keeps them).
        """
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        channels = self.shape[1]
        channel_shape = (1, channels) + (1,) * (len(self.shape) - 2)
        offset = rng.uniform(2.0, 6.0, channel_shape) * rng.choice([-1.0, 1.0], channel_shape) * self.offset_factor
        scale = rng.uniform(0.5, 2.0, channel_shape) * self.scale_factor
        x = offset + scale * rng.standard_normal(self.shape)
        params = {}
        if self.affine:
            params.update(weight=rng.uniform(0.5, 1.5, channels), bias=rng.normal(0.0, 0.5, channels))
        if self.centering:
            params.update(center_weight=rng.uniform(-0.6, 0.6, channels))
        if self.scaling:
            params.update(scale_weight=rng.normal(0.0, 1.0, channels), scale_bias=rng.normal(1.0, 0.5, channels))
        state = None
        if self.track_running_stats:
            state = dict(running_mean=rng.normal(0.0, 3.0, channels),
                         running_var=rng.uniform(0.5, 3.0, channels),
                         num_batches_tracked=np.array(5, dtype=np.int64))
        dy = rng.standard_normal(self.shape)
        cast = lambda array: array.astype(compute_dtype(dtype))  # noqa: E731
        return CaseArrays(
            x.astype(dtype),
            {name: cast(value) for name, value in params.items()},
            None if state is None else {name: value if name == "num_batches_tracked" else cast(value)
                                        for name, value in state.items()},
            dy.astype(dtype),
        )


def _make_cases():
    shapes = {"1d": (8, 3), "1d-len": (4, 3, 5), "2d": (3, 4, 5, 4), "3d": (2, 3, 3, 4, 2)}
    table3 = [("mu_c", "mu_c"), ("mu_c", "mu_s"), ("mu_c", "sigma_c"), ("mu_c", "sigma_s"),
              ("mu_s", "mu_c"), ("sigma_c", "mu_c"), ("sigma_s", "mu_c")]
    cases = [Case(f"2d-{cm}-{cs}", shapes["2d"], cm, cs) for cm, cs in table3]
    cases += [
        Case("1d-mu_c-mu_c", shapes["1d"]),
        Case("1d-sigma_c-sigma_s", shapes["1d"], "sigma_c", "sigma_s"),
        Case("1d-len-mu_c-mu_c", shapes["1d-len"]),
        Case("1d-len-mu_s-sigma_c", shapes["1d-len"], "mu_s", "sigma_c"),
        Case("3d-mu_c-mu_c", shapes["3d"]),
        Case("3d-sigma_c-sigma_s", shapes["3d"], "sigma_c", "sigma_s"),
        Case("2d-mu_c-mu_c-no_affine", shapes["2d"], affine=False),
        Case("2d-mu_c-mu_c-no_centering", shapes["2d"], centering=False),
        Case("2d-mu_c-sigma_c-no_scaling", shapes["2d"], "mu_c", "sigma_c", scaling=False),
        Case("2d-batchnorm", shapes["2d"], centering=False, scaling=False),
        Case("1d-len-batchnorm-no_affine", shapes["1d-len"], affine=False, centering=False, scaling=False),
        Case("2d-mu_c-mu_c-cumulative", shapes["2d"], momentum=None),
        Case("2d-sigma_c-mu_s-untracked", shapes["2d"], "sigma_c", "mu_s", track_running_stats=False),
        Case("3d-mu_s-mu_c-untracked-cumulative", shapes["3d"], "mu_s", "mu_c", momentum=None,
             track_running_stats=False),
    ]
    return tuple(cases)


CASES = _make_cases()
# One case per path, enough for `rbn parity`'s default run: the channel-statistics path (2d), the
# literal path with no spatial dims (1d) and with spatial statistics in 3d, untracked and cumulative,
# the calibrations and the affine off (1d-len: BatchNorm's elementwise eval), momentum None.
# The tests and `rbn parity --full` run every case.
REPRESENTATIVE_CASES = ("2d-mu_c-sigma_c", "1d-sigma_c-sigma_s", "3d-mu_s-mu_c-untracked-cumulative",
                        "1d-len-batchnorm-no_affine", "2d-mu_c-mu_c-cumulative")


def cases(full=True):
    """Every case, or with ``full=False`` the representative ones (:data:`REPRESENTATIVE_CASES`)."""
    return CASES if full else tuple(case for case in CASES if case.id in REPRESENTATIVE_CASES)


DTYPES = ("float32", "float64")
# Mixed precision: float16 input and upstream gradient, float32 parameters (``rbn parity --dtype
# float16``; the frameworks' own test suites cover it too).
MIXED_DTYPES = ("float16",)
MODES = ("train", "eval")


def run_reference(x, params, state, dy, *, training, momentum, eps, centering_stat, scaling_stat, steps):
    """The oracle behind the adapters' interface: ``steps`` calls, gradients of the last."""
    for _ in range(steps):
        y, new_state, cache = forward(x, params, state, training=training, momentum=momentum, eps=eps,
                                      centering_stat=centering_stat, scaling_stat=scaling_stat)
        state = new_state
    grads = backward(dy, cache)
    return {"y": y, "grads": grads, "state": state}


class Check(NamedTuple):
    """One array compared: the error, where it is worst, and the two values there."""

    group: str
    name: str
    dtype: str
    max_abs: float
    max_rel: float
    passed: bool
    detail: str

    def __str__(self):
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{self.name} [{self.dtype}]: {verdict} max abs {self.max_abs:.3g}, "
                f"max rel {self.max_rel:.3g}{'; ' + self.detail if self.detail else ''}")


def compare(group, name, got, want, dtype, tol, array_dtype=None):
    """Compare ``got`` (the framework's) with ``want`` (the oracle's float64).

    ``dtype`` is the run's input dtype, which names the check; ``got`` must be in
    ``array_dtype``, which is ``dtype`` unless given (a float32 parameter of a float16 run).
    """
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    array_dtype = dtype if array_dtype is None else array_dtype
    if got.shape != want.shape:
        return Check(group, name, dtype, np.inf, np.inf, False, f"shape {got.shape}, expected {want.shape}")
    if got.dtype != np.dtype(array_dtype) and not name.endswith("num_batches_tracked"):
        return Check(group, name, dtype, np.inf, np.inf, False, f"dtype {got.dtype}, expected {array_dtype}")
    error = np.abs(got.astype(np.float64) - want)
    if error.size == 0:
        return Check(group, name, dtype, 0.0, 0.0, True, "")
    scale = float(np.abs(want).max())
    max_abs = float(np.nan_to_num(error, nan=np.inf).max())
    # Relative to the array's scale, floored where the tolerance turns absolute: an array
    # that is ~0 (a gradient that cancels exactly) has no meaningful relative error.
    max_rel = max_abs / max(scale, tol.atol / tol.rtol)
    passed = bool(max_abs <= tol.atol + tol.rtol * scale)
    worst = np.unravel_index(int(np.argmax(np.nan_to_num(error, nan=np.inf))), error.shape)
    detail = "" if passed else f"worst at {tuple(int(i) for i in worst)}: got {got[worst]!r}, expected {want[worst]!r}"
    return Check(group, name, dtype, max_abs, max_rel, passed, detail)


def check_case(run_module, case, dtype, training, offset_ratio=0.0):
    """Run ``run_module`` and the oracle on ``case`` and compare everything they return."""
    arrays = case.arrays(dtype)
    steps = TRAINING_STEPS if training else 1
    kwargs = dict(training=training, steps=steps, **case.config)
    want = run_reference(*arrays, **kwargs)
    got = run_module(*arrays, **kwargs)
    tol = tolerance(dtype, offset_ratio)
    # The parameters' gradients and the running statistics are in the compute dtype, and so is
    # their arithmetic: they are judged by its row of the table.
    parameter_dtype = compute_dtype(dtype)
    parameter_tol = tolerance(parameter_dtype, offset_ratio)
    mode = "train" if training else "eval"
    checks = [compare(f"forward ({mode})", f"{case.id} {mode} y", got["y"], want["y"], dtype, tol)]
    for name, grad in want["grads"].items():
        group = "grad x" if name == "x" else "grads of parameters"
        checks.append(compare(group, f"{case.id} {mode} grad {name}", got["grads"].get(name, np.empty(0)),
                              grad, dtype, *((tol,) if name == "x" else (parameter_tol, parameter_dtype))))
    extra = sorted(set(got["grads"]) - set(want["grads"]))
    if extra:
        checks.append(Check("grads of parameters", f"{case.id} {mode} grads", dtype, np.inf, np.inf, False,
                            f"unexpected gradients {extra}"))
    if want["state"] is not None or got["state"] is not None:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            got_value = (got["state"] or {}).get(name, np.empty(0))
            checks.append(compare("running statistics", f"{case.id} {mode} {name}", got_value,
                                  (want["state"] or {}).get(name, np.empty(0)), dtype, parameter_tol,
                                  parameter_dtype))
    return checks


def assert_checks(checks):
    """Raise AssertionError listing every failed check with its worst element."""
    failed = [str(check) for check in checks if not check.passed]
    if failed:
        raise AssertionError("parity failed:\n  " + "\n  ".join(failed))


# ----------------------------------------------------------------------------- finite differences


def numerical_gradient(objective, array, step=FINITE_DIFFERENCE_STEP, indices=None):
    """Central differences of ``objective()`` w.r.t. ``array``, perturbed in place and restored.

    ``indices`` limits the probe to some flat positions (the others are left NaN).
    """
    grad = np.full(array.shape, np.nan)
    flat = array.reshape(-1)  # a view: perturbing it perturbs ``array``
    for index in range(flat.size) if indices is None else indices:
        original = flat[index]
        flat[index] = original + step
        plus = objective()
        flat[index] = original - step
        minus = objective()
        flat[index] = original
        grad.reshape(-1)[index] = (plus - minus) / (2 * step)
    return grad


def finite_difference_checks(case, training, max_probes=None):
    """The oracle's analytic backward against central differences, in float64.

    ``max_probes`` limits each array to that many seeded positions (for the quick CLI report);
    None probes every element.
    """
    x, params, state, dy = case.arrays("float64")
    config = dict(training=training, **case.config)

    def objective():
        return float((forward(x, params, state, **config)[0] * dy).sum())

    y, _, cache = forward(x, params, state, **config)
    grads = backward(dy, cache)
    tol = finite_difference_tolerance(float(np.abs(y * dy).sum()))
    rng = np.random.default_rng(0)
    mode = "train" if training else "eval"
    checks = []
    for name, analytic in grads.items():
        array = x if name == "x" else params[name]
        indices = None
        if max_probes is not None and array.size > max_probes:
            indices = rng.choice(array.size, max_probes, replace=False)
        numeric = numerical_gradient(objective, array, indices=indices)
        probed = ~np.isnan(numeric)
        group = "grad x (finite diff)" if name == "x" else "grads of parameters (finite diff)"
        checks.append(compare(group, f"{case.id} {mode} grad {name}", analytic[probed], numeric[probed],
                              "float64", tol))
    return checks
