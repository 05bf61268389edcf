"""rbn_mindspore in PyNative mode: parity with the NumPy oracle, BatchNorm equivalence,
conversion, checkpoints, bad input. Graph mode: test_mindspore_graph.py."""

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

import rbn_reference  # noqa: E402
from mindspore import Parameter, Tensor, nn, ops  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

import rbn_mindspore  # noqa: E402
from rbn_mindspore import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d,  # noqa: E402
                           RepresentativeBatchNorm3d, convert_bn_to_rbn, load_checkpoint,
                           load_numpy_state_dict, state_dict_to_numpy)
from rbn_mindspore.functional import representative_batch_norm  # noqa: E402
from rbn_mindspore.parity import run_module  # noqa: E402

TRAINABLE = ("weight", "bias", "center_weight", "scale_weight", "scale_bias")


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    """PyNative mode, and a scratch cwd: MindSpore writes ./rank_0 on a compile error."""
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


def assert_close(got, want, dtype="float64", offset_ratio=0.0):
    """``got`` against ``want`` with the project's tolerance for ``dtype``."""
    check = parity.compare("value", "value", np.asarray(got, dtype=dtype), np.asarray(want), dtype,
                           tolerance(dtype, offset_ratio))
    assert check.passed, str(check)


def random_layer(layer, seed=0):
    """Move every trainable parameter away from its init so that each term of Eq. 12 matters."""
    rng = np.random.default_rng(seed)
    for name, param in rbn_mindspore.canonical_parameters(layer).items():
        leaf = name.rpartition(".")[2]
        if leaf in TRAINABLE:
            shift = 1.0 if leaf in ("weight", "scale_bias") else 0.0
            param.set_data(Tensor((rng.random(param.shape) - 0.5 + shift).astype(param.asnumpy().dtype)))
    return layer


def oracle_parameters(layer):
    """The layer's trainable parameters as the oracle takes them: canonical names, float64 arrays."""
    return {name: value.astype(np.float64) for name, value in state_dict_to_numpy(layer).items()
            if name in TRAINABLE}


def gradients(layer, x, dy):
    """(y, dx, {canonical name: grad}) of sum(y * dy), one training or eval call."""
    weights = layer.trainable_params()

    def objective(inputs):
        y = layer(inputs)
        return (y * dy).sum(), y

    (_, y), (dx, dweights) = ms.value_and_grad(objective, 0, weights, has_aux=True)(x)
    names = {id(param): name for name, param in rbn_mindspore.canonical_parameters(layer).items()}
    return y.asnumpy(), dx.asnumpy(), {names[id(w)]: g.asnumpy() for w, g in zip(weights, dweights)}


# ----------------------------------------------------------------------------- parity with the oracle


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("dtype", parity.DTYPES + parity.MIXED_DTYPES)
@pytest.mark.parametrize("case", parity.CASES, ids=str)
def test_parity(case, dtype, mode):
    parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))


def test_large_mean_float32_input_matches_float64_oracle():
    """mean 1e4, std 1: stable moments keep float32 within the offset-widened tolerance."""
    rng = np.random.default_rng(3)
    x = 1e4 + rng.standard_normal((4, 3, 5, 5))
    for stats in (("mu_c", "sigma_c"), ("sigma_s", "mu_s")):  # the channel path and the literal one
        layer = random_layer(RepresentativeBatchNorm2d(3, centering_stat=stats[0], scaling_stat=stats[1]))
        layer.set_train()
        params = oracle_parameters(layer)
        want, _, _ = rbn_reference.forward(x, params, None, training=True, centering_stat=stats[0],
                                           scaling_stat=stats[1])
        y = layer(Tensor(x.astype(np.float32))).asnumpy()
        check = parity.compare("y", "y", y, want, "float32", tolerance("float32", offset_ratio=1e4))
        assert check.passed, str(check)
        assert check.max_abs < 0.1


# ----------------------------------------------------------------------------- nn.BatchNorm equivalence


