"""rbn_jittor as users meet it: docstring examples, jt.grad over parameters(), checkpoints of the
batch count, empty batches, NaN/Inf, a batch of one, common mistakes, frozen BatchNorms."""

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

jt = pytest.importorskip("jittor")

import rbn_jittor  # noqa: E402
from rbn_jittor import convert, functional, modules, state_dict  # noqa: E402
from tolerances import TOLERANCES  # noqa: E402

SHAPE = (3, 4, 5, 4)  # test_jittor.py's shape: its compiled kernels are reused
CALIBRATIONS_OFF = dict(centering=False, scaling=False)


def random_input(seed=0, shape=SHAPE, mean=3.0):
    return np.random.default_rng(seed).normal(mean, 2.0, shape).astype(np.float32)


def assert_close(got, want):
    tol = TOLERANCES["float32"]
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol.atol + tol.rtol * np.abs(want).max())


@pytest.mark.parametrize("name", sorted(name for _, name, _ in pkgutil.walk_packages(rbn_jittor.__path__, "rbn_jittor.")))
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"


def test_every_public_name_has_an_example():
    for name in rbn_jittor.__all__:
        if name not in ("functional", "models"):
            assert ">>>" in getattr(rbn_jittor, name).__doc__, name
    assert ">>>" in functional.representative_batch_norm.__doc__


# ----------------------------------------------------------------------------- the batch count


def small_network():
    """conv -> RBN -> ReLU -> conv -> RBN, a resnet18 block's pattern at test size."""
    return jt.nn.Sequential(jt.nn.Conv2d(2, 4, 3, padding=1), rbn_jittor.RepresentativeBatchNorm2d(4),
                            jt.nn.ReLU(), jt.nn.Conv2d(4, 4, 1), rbn_jittor.RepresentativeBatchNorm2d(4))


@pytest.mark.parametrize("kind", ["layer", "network"])
def test_jt_grad_over_parameters_works_as_with_jittor_batch_norm(kind):
    jt.set_global_seed(0)
    model = rbn_jittor.RepresentativeBatchNorm2d(4) if kind == "layer" else small_network()
    x = jt.array(random_input(1, (3, 4 if kind == "layer" else 2, 5, 4)))
    loss = (model(x) * jt.array(random_input(2, mean=0.0))).sum()
    params = model.parameters()
    assert all(p.dtype.is_float() for p in params)
    grads = jt.grad(loss, params)  # raised "Targets of grad should be float" with the counter listed
    names = [name for name, _ in model.named_parameters()]
    assert not any(name.endswith("num_batches_tracked") for name in names)
    weight_grad = dict(zip(names, grads))["weight" if kind == "layer" else "4.weight"]
    assert np.abs(weight_grad.numpy()).max() > 0


def test_batch_count_round_trips_every_way():
    layer = rbn_jittor.RepresentativeBatchNorm2d(4)
    for seed in (3, 4):
        layer(jt.array(random_input(seed))).sync()
    arrays = rbn_jittor.state_dict_to_numpy(layer)
    assert arrays["num_batches_tracked"] == 2 and arrays["num_batches_tracked"].dtype == np.int64
    assert list(arrays).index("num_batches_tracked") == list(arrays).index("running_var") + 1
    target = rbn_jittor.RepresentativeBatchNorm2d(4)
    rbn_jittor.load_numpy_state_dict(target, arrays)
    assert int(target.num_batches_tracked.item()) == 2
    target.load_state_dict({**arrays, "num_batches_tracked": np.array(7)})
    assert int(target.num_batches_tracked.item()) == 7
    # Jittor's own state_dict() has no count (as jt.nn.BatchNorm): loading it keeps the count
    assert "num_batches_tracked" not in layer.state_dict()
    target.load_state_dict(layer.state_dict())
    assert int(target.num_batches_tracked.item()) == 7
    np.testing.assert_array_equal(target.running_var.numpy(), arrays["running_var"])
    # a network's counts, by their qualified names
    net = small_network()
    net(jt.array(random_input(5, (3, 2, 5, 4)))).sync()
    counts = {k: v for k, v in rbn_jittor.state_dict_to_numpy(net).items() if k.endswith("num_batches_tracked")}
    assert counts == {"1.num_batches_tracked": 1, "4.num_batches_tracked": 1}
    fresh = small_network()
    rbn_jittor.load_numpy_state_dict(fresh, rbn_jittor.state_dict_to_numpy(net))
    assert int(fresh[4].num_batches_tracked.item()) == 1


def test_torch_state_dict_with_its_count_loads():
    torch = pytest.importorskip("torch")
    rbn_torch = pytest.importorskip("rbn_torch")
    source = rbn_torch.RepresentativeBatchNorm2d(4)
    source(torch.from_numpy(random_input(6)))
    layer = rbn_jittor.RepresentativeBatchNorm2d(4)
    layer.load_state_dict(source.state_dict())
    assert int(layer.num_batches_tracked.item()) == 1
    assert_close(layer.running_var.numpy(), source.running_var.numpy())


