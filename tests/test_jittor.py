"""rbn_jittor against the oracle, and against Jittor's own BatchNorm."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

jt = pytest.importorskip("jittor")

import rbn_jittor  # noqa: E402
import rbn_reference  # noqa: E402
from rbn_jittor import functional as F  # noqa: E402
from rbn_jittor.parity import run_module  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import TOLERANCES, tolerance  # noqa: E402

SHAPE = (3, 4, 5, 4)  # the parity cases' 2d shape: kernels compiled for it are reused
CALIBRATIONS_OFF = dict(centering=False, scaling=False)


def random_input(seed=0, shape=SHAPE, mean=3.0):
    return np.random.default_rng(seed).normal(mean, 2.0, shape).astype(np.float32)


def assert_close(got, want, dtype="float32"):
    tol = TOLERANCES[dtype]
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol.atol + tol.rtol * np.abs(want).max())


@pytest.mark.parametrize("dtype", parity.DTYPES + parity.MIXED_DTYPES)
@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("case", parity.CASES, ids=str)
def test_parity(case, mode, dtype):
    parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))


@pytest.mark.parametrize("case", [case for case in parity.CASES if case.id in
                                  ("2d-mu_c-mu_c", "2d-mu_c-sigma_c", "2d-mu_s-mu_c")], ids=str)
def test_mean_1e4_float32_matches_float64_oracle(case):
    """Two-pass moments: at mean 1e4 / std 1 only the rounding of the mean itself remains."""
    x, params, state, dy = case.arrays("float64")
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True) + 1e4
    kwargs = dict(training=True, steps=1, **case.config)
    want = parity.run_reference(x, params, state, dy, **kwargs)
    as32 = lambda array: array.astype(np.float32)  # noqa: E731
    got = run_module(as32(x), {k: as32(v) for k, v in params.items()},
                     {k: v if k == "num_batches_tracked" else as32(v) for k, v in state.items()},
                     as32(dy), **kwargs)
    tol = tolerance("float32", offset_ratio=1e4)
    checks = [parity.compare("y", "y", got["y"], want["y"], "float32", tol)]
    checks += [parity.compare("grad", name, got["grads"][name], grad, "float32", tol)
               for name, grad in want["grads"].items()]
    parity.assert_checks(checks)
    # Jittor's own BatchNorm (E[x^2] - E[x]^2) cannot do this: the test has teeth
    bn = jt.nn.BatchNorm2d(x.shape[1])
    y_bn = bn(jt.array(as32(x))).numpy()
    want_bn = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    assert np.abs(y_bn - want_bn).max() > tol.atol + tol.rtol * np.abs(want_bn).max()


def test_channel_and_literal_paths_agree_through_functional():
    """The affine-form path and the literal path are two codes for one formula."""
    x = jt.array(random_input(1))
    rng = np.random.default_rng(2)
    vectors = {name: jt.array(rng.uniform(0.5, 1.5, SHAPE[1]).astype(np.float32))
               for name in ("weight", "bias", "center_weight", "scale_weight", "scale_bias")}
    y_channel = F.representative_batch_norm(x, None, None, training=True, **vectors)
    y_literal = F._literal_path(x, rbn_reference.Parameters(**vectors), None, rbn_reference.Options(), None)[0]
    assert_close(y_channel.numpy(), y_literal.numpy())


# A process that has run nothing else: first a user's float32 (1,) constant feeding two ops, then a
# one-channel float64 layer loaded and run, then parity cases of both paths in float32 and then
# float64. The grid above runs in an order that hid the bug this guards against.
FLOAT32_THEN_FLOAT64 = """
from rbn import frameworks
frameworks.prepare_import("jittor")
import jittor as jt
import numpy as np
from rbn_jittor import RepresentativeBatchNorm2d
from rbn_jittor.parity import run_module
from rbn_jittor.state_dict import load_numpy_state_dict, state_dict_to_numpy
from rbn_reference import parity

# a user's float32 constant, shared by two fused kernels of different shapes
x, v, eps = jt.ones((3, 4, 20)), jt.ones(4), jt.array(np.array([1e-5], np.float32))
y = x / jt.sqrt(v + eps).reshape((1, -1, 1))
(y.sum([1], keepdims=True) + eps).sync()
# a one-channel float64 layer: its vectors are (1,) arrays when loaded
with jt.flag_scope(auto_convert_64_to_32=0):
    layer = RepresentativeBatchNorm2d(1)
    layer.float64()
    loaded = {name: np.full_like(value, 0.7) for name, value in state_dict_to_numpy(layer).items()
              if value.dtype == np.float64}
    load_numpy_state_dict(layer, loaded, strict=False)
    layer(jt.array(np.random.default_rng(0).normal(size=(4, 1, 3, 3)))).sync()