@pytest.mark.parametrize("bn_class, rbn_class, shape", [
    (nn.BatchNorm1d, RepresentativeBatchNorm1d, (6, 3)),
    (nn.BatchNorm2d, RepresentativeBatchNorm2d, (3, 3, 4, 5)),
    (nn.BatchNorm3d, RepresentativeBatchNorm3d, (2, 3, 2, 3, 4)),
], ids=["1d", "2d", "3d"])
def test_equals_batchnorm_with_calibrations_off(bn_class, rbn_class, shape):
    """Same outputs, gradients and moving statistics as MindSpore's BatchNorm (float32 only there)."""
    bn = random_layer(bn_class(3, momentum=0.8))
    rbn = rbn_class(3, momentum=0.8, centering=False, scaling=False)
    load_numpy_state_dict(rbn, state_dict_to_numpy(bn))
    rng = np.random.default_rng(1)
    x = Tensor((2 + rng.standard_normal(shape)).astype(np.float32))
    dy = Tensor(rng.standard_normal(shape).astype(np.float32))
    for training in (True, True, False):
        bn.set_train(training)
        rbn.set_train(training)
        want, got = gradients(bn, x, dy), gradients(rbn, x, dy)
        assert_close(got[0], want[0], "float32")
        assert_close(got[1], want[1], "float32")
        for name in ("weight", "bias"):
            assert_close(got[2][name], want[2][name], "float32")
        for name, value in state_dict_to_numpy(bn).items():
            assert_close(state_dict_to_numpy(rbn)[name], value, "float32")


def test_use_batch_statistics_like_batchnorm():
    """True: batch statistics (and updates) even in eval; False: moving statistics in training."""
    x = Tensor(np.random.default_rng(2).standard_normal((4, 3, 2, 2)).astype(np.float32) + 1)
    for flag in (True, False):
        bn = nn.BatchNorm2d(3, use_batch_statistics=flag)
        rbn = RepresentativeBatchNorm2d(3, use_batch_statistics=flag, centering=False, scaling=False)
        for training in (False, True):
            bn.set_train(training)
            rbn.set_train(training)
            assert_close(rbn(x).asnumpy(), bn(x).asnumpy(), "float32")
            assert_close(rbn.moving_mean.asnumpy(), bn.moving_mean.asnumpy(), "float32")
            assert_close(rbn.moving_variance.asnumpy(), bn.moving_variance.asnumpy(), "float32")
    assert rbn.num_batches_tracked.asnumpy() == 0


# ----------------------------------------------------------------------------- the layer itself


def test_init_names_and_mapping():
    layer = RepresentativeBatchNorm2d(4)
    assert not layer.training  # MindSpore Cells start in eval mode, like nn.BatchNorm2d
    assert [p.name for p in layer.trainable_params()] == ["gamma", "beta", "center_weight", "scale_weight",
                                                          "scale_bias"]
    arrays = state_dict_to_numpy(layer)
    assert sorted(arrays) == sorted(rbn_reference.PARAM_NAMES + rbn_reference.STATE_NAMES)
    want = dict(weight=1, bias=0, center_weight=0, scale_weight=0, scale_bias=1, running_mean=0, running_var=1)
    for name, value in want.items():
        assert arrays[name].tolist() == [value] * 4 and arrays[name].dtype == np.float32, name
    assert arrays["num_batches_tracked"].dtype == np.int64 and arrays["num_batches_tracked"] == 0
    assert "centering_stat=mu_c" in repr(layer) and "momentum=0.9" in repr(layer)
    plain = RepresentativeBatchNorm1d(4, affine=False, centering=False, scaling=False, dtype=ms.float64)
    assert plain.center_weight is None and plain.scale_weight is None and plain.scale_bias is None
    assert plain.trainable_params() == [] and plain.gamma.dtype == ms.float64
    assert sorted(state_dict_to_numpy(plain)) == ["num_batches_tracked", "running_mean", "running_var"]


def test_reset_parameters_and_running_stats():
    layer = random_layer(RepresentativeBatchNorm2d(3)).set_train()
    layer(Tensor(np.ones((2, 3, 2, 2), np.float32) + np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)))
    assert layer.num_batches_tracked.asnumpy() == 1 and layer.moving_mean.asnumpy()[2] != 0
    layer.reset_running_stats()
    assert layer.num_batches_tracked.asnumpy() == 0 and layer.moving_mean.asnumpy().tolist() == [0] * 3
    assert layer.gamma.asnumpy()[0] != 1
    layer.reset_parameters()
    fresh = state_dict_to_numpy(RepresentativeBatchNorm2d(3))
    for name, value in state_dict_to_numpy(layer).items():
        assert np.array_equal(value, fresh[name]), name