# ----------------------------------------------------------------------------- edge inputs


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3), (0, 4, 5, 4), (0, 4, 2, 3, 3)], ids=lambda s: f"{len(s) - 2}d")
def test_empty_batch_gives_empty_output_and_keeps_statistics(shape, training):
    """jt.nn.BatchNorm also returns an empty output and zero grads, but in training it feeds
    mean 0 and variance 0 into its running statistics; ours leaves them alone (PyTorch's way)."""
    rbn = rbn_jittor.RepresentativeBatchNorm(4, is_train=training)
    bn = jt.nn.BatchNorm(4, is_train=training)
    for layer in (rbn, bn):
        x = jt.zeros(shape)
        y = layer(x)
        grads = jt.grad(y.sum(), [x, layer.weight])
        assert tuple(y.shape) == shape and tuple(grads[0].shape) == shape
        np.testing.assert_array_equal(grads[1].numpy(), np.zeros(4, np.float32))
    np.testing.assert_array_equal(rbn.running_mean.numpy(), 0)
    np.testing.assert_array_equal(rbn.running_var.numpy(), 1)


def test_nan_and_inf_behave_as_jittor_batch_norm():
    """A NaN or Inf spreads over its channel in training (batch statistics), stays in its
    element in eval mode (running statistics), and leaves the other channels exact. (With a
    calibration on, eval spreads it over its (n, c) instance: K_m and K_s read the instance.)"""
    x = random_input(7)
    x[0, 1, 0, 0], x[1, 2, 0, 0] = np.nan, np.inf
    for training in (True, False):
        rbn = rbn_jittor.RepresentativeBatchNorm2d(4, is_train=training, **CALIBRATIONS_OFF)
        bn = jt.nn.BatchNorm2d(4, is_train=training)
        y, y_bn = (layer(jt.array(x)).numpy() for layer in (rbn, bn))
        np.testing.assert_array_equal(np.isfinite(y), np.isfinite(y_bn))
        assert_close(y[np.isfinite(y)], y_bn[np.isfinite(y_bn)])
        if training:
            assert not np.isfinite(y[:, 1:3]).any()
            assert np.isfinite(rbn.running_mean.numpy()).tolist() == [True, False, False, True]
        else:
            assert (~np.isfinite(y)).sum() == 2


def test_batch_of_one_in_training_as_jittor_batch_norm():
    """jt.nn.BatchNorm does not raise on one value per channel: the output is beta."""
    x = random_input(8, (1, 4))
    rbn = rbn_jittor.RepresentativeBatchNorm1d(4, **CALIBRATIONS_OFF)
    bn = jt.nn.BatchNorm1d(4)
    for layer in (rbn, bn):
        layer.bias.update(jt.array(np.arange(4, dtype=np.float32)))
    y, y_bn = (layer(jt.array(x)).numpy() for layer in (rbn, bn))
    assert_close(y, y_bn)
    assert_close(y, np.arange(4, dtype=np.float32)[None])
    assert_close(rbn.running_var.numpy(), bn.running_var.numpy())  # 0.9: variance 0 fed
    assert_close(rbn.running_mean.numpy(), bn.running_mean.numpy())


@pytest.mark.parametrize("layer_class, shape, advice", [
    (rbn_jittor.RepresentativeBatchNorm2d, (2, 4, 3), "use RepresentativeBatchNorm1d for (N, C) or (N, C, L)"),
    (rbn_jittor.RepresentativeBatchNorm1d, (2, 4, 3, 3), "use RepresentativeBatchNorm2d for (N, C, H, W)"),
    (rbn_jittor.RepresentativeBatchNorm3d, (2, 4, 3, 3), "use RepresentativeBatchNorm2d for (N, C, H, W)"),
    (rbn_jittor.RepresentativeBatchNorm2d, (2, 3, 3, 3), "channels-first (N, C, ...), or build the layer with "
                                                         "num_features=3"),
])
def test_mistakes_say_what_to_do(layer_class, shape, advice):
    with pytest.raises(ValueError) as error:
        layer_class(4)(jt.zeros(shape))
    assert advice in str(error.value)


def test_integer_input_is_refused_with_a_type_error():
    with pytest.raises(TypeError, match=r"expected a floating-point input \(got int32\)"):
        rbn_jittor.RepresentativeBatchNorm2d(4)(jt.zeros(SHAPE, "int32"))


# ----------------------------------------------------------------------------- conversion


def test_convert_frozen_batch_norm_preserves_output_and_stays_frozen():
    jt.set_global_seed(0)
    net = jt.nn.Sequential(jt.nn.Conv2d(2, 4, 3, padding=1), jt.nn.BatchNorm2d(4))
    bn = net[1]
    bn.weight.update(jt.array(np.linspace(0.5, 2.0, 4).astype(np.float32)))
    bn.bias.update(jt.array(np.linspace(-1.0, 1.0, 4).astype(np.float32)))
    bn.weight.stop_grad()
    bn.bias.stop_grad()
    x = jt.array(random_input(9, (3, 2, 5, 4)))
    net(x).sync()  # non-trivial running statistics
    for training in (True, False):
        bn.is_train = training
        want = net(x).numpy()
        converted = rbn_jittor.convert_bn_to_rbn(jt.nn.Sequential(net[0], bn))
        assert isinstance(converted[1], rbn_jittor.RepresentativeBatchNorm)
        assert converted[1].weight.is_stop_grad() and converted[1].bias.is_stop_grad()
        assert not converted[1].center_weight.is_stop_grad()
        assert_close(converted(x).numpy(), want)
