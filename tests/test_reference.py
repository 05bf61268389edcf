"""The NumPy oracle: analytic backward against finite differences, and the paper's identities."""

import itertools

import numpy as np
import pytest

import rbn_reference
from rbn_reference import parity
from rbn_reference.parity import Case, assert_checks, finite_difference_checks
from tolerances import TOLERANCES

SHAPES = {"1d": (8, 3), "1d-len": (4, 3, 5), "2d": (3, 4, 5, 4), "3d": (2, 3, 3, 4, 2)}
TIGHT = TOLERANCES["float64"]


def gradient_cases():
    """Every statistic pair with both calibrations, each calibration alone, none; x dims x affine."""
    calibrations = [(True, True, cm, cs) for cm, cs in itertools.product(rbn_reference.STATISTICS, repeat=2)]
    calibrations += [(True, False, cm, "mu_c") for cm in rbn_reference.STATISTICS]
    calibrations += [(False, True, "mu_c", cs) for cs in rbn_reference.STATISTICS]
    calibrations += [(False, False, "mu_c", "mu_c")]
    for dim, (centering, scaling, cm, cs), affine in itertools.product(SHAPES, calibrations, (True, False)):
        label = f"{dim}-{cm if centering else 'off'}-{cs if scaling else 'off'}{'' if affine else '-no_affine'}"
        yield Case(label, SHAPES[dim], cm, cs, affine=affine, centering=centering, scaling=scaling)


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("case", list(gradient_cases()), ids=str)
def test_backward_matches_finite_differences(case, mode):
    assert_checks(finite_difference_checks(case, mode == "train"))


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("case", [case for case in parity.CASES if not case.track_running_stats or case.momentum is None],
                         ids=str)
def test_backward_matches_finite_differences_untracked_and_cumulative(case, mode):
    assert_checks(finite_difference_checks(case, mode == "train"))


def plain_batch_norm(x, mean=None, var=None, eps=1e-5):
    """BatchNorm written out independently of the oracle's step functions."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes) if mean is None else mean
    var = x.var(axis=axes) if var is None else var
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def channel_vector(array, x):
    return array.reshape((1, -1) + (1,) * (x.ndim - 2))


@pytest.mark.parametrize("dim", SHAPES)
@pytest.mark.parametrize("mode", parity.MODES)
def test_zero_calibration_weights_give_batchnorm_times_sigmoid_of_scale_bias(dim, mode):
    x, params, state, _ = Case(dim, SHAPES[dim]).arrays()
    params.update(center_weight=np.zeros(x.shape[1]), scale_weight=np.zeros(x.shape[1]))
    y, _, _ = rbn_reference.forward(x, params, state, training=mode == "train")
    if mode == "train":
        normalized = plain_batch_norm(x)
    else:
        normalized = plain_batch_norm(x, state["running_mean"], state["running_var"])
    gate = 1.0 / (1.0 + np.exp(-params["scale_bias"]))
    expected = normalized * channel_vector(gate * params["weight"], x) + channel_vector(params["bias"], x)
    np.testing.assert_allclose(y, expected, rtol=TIGHT.rtol, atol=TIGHT.atol)


def test_calibrations_off_give_batchnorm():
    x, params, state, _ = Case("2d", SHAPES["2d"], centering=False, scaling=False, affine=False).arrays()
    y, _, _ = rbn_reference.forward(x, params, state)
    np.testing.assert_allclose(y, plain_batch_norm(x), rtol=TIGHT.rtol, atol=TIGHT.atol)


@pytest.mark.parametrize("dim", ["1d-len", "2d", "3d"])
def test_eq6_running_mean_of_calibrated_features(dim):
    """Eq. 6: with K_m = mu_c, E(X_cm) = (1 + w_m) E(X); momentum 1 keeps the last batch's mean."""
    x, params, state, _ = Case(dim, SHAPES[dim]).arrays()
    _, new_state, _ = rbn_reference.forward(x, params, state, momentum=1.0)
    batch_mean = x.mean(axis=(0,) + tuple(range(2, x.ndim)))
    np.testing.assert_allclose(new_state["running_mean"], (1 + params["center_weight"]) * batch_mean,
                               rtol=TIGHT.rtol, atol=TIGHT.atol)