def test_cumulative_moving_average():
    """momentum=None: the moving statistics are the mean of the batch statistics seen so far."""
    layer = RepresentativeBatchNorm1d(2, momentum=None, centering=False, scaling=False, dtype=ms.float64).set_train()
    batches = [np.random.default_rng(seed).standard_normal((5, 2)) + seed for seed in range(3)]
    for batch in batches:
        layer(Tensor(batch))
    assert layer.num_batches_tracked.asnumpy() == 3
    assert_close(layer.moving_mean.asnumpy(), np.mean([b.mean(0) for b in batches], axis=0))
    assert_close(layer.moving_variance.asnumpy(), np.mean([b.var(0, ddof=1) for b in batches], axis=0))


@pytest.mark.parametrize("stats", [("mu_c", "mu_c"), ("mu_s", "sigma_s")], ids="-".join)
def test_input_not_modified(stats):
    layer = random_layer(RepresentativeBatchNorm2d(3, centering_stat=stats[0], scaling_stat=stats[1])).set_train()
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 4)).astype(np.float32)
    inputs = Tensor(x.copy())
    gradients(layer, inputs, Tensor(np.ones_like(x)))
    assert np.array_equal(inputs.asnumpy(), x)


def test_nhwc_equals_nchw():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32) + 1
    layers = [random_layer(RepresentativeBatchNorm2d(3, data_format=f)).set_train() for f in ("NCHW", "NHWC")]
    y = layers[0](Tensor(x)).asnumpy()
    y_nhwc = layers[1](Tensor(x.transpose(0, 2, 3, 1))).asnumpy()
    assert_close(y_nhwc.transpose(0, 3, 1, 2), y, "float32")
    assert_close(layers[1].moving_variance.asnumpy(), layers[0].moving_variance.asnumpy(), "float32")