state = state_dict_to_numpy(layer)
for name in ("weight", "bias", "center_weight", "scale_weight", "scale_bias"):
    np.testing.assert_array_equal(state[name], loaded[name], err_msg=name)
for case in parity.CASES:
    if case.id in ("2d-mu_c-mu_c", "2d-mu_c-sigma_s", "2d-sigma_c-mu_s-untracked"):
        for mode in parity.MODES:
            for dtype in ("float32", "float64"):
                parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))
"""
FRESH_PROCESS_TIMEOUT_S = 600  # its kernels may be cold (about a minute here)


def test_float64_after_float32_in_a_fresh_process_matches_the_oracle():
    """A (1,) array left in Jittor's graph ran another dtype's kernel (``functional._constant``):
    after the user's float32 constant, the channel path (its eps is float64) was off by up to 1.4
    on float64 inputs and 4e-4 on float32 ones, and a one-channel float64 layer's loaded weights
    read 0 (``load_numpy_state_dict``)."""
    result = subprocess.run([sys.executable, "-c", FLOAT32_THEN_FLOAT64], cwd=pathlib.Path(__file__).parents[1],
                            capture_output=True, text=True, timeout=FRESH_PROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]


# ----------------------------------------------------------------------------- BatchNorm


def test_calibrations_off_equals_jittor_batch_norm():
    x_np = random_input(3)
    rbn = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1], **CALIBRATIONS_OFF)
    bn = jt.nn.BatchNorm2d(SHAPE[1])
    weight = np.linspace(0.5, 1.5, SHAPE[1]).astype(np.float32)
    for layer in (rbn, bn):
        layer.weight.update(jt.array(weight))
        layer.bias.update(jt.array(-weight))
    dy = jt.array(random_input(4, mean=0.0))
    results = []
    for layer in (rbn, bn):
        x = jt.array(x_np)
        y = layer(x)
        results.append([y.numpy()] + [g.numpy() for g in jt.grad((y * dy).sum(), [x, layer.weight, layer.bias])])
    for got, want in zip(*results):
        assert_close(got, want)
    assert_close(rbn.running_mean.numpy(), bn.running_mean.numpy())
    # running_var: ours is fed the unbiased batch variance, Jittor's the biased one
    n = x_np.size // SHAPE[1]
    unbiased = 0.9 + 0.1 * x_np.var(axis=(0, 2, 3)) * n / (n - 1)
    assert_close(rbn.running_var.numpy(), unbiased)
    assert not np.allclose(bn.running_var.numpy(), unbiased, rtol=1e-3)
    for layer in (rbn, bn):
        layer.eval()
    assert_close(rbn(jt.array(x_np)).numpy(),
                 (x_np - rbn.running_mean.numpy()[:, None, None]) / np.sqrt(rbn.running_var.numpy()[:, None, None] + 1e-5)
                 * weight[:, None, None] - weight[:, None, None])


# ----------------------------------------------------------------------------- the layer


def test_parameters_buffers_and_init():
    layer = rbn_jittor.RepresentativeBatchNorm2d(3)
    trainable = {name for name, var in layer.named_parameters() if not var.is_stop_grad()}
    assert trainable == {"weight", "bias", "center_weight", "scale_weight", "scale_bias"}
    arrays = rbn_jittor.state_dict_to_numpy(layer)
    assert set(arrays) == trainable | {"running_mean", "running_var", "num_batches_tracked"}
    expected = dict(weight=1, bias=0, center_weight=0, scale_weight=0, scale_bias=1, running_mean=0, running_var=1)
    for name, value in expected.items():
        np.testing.assert_array_equal(arrays[name], np.full(3, value, np.float32))
    assert arrays["num_batches_tracked"].shape == () and arrays["num_batches_tracked"].dtype == np.int64


def test_optimizer_leaves_running_statistics_alone():
    layer = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1])
    optimizer = jt.optim.SGD(layer.parameters(), lr=0.5)
    x = jt.array(random_input(5))
    optimizer.step((layer(x) * jt.array(random_input(6, mean=0.0))).sum())
    arrays = rbn_jittor.state_dict_to_numpy(layer)
    x_np = random_input(5)
    n = x_np.size // SHAPE[1]
    assert_close(arrays["running_mean"], 0.1 * x_np.mean(axis=(0, 2, 3)))
    assert_close(arrays["running_var"], 0.9 + 0.1 * x_np.var(axis=(0, 2, 3)) * n / (n - 1))
    assert arrays["num_batches_tracked"] == 1
    assert not np.allclose(arrays["center_weight"], 0)  # the parameters did train


def test_eval_train_and_is_train():
    layer = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1])
    x = jt.array(random_input(7))
    layer.eval()
    assert layer.is_train is False and layer.weight.is_stop_grad()
    y_eval = layer(x).numpy()  # running stats (0, 1): only the calibrations act
    np.testing.assert_allclose(y_eval, random_input(7) / np.sqrt(1 + 1e-5) / (1 + np.exp(-1)), rtol=1e-5)
    assert int(layer.num_batches_tracked.numpy()[0]) == 0
    layer.train()
    assert layer.is_train is True and not layer.weight.is_stop_grad()
    assert layer.running_mean.is_stop_grad()


def test_input_is_not_modified():
    x_np = random_input(8)
    layer = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1])
    layer.center_weight.update(jt.array(np.full(SHAPE[1], 0.5, np.float32)))
    x = jt.array(x_np)
    layer(x).sync()
    np.testing.assert_array_equal(x.numpy(), x_np)


def test_reset_and_repr():
    layer = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1], centering_stat="sigma_c")
    layer(jt.array(random_input(9))).sync()
    layer.center_weight.update(jt.ones(SHAPE[1]))
    layer.reset_parameters()
    arrays = rbn_jittor.state_dict_to_numpy(layer)
    np.testing.assert_array_equal(arrays["center_weight"], 0)
    np.testing.assert_array_equal(arrays["running_var"], 1)
    assert arrays["num_batches_tracked"] == 0
    assert not layer.center_weight.is_stop_grad() and layer.running_var.is_stop_grad()
    assert "RepresentativeBatchNorm2d(4, eps=1e-05, momentum=0.1" in str(layer)
    assert "centering_stat='sigma_c', scaling_stat='mu_c'" in str(layer)


def test_float64_layer():
    layer = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1]).float64()
    with jt.flag_scope(auto_convert_64_to_32=0):
        y = layer(jt.array(random_input(10).astype(np.float64)))
    assert y.dtype == "float64" and layer.running_var.dtype == "float64"
    assert layer.num_batches_tracked.dtype == "int64"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("layer_class, shape, message", [
    (rbn_jittor.RepresentativeBatchNorm2d, (2, 4, 3), "expected 4D input (got 3D input)"),
    (rbn_jittor.RepresentativeBatchNorm1d, (2, 4, 3, 3), "expected 2D or 3D input (got 4D input)"),
    (rbn_jittor.RepresentativeBatchNorm3d, (2, 4, 3, 3), "expected 5D input (got 4D input)"),
    (rbn_jittor.RepresentativeBatchNorm, (2, 4, 1, 1, 1, 1), "expected 2D to 5D input (got 6D input)"),
    (rbn_jittor.RepresentativeBatchNorm2d, (2, 3, 3, 3), "expected 4 channels (got 3)"),
])
def test_bad_input_shapes(layer_class, shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer_class(4)(jt.zeros(shape))


def test_one_value_per_channel_is_fine_in_eval():
    layer = rbn_jittor.RepresentativeBatchNorm1d(4)
    layer.eval()
    assert layer(jt.zeros((1, 4))).shape == [1, 4]


def test_bad_dtypes():
    layer = rbn_jittor.RepresentativeBatchNorm2d(4)
    with pytest.raises(TypeError, match=r"expected a floating-point input \(got int32\)"):
        layer(jt.zeros(SHAPE, "int32"))
    with jt.flag_scope(auto_convert_64_to_32=0):
        x64 = jt.array(np.zeros(SHAPE))
    with pytest.raises(TypeError, match=r"running_mean has dtype float32, expected the input's float64"):
        layer(x64)


@pytest.mark.parametrize("argname", ["centering_stat", "scaling_stat"])
def test_unknown_statistic(argname):
    message = rf"{argname} must be one of mu_c, sigma_c, mu_s, sigma_s \(got 'mean'\)"
    with pytest.raises(ValueError, match=message):
        rbn_jittor.RepresentativeBatchNorm2d(4, **{argname: "mean"})
    with pytest.raises(ValueError, match=message):
        F.representative_batch_norm(jt.zeros(SHAPE), None, None, training=True, **{argname: "mean"})


# ----------------------------------------------------------------------------- conversion


def small_network():
    return jt.nn.Sequential(
        jt.nn.Conv2d(2, SHAPE[1], 3, padding=1), jt.nn.BatchNorm2d(SHAPE[1]), jt.nn.ReLU(),
        jt.nn.Sequential(jt.nn.Conv2d(SHAPE[1], SHAPE[1], 1), jt.nn.BatchNorm2d(SHAPE[1])))


def trained_network():
    """A network whose BatchNorms have non-trivial weights and running statistics."""
    jt.set_global_seed(0)
    net = small_network()
    x = jt.array(np.random.default_rng(11).normal(1.0, 2.0, (3, 2, 5, 4)).astype(np.float32))
    for bn in (net[1], net[3][1]):
        bn.weight.update(jt.array(np.linspace(0.5, 2.0, SHAPE[1]).astype(np.float32)))
        bn.bias.update(jt.array(np.linspace(-1.0, 1.0, SHAPE[1]).astype(np.float32)))
    net(x).sync()
    return net, x


@pytest.mark.parametrize("is_train", [True, False])
def test_convert_preserves_output(is_train):
    net, x = trained_network()
    if not is_train:
        net.eval()
    want = net(x).numpy()
    state = rbn_jittor.state_dict_to_numpy(net)
    converted = rbn_jittor.convert_bn_to_rbn(net)
    assert isinstance(converted[1], rbn_jittor.RepresentativeBatchNorm)
    assert isinstance(converted[3][1], rbn_jittor.RepresentativeBatchNorm)
    assert converted[1].is_train is is_train
    np.testing.assert_array_equal(converted[1].running_var.numpy(), state["1.running_var"])
    assert_close(converted(x).numpy(), want)


def test_convert_predicate_and_no_preserve():
    net, x = trained_network()
    net.eval()
    want = net(x).numpy()
    converted = rbn_jittor.convert_bn_to_rbn(net, predicate=lambda name, bn: name == "3.1",
                                             preserve_output=False, scaling_stat="sigma_c")
    assert isinstance(converted[1], jt.nn.BatchNorm)
    rbn = converted[3][1]
    assert isinstance(rbn, rbn_jittor.RepresentativeBatchNorm) and rbn.scaling_stat == "sigma_c"
    # without preserve_output the scaling calibration starts at sigmoid(1) * X_s
    bias = rbn.bias.numpy()[:, None, None]
    assert_close(converted(x).numpy(), (want - bias) / (1 + np.exp(-1)) + bias)


def test_convert_without_affine_needs_preserve_output_false():
    net = jt.nn.Sequential(jt.nn.BatchNorm2d(4, affine=False))
    with pytest.raises(ValueError, match="preserve_output=True needs affine"):
        rbn_jittor.convert_bn_to_rbn(net)
    assert rbn_jittor.convert_bn_to_rbn(net, scaling=False)[0].weight is None


# ----------------------------------------------------------------------------- state dicts


def test_state_dict_round_trip_and_authors_shapes():
    source = rbn_jittor.RepresentativeBatchNorm2d(4)
    source(jt.array(random_input(12))).sync()
    arrays = rbn_jittor.state_dict_to_numpy(source)
    arrays["center_weight"] = np.arange(4, dtype=np.float32)
    authors = {name: value.reshape(1, 4, 1, 1) if name in ("weight", "center_weight") else value
               for name, value in arrays.items()}
    target = rbn_jittor.RepresentativeBatchNorm2d(4)
    target.load_state_dict(authors)
    for name, value in rbn_jittor.state_dict_to_numpy(target).items():
        np.testing.assert_array_equal(value, arrays[name])
    assert not target.center_weight.is_stop_grad() and target.running_mean.is_stop_grad()


def test_state_dict_strictness_lists_every_problem():
    layer = rbn_jittor.RepresentativeBatchNorm2d(4)
    arrays = rbn_jittor.state_dict_to_numpy(layer)
    del arrays["scale_bias"], arrays["running_var"]
    arrays["gamma"] = np.ones(4, np.float32)
    arrays["weight"] = np.ones(3, np.float32)
    with pytest.raises(rbn_reference.StateDictError) as error:
        layer.load_state_dict(arrays)
    message = str(error.value)
    assert message.startswith("cannot load state dict: weight: expected shape (4,) (got (3,))")
    assert "missing keys ['running_var', 'scale_bias']" in message
    assert "unexpected keys ['gamma']" in message
    np.testing.assert_array_equal(layer.weight.numpy(), 1)  # nothing was loaded


def test_network_checkpoint_of_jittor_batch_norm_loads_into_converted_network():
    net, _ = trained_network()
    arrays = rbn_jittor.state_dict_to_numpy(net)  # Jittor's BatchNorm: no batch count
    converted = rbn_jittor.convert_bn_to_rbn(small_network())
    with pytest.raises(rbn_reference.StateDictError, match=r"missing keys \['1.center_weight'"):
        rbn_jittor.load_numpy_state_dict(converted, arrays)
    missing, unexpected = rbn_jittor.load_numpy_state_dict(converted, arrays, strict=False)
    assert "3.1.scale_bias" in missing and unexpected == []
    np.testing.assert_array_equal(converted[3][1].running_mean.numpy(), arrays["3.1.running_mean"])