@pytest.mark.parametrize("dim", ["1d-len", "2d", "3d"])
def test_eq8_centered_difference(dim):
    """Eq. 8: X_cal - X_no = w_m (K_m - E(X))."""
    from rbn_reference.rbn import batch_moments, centering_calibration
    from rbn_reference.statistics import instance_statistic

    x, params, _, _ = Case(dim, SHAPES[dim]).arrays()
    k_m = instance_statistic("mu_c", x, 1e-5)
    x_cm = centering_calibration(x, params["center_weight"], k_m)
    x_cal = x_cm - channel_vector(batch_moments(x_cm)[0], x)
    x_no = x - channel_vector(batch_moments(x)[0], x)
    expected = channel_vector(params["center_weight"], x) * (k_m - channel_vector(batch_moments(x)[0], x))
    np.testing.assert_allclose(x_cal - x_no, np.broadcast_to(expected, x.shape), rtol=TIGHT.rtol, atol=TIGHT.atol)


def hand_running_stats(batches, params, momentum, state):
    """The running-statistics recurrence, by hand: X_cm with mu_c, unbiased variance."""
    mean, var, count = state["running_mean"].copy(), state["running_var"].copy(), int(state["num_batches_tracked"])
    for x in batches:
        axes = (0,) + tuple(range(2, x.ndim))
        x_cm = x + channel_vector(params["center_weight"], x) * x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)
        count += 1
        factor = 1.0 / count if momentum is None else momentum
        mean = (1 - factor) * mean + factor * x_cm.mean(axis=axes)
        var = (1 - factor) * var + factor * x_cm.var(axis=axes, ddof=1)
    return mean, var, count


@pytest.mark.parametrize("momentum", [0.1, 0.5, None], ids=["0.1", "0.5", "cumulative"])
def test_running_statistics_over_several_steps(momentum):
    case = Case("2d", SHAPES["2d"])
    _, params, state, _ = case.arrays()
    batches = [Case(f"batch{step}", SHAPES["2d"]).arrays().x for step in range(4)]
    new_state = state
    for x in batches:
        _, new_state, _ = rbn_reference.forward(x, params, new_state, momentum=momentum)
    mean, var, count = hand_running_stats(batches, params, momentum, state)
    np.testing.assert_allclose(new_state["running_mean"], mean, rtol=TIGHT.rtol, atol=TIGHT.atol)
    np.testing.assert_allclose(new_state["running_var"], var, rtol=TIGHT.rtol, atol=TIGHT.atol)
    assert int(new_state["num_batches_tracked"]) == count == 5 + len(batches)


def test_cumulative_average_from_fresh_state_is_the_mean_of_batch_means():
    _, params, _, _ = Case("2d", SHAPES["2d"]).arrays()
    state = dict(running_mean=np.zeros(4), running_var=np.ones(4), num_batches_tracked=np.array(0))
    batches = [Case(f"batch{step}", SHAPES["2d"]).arrays().x for step in range(3)]
    for x in batches:
        _, state, _ = rbn_reference.forward(x, params, state, momentum=None)
    means = [hand_running_stats([x], params, 1.0, dict(state, num_batches_tracked=0))[0] for x in batches]
    np.testing.assert_allclose(state["running_mean"], np.mean(means, axis=0), rtol=TIGHT.rtol, atol=TIGHT.atol)


def test_eval_and_untracked_do_not_touch_state():
    x, params, state, _ = Case("2d", SHAPES["2d"]).arrays()
    _, eval_state, _ = rbn_reference.forward(x, params, state, training=False)
    assert eval_state is state
    y_train, untracked, _ = rbn_reference.forward(x, params, None, training=True)
    y_eval, _, _ = rbn_reference.forward(x, params, None, training=False)
    assert untracked is None
    np.testing.assert_array_equal(y_train, y_eval)  # batch statistics in both modes


def test_inputs_are_not_modified():
    x, params, state, dy = Case("2d", SHAPES["2d"]).arrays()
    copies = [x.copy(), {k: v.copy() for k, v in params.items()}, {k: np.copy(v) for k, v in state.items()}, dy.copy()]
    _, _, cache = rbn_reference.forward(x, params, state)
    rbn_reference.backward(dy, cache)
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(dy, copies[3])
    for original, copy in ((params, copies[1]), (state, copies[2])):
        for name in copy:
            np.testing.assert_array_equal(original[name], copy[name])


def test_float32_input_is_computed_in_float64():
    case = Case("2d", SHAPES["2d"])
    x64, params, state, _ = case.arrays("float64")
    x32 = case.arrays("float32").x
    y32, _, _ = rbn_reference.forward(x32, params, state)
    y64, _, _ = rbn_reference.forward(x32.astype(np.float64), params, state)
    assert y32.dtype == np.float64
    np.testing.assert_array_equal(y32, y64)