def test_functional_updates_parameters_in_place():
    """The function of the layer: ops.batch_norm's momentum convention (0.1 = the Cell's 0.9)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 3)).astype(np.float32)
    layer = random_layer(RepresentativeBatchNorm1d(3)).set_train()
    moving_mean = Parameter(Tensor(np.zeros(3, np.float32)), requires_grad=False)
    moving_variance = Parameter(Tensor(np.ones(3, np.float32)), requires_grad=False)
    y = representative_batch_norm(Tensor(x), moving_mean, moving_variance, layer.gamma, layer.beta,
                                  layer.center_weight, layer.scale_weight, layer.scale_bias,
                                  training=True, momentum=0.1)
    assert_close(y.asnumpy(), layer(Tensor(x)).asnumpy(), "float32")
    assert_close(moving_mean.asnumpy(), layer.moving_mean.asnumpy(), "float32")
    assert_close(moving_variance.asnumpy(), layer.moving_variance.asnumpy(), "float32")
    # The canonical keywords, as F.batch_norm's: weight/bias, running_mean/running_var.
    y = representative_batch_norm(Tensor(x), running_mean=moving_mean, running_var=moving_variance,
                                  weight=layer.gamma, bias=layer.beta, center_weight=layer.center_weight,
                                  scale_weight=layer.scale_weight, scale_bias=layer.scale_bias,
                                  training=True, momentum=0.1)
    assert_close(y.asnumpy(), layer(Tensor(x)).asnumpy(), "float32")
    assert_close(moving_mean.asnumpy(), layer.moving_mean.asnumpy(), "float32")
    assert_close(moving_variance.asnumpy(), layer.moving_variance.asnumpy(), "float32")
    assert rbn_mindspore.functional.representative_batch_norm is representative_batch_norm


def test_jit_function_matches_pynative():
    """ms.jit on a function that calls the layer, without switching the global mode."""
    rng = np.random.default_rng(7)
    x = Tensor(rng.standard_normal((3, 4, 3, 3)).astype(np.float32) + 2)
    dy = Tensor(rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    eager, compiled = (random_layer(RepresentativeBatchNorm2d(4, scaling_stat="sigma_c")).set_train() for _ in "ab")

    def grad_function(layer):
        def objective(inputs):
            return (layer(inputs) * dy).sum()
        return ms.grad(objective, 0, layer.trainable_params())

    want = grad_function(eager)(x)
    compiled_grad = grad_function(compiled)

    @ms.jit
    def step(inputs):
        return compiled_grad(inputs)

    got = step(x)
    assert_close(got[0].asnumpy(), want[0].asnumpy(), "float32")
    for got_weight, want_weight in zip(got[1], want[1]):
        assert_close(got_weight.asnumpy(), want_weight.asnumpy(), "float32")
    assert_close(compiled.moving_mean.asnumpy(), eager.moving_mean.asnumpy(), "float32")


def test_a_new_layer_of_a_shape_already_run_compiles_nothing():
    """ms.jit keys its graphs on the Parameters it is given; the layer's compiled parts take their
    values, so another layer of a shape already run (elsewhere in the network, in a new model)
    reuses the graphs, with its own parameters: a first step compiles once per shape, not per layer."""
    from mindspore.graph import api

    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5, 5)) + 2
    dy = Tensor(rng.standard_normal(x.shape).astype(np.float32))
    compiled = None
    for seed in range(3):
        layer = random_layer(RepresentativeBatchNorm2d(3, scaling_stat="sigma_c"), seed).set_train()
        params = oracle_parameters(layer)
        y, _, _ = gradients(layer, Tensor(x.astype(np.float32)), dy)
        layer.set_train(False)
        layer(Tensor(x.astype(np.float32))).asnumpy()
        if compiled is None:
            compiled = len(api.ms_compile_cache)
        assert len(api.ms_compile_cache) == compiled, f"layer {seed} compiled again"
        want, _, _ = rbn_reference.forward(x, params, None, training=True, scaling_stat="sigma_c")
        assert_close(y, want, "float32")


def test_training_then_evaluating_warns_nothing(monkeypatch):
    """Training and evaluation are two configurations of the layer's compiled parts, each compiled
    once; MindSpore's "has been compiled again" warning (for a function object rebuilt by mistake)
    is not for them, and a user who evaluates after training must not see it."""
    from mindspore import log  # ms.jit warns through it

    warned = []
    monkeypatch.setattr(log, "warning", lambda message, *args, **kwargs: warned.append(str(message)))
    layer = RepresentativeBatchNorm2d(3, eps=1.5e-5)  # a configuration no other test compiles
    rng = np.random.default_rng(6)
    x = Tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    dy = Tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    for training in (True, False):
        gradients(layer.set_train(training), x, dy)
    assert not [message for message in warned if "compiled again" in message], warned


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("layer_class, shape, message", [
    (RepresentativeBatchNorm1d, (2, 3, 4, 4), "expected 2D or 3D input (got 4D input)"),
    (RepresentativeBatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input)"),
    (RepresentativeBatchNorm3d, (2, 3, 4, 4), "expected 5D input (got 4D input)"),
    (RepresentativeBatchNorm2d, (2, 5, 4, 4), "expected 3 channels (got 5)"),
])
def test_bad_input_shape(layer_class, shape, message):
    with pytest.raises(ValueError) as error:
        layer_class(3).set_train()(Tensor(np.ones(shape, np.float32)))
    assert str(error.value) == message


def test_single_value_per_channel_is_fine_in_eval():
    assert RepresentativeBatchNorm1d(3)(Tensor(np.ones((1, 3), np.float32))).shape == (1, 3)


@pytest.mark.parametrize("dtype, message", [
    (np.float64, "expected Float32 input (got Float64 input)"),
    (np.int32, "expected Float32 input (got Int32 input)"),
])
def test_bad_input_dtype(dtype, message):
    with pytest.raises(TypeError) as error:
        RepresentativeBatchNorm2d(3)(Tensor(np.ones((2, 3, 2, 2), dtype)))
    assert str(error.value) == message
    with pytest.raises(TypeError, match=r"^expected a float16, bfloat16, float32 or float64 input \(got Int32\)$"):
        representative_batch_norm(Tensor(np.ones((2, 3), np.int32)), None, None, training=True)


@pytest.mark.parametrize("argname", ["centering_stat", "scaling_stat"])
def test_unknown_statistic(argname):
    message = f"{argname} must be one of mu_c, sigma_c, mu_s, sigma_s (got 'mean')"
    with pytest.raises(ValueError) as error:
        RepresentativeBatchNorm2d(3, **{argname: "mean"})
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        representative_batch_norm(Tensor(np.ones((2, 3), np.float32)), None, None, training=True,
                                  **{argname: "mean"})
    assert str(error.value) == message


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(data_format="NDHWC"), ValueError, "data_format must be 'NCHW' or 'NHWC' (got 'NDHWC')"),
    (dict(momentum=1.5), ValueError, "momentum must be in [0, 1] or None (got 1.5)"),
    (dict(use_batch_statistics=1), ValueError, "use_batch_statistics must be a bool or None (got 1)"),
    (dict(dtype=ms.float16), TypeError, "dtype must be mindspore.float32 or mindspore.float64 (got Float16)"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error) as raised:
        RepresentativeBatchNorm2d(3, **kwargs)
    assert str(raised.value) == message


def test_nhwc_only_for_2d():
    with pytest.raises(ValueError, match="^data_format 'NHWC' is only for 2d layers$"):
        RepresentativeBatchNorm1d(3, data_format="NHWC")(Tensor(np.ones((2, 3), np.float32)))


def test_functional_bad_vectors():
    x = Tensor(np.ones((2, 3), np.float32))
    vector = Tensor(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="^'scale_weight' and 'scale_bias' must be given together or not at all$"):
        representative_batch_norm(x, None, None, scale_weight=vector, training=True)
    with pytest.raises(ValueError, match="^'running_mean' and 'running_var' must be given together or not at all$"):
        representative_batch_norm(x, vector, None, training=True)
    with pytest.raises(ValueError, match=r"^weight must have shape \(3,\) for an input with 3 channels \(got \(4,\)\)$"):
        representative_batch_norm(x, None, None, weight=Tensor(np.ones(4, np.float32)),
                                  bias=Tensor(np.ones(4, np.float32)), training=True)
    with pytest.raises(TypeError, match="^center_weight has dtype Float64, expected the input's Float32$"):
        representative_batch_norm(x, None, None, center_weight=Tensor(np.zeros(3)), training=True)
    with pytest.raises(ValueError, match="^running_mean and running_var are needed when training is False$"):
        representative_batch_norm(x, None, None)


# ----------------------------------------------------------------------------- conversion and checkpoints


class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.stem = nn.SequentialCell([nn.Conv2d(2, 4, 3, has_bias=True), nn.BatchNorm2d(4), nn.ReLU()])
        self.stage = nn.SequentialCell([nn.Conv3d(4, 3, 1), nn.BatchNorm3d(3)])
        self.head = nn.SequentialCell([nn.Dense(3, 5), nn.BatchNorm1d(5)])

    def construct(self, x):
        x = self.stem(x)
        x = self.stage(x.expand_dims(2)).mean((2, 3, 4))
        return self.head(x)


def trained_net(seed=0):
    """A Net whose BatchNorms have non-trivial parameters and moving statistics."""
    ms.set_seed(seed)
    net = Net().set_train()
    rng = np.random.default_rng(seed)
    for param in net.trainable_params():
        param.set_data(Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    for _ in range(2):
        net(Tensor(rng.standard_normal((3, 2, 5, 5)).astype(np.float32)))
    return net


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_convert_preserves_output(training):
    net = trained_net().set_train(training)
    x = Tensor(np.random.default_rng(8).standard_normal((3, 2, 5, 5)).astype(np.float32))
    want = net(x).asnumpy()
    converted = convert_bn_to_rbn(trained_net().set_train(training), scaling_stat="sigma_c")
    assert isinstance(converted.stem[1], RepresentativeBatchNorm2d) and converted.stem[1].scaling_stat == "sigma_c"
    assert isinstance(converted.stage[1], RepresentativeBatchNorm3d)
    assert isinstance(converted.head[1], RepresentativeBatchNorm1d)
    assert converted.head[1].training == training and converted.head[1].momentum == pytest.approx(0.9)
    assert_close(converted(x).asnumpy(), want, "float32")
    names = [param.name for param in converted.get_parameters()]
    assert names == [name for name, _ in converted.parameters_and_names()]  # full paths, as checkpoints need
    assert "stage.1.center_weight" in names and "head.1.moving_variance" in names


def test_convert_predicate_and_preserve_output_false():
    net = convert_bn_to_rbn(trained_net(), predicate=lambda name, bn: name.startswith("stem"),
                            preserve_output=False)
    assert isinstance(net.stem[1], RepresentativeBatchNorm2d) and isinstance(net.head[1], nn.BatchNorm1d)
    assert np.array_equal(net.stem[1].gamma.asnumpy(), trained_net().stem[1].gamma.asnumpy())
    single = convert_bn_to_rbn(nn.BatchNorm2d(3))
    assert isinstance(single, RepresentativeBatchNorm2d)
    assert_close(single.gamma.asnumpy(), np.full(3, 1 / ops.sigmoid(Tensor(1.0)).asnumpy()), "float32")
    frozen = convert_bn_to_rbn(nn.BatchNorm2d(3, affine=False))  # gamma frozen, still absorbs the gate
    assert_close(frozen.gamma.asnumpy(), np.full(3, 1 / ops.sigmoid(Tensor(1.0)).asnumpy()), "float32")
    assert not frozen.gamma.requires_grad and not frozen.beta.requires_grad
    frozen = convert_bn_to_rbn(nn.BatchNorm2d(3, affine=False), scaling=False)
    assert [param.name for param in frozen.trainable_params()] == ["center_weight"]


def test_numpy_state_dict_round_trip_and_authors_shapes():
    net = convert_bn_to_rbn(trained_net())
    arrays = state_dict_to_numpy(net)
    assert {"stem.1.weight", "stage.1.running_var", "stage.0.weight", "head.0.bias"} <= set(arrays)
    assert arrays["stem.1.num_batches_tracked"].dtype == np.int64 and arrays["stem.1.scale_bias"].shape == (4,)
    authors = {name: value.reshape(1, -1, 1, 1) if name.startswith("stem.1.") and value.ndim == 1 else value
               for name, value in arrays.items()}
    fresh = convert_bn_to_rbn(Net())
    load_numpy_state_dict(fresh, authors)
    x = Tensor(np.random.default_rng(9).standard_normal((3, 2, 5, 5)).astype(np.float32))
    assert np.array_equal(fresh(x).asnumpy(), net.set_train(False)(x).asnumpy())
    plain = Net()  # MindSpore's BatchNorm has no batch counter: it is skipped, not an error
    load_numpy_state_dict(plain, {n: v for n, v in arrays.items() if n.rpartition(".")[2] not in
                                  ("center_weight", "scale_weight", "scale_bias")})


def test_numpy_state_dict_reaches_a_train_step_compiled_before_the_load():
    """A compiled (ms.jit) step keeps a Parameter's old memory after set_data, as after
    mindspore.load_param_into_net: the loader must write in place, or the load is silently lost."""
    net = convert_bn_to_rbn(Net())

    @ms.jit
    def forward(x):
        return net(x)

    x = Tensor(np.random.default_rng(4).standard_normal((3, 2, 5, 5)).astype(np.float32))
    net.set_train(False)
    forward(x)  # compiles with the fresh weights
    trained = convert_bn_to_rbn(trained_net()).set_train(False)
    load_numpy_state_dict(net, state_dict_to_numpy(trained))
    assert np.array_equal(forward(x).asnumpy(), trained(x).asnumpy())


def test_numpy_state_dict_reports_every_problem():
    layer = RepresentativeBatchNorm2d(3)
    arrays = state_dict_to_numpy(layer)
    del arrays["scale_bias"], arrays["running_var"]
    arrays["extra"] = np.zeros(3)
    with pytest.raises(rbn_reference.StateDictError) as error:
        load_numpy_state_dict(layer, arrays)
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
    assert "missing keys ['running_var', 'scale_bias']" in str(error.value)
    assert "unexpected keys ['extra']" in str(error.value)
    arrays["weight"] = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError) as error:
        load_numpy_state_dict(layer, arrays)
    assert "weight: expected shape (3,) (got (4,))" in str(error.value) and "missing keys" in str(error.value)
    arrays["weight"] = np.full(3, 2.0)
    load_numpy_state_dict(layer, arrays, strict=False)
    assert layer.gamma.asnumpy().tolist() == [2.0] * 3 and layer.gamma.dtype == ms.float32


def test_mindspore_checkpoint_round_trip_and_strictness(tmp_path):
    net = convert_bn_to_rbn(trained_net())
    net.stem[1].num_batches_tracked.set_data(Tensor(2, ms.int64))
    path = str(tmp_path / "rbn.ckpt")
    ms.save_checkpoint(net, path)
    fresh = load_checkpoint(convert_bn_to_rbn(Net()), path)
    x = Tensor(np.random.default_rng(10).standard_normal((3, 2, 5, 5)).astype(np.float32))
    assert np.array_equal(fresh(x).asnumpy(), net.set_train(False)(x).asnumpy())
    assert fresh.stem[1].num_batches_tracked.asnumpy() == 2
    with pytest.raises(KeyError) as error:  # a plain BatchNorm net lacks the calibrations and the counter
        load_checkpoint(Net(), path)
    assert "unexpected keys ['head.1.center_weight', 'head.1.num_batches_tracked'" in str(error.value)
    load_checkpoint(Net(), path, strict=False)

    class Wider(nn.Cell):
        def __init__(self):
            super().__init__()
            self.stem = nn.SequentialCell([nn.Conv2d(2, 4, 3, has_bias=True), RepresentativeBatchNorm2d(5)])

    with pytest.raises(ValueError) as error:
        load_checkpoint(Wider(), path, strict=False)
    assert "stem.1.gamma: expected shape (5,) (got (4,))" in str(error.value)