@pytest.mark.parametrize("statistic", ["mu_c", "sigma_c"])
def test_channel_statistics_without_spatial_dims(statistic):
    """With no spatial dims mu_c(X) = X and sigma_c(X) = sqrt(eps) (documented in docs/math.md)."""
    from rbn_reference.statistics import instance_statistic

    x = Case("1d", SHAPES["1d"]).arrays().x
    expected = x if statistic == "mu_c" else np.full_like(x, np.sqrt(1e-5))
    np.testing.assert_array_equal(instance_statistic(statistic, x, 1e-5), expected)


def bad_forward(x=None, params=None, state=None, **kwargs):
    case_x, case_params, case_state, _ = Case("2d", SHAPES["2d"]).arrays()
    rbn_reference.forward(case_x if x is None else x, case_params if params is None else params,
                          case_state if state is None else state, **kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda: bad_forward(x=np.zeros((4,))), r"expected 2D to 5D input \(got 1D input\)"),
    (lambda: bad_forward(x=np.zeros((2, 4, 1, 1, 1, 1))), r"expected 2D to 5D input \(got 6D input\)"),
    (lambda: bad_forward(x=np.zeros((2, 5, 3))), r"weight must have shape \(5,\) for an input with 5 channels \(got \(4,\)\)"),
    (lambda: bad_forward(params={"weight": np.ones(4)}), r"'weight' and 'bias' must be given together"),
    (lambda: bad_forward(params={"gamma": np.ones(4)}), r"params may only have keys .* \(got gamma\)"),
    (lambda: bad_forward(state={"running_mean": np.zeros(4)}), r"state is missing running_var, num_batches_tracked"),
    (lambda: bad_forward(state={"running_mean": np.zeros(3), "running_var": np.ones(4), "num_batches_tracked": 0}),
     r"running_mean must have shape \(4,\) for an input with 4 channels \(got \(3,\)\)"),
    (lambda: bad_forward(centering_stat="mean"),
     r"centering_stat must be one of mu_c, sigma_c, mu_s, sigma_s \(got 'mean'\)"),
    (lambda: bad_forward(scaling_stat="std"), r"scaling_stat must be one of mu_c, sigma_c, mu_s, sigma_s \(got 'std'\)"),
    (lambda: bad_forward(x=np.zeros((1, 4))),
     r"Expected more than 1 value per channel when training, got input size \(1, 4\)"),
], ids=["ndim-low", "ndim-high", "channels", "pair", "unknown-param", "state-keys", "state-shape",
        "centering-stat", "scaling-stat", "one-value"])
def test_bad_input_is_refused_with_expected_and_given(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"expected a floating-point input \(got int64\)"):
        bad_forward(x=np.zeros((2, 4, 3), dtype=np.int64))


def test_one_value_per_channel_is_fine_in_eval_with_running_stats():
    x, params, state, _ = Case("2d", SHAPES["2d"]).arrays()
    y, _, _ = rbn_reference.forward(x[:1, :, :1, :1], params, state, training=False)
    assert y.shape == (1, 4, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        rbn_reference.forward(x[:1, :, :1, :1], params, None, training=False)


def test_state_dict_error_lists_every_problem_and_is_key_and_value_error():
    with pytest.raises(rbn_reference.StateDictError) as error:
        rbn_reference.check_state_dict("net.ckpt", {"b", "a"}, ["z"], {"w": ((3,), (4,))}, strict=True)
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
    assert str(error.value) == ("cannot load net.ckpt: w: expected shape (3,) (got (4,)); "
                                "missing keys ['a', 'b']; unexpected keys ['z']")
    rbn_reference.check_state_dict("net.ckpt", ["a"], ["z"], {}, strict=False)  # names ignored
    with pytest.raises(rbn_reference.StateDictError,
                       match=r"^cannot load x: v: expected shape \(2,\) \(got \(\)\); w: expected shape \(3,\) \(got \(3, 1\)\)$"):
        rbn_reference.check_state_dict("x", ["a"], [], {"w": ((3,), (3, 1)), "v": ((2,), ())}, strict=False)


def test_fit_shape_takes_the_authors_form_of_rbn_vectors_only():
    vector = np.arange(3.0)
    assert rbn_reference.fit_shape(vector, (3,), rbn_vector=False) is vector
    authors = vector.reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(rbn_reference.fit_shape(authors, (3,), rbn_vector=True), vector)
    assert rbn_reference.fit_shape(authors, (3,), rbn_vector=False) is None
    assert rbn_reference.fit_shape(vector.reshape(3, 1), (3,), rbn_vector=True) is None
    assert rbn_reference.fit_shape(vector, (4,), rbn_vector=True) is None
