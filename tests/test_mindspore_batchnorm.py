"""rbn_mindspore against MindSpore's own BatchNorm (issue 13): every constructor option with both
calibrations off, affine=False semantics and its checkpoints, frozen BatchNorms converted,
empty batches, NaN/Inf inputs, the messages for common mistakes, and concurrent first use of
the CPU kernels."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor, nn, ops  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

from rbn_mindspore import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d,  # noqa: E402
                           RepresentativeBatchNorm3d, canonical_parameters, convert_bn_to_rbn,
                           load_numpy_state_dict, state_dict_to_numpy)

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = {"1d": (nn.BatchNorm1d, RepresentativeBatchNorm1d, (6, 3)),
          "2d": (nn.BatchNorm2d, RepresentativeBatchNorm2d, (3, 3, 4, 5)),
          "3d": (nn.BatchNorm3d, RepresentativeBatchNorm3d, (2, 3, 2, 3, 4))}
OPTIONS = dict(eps=1e-3, momentum=0.7, gamma_init=1.5, beta_init=-0.5, moving_mean_init=0.25, moving_var_init=2.0)


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


def assert_close(got, want, dtype="float32"):
    check = parity.compare("value", "value", np.asarray(got, dtype=dtype), np.asarray(want, dtype=np.float64),
                           dtype, tolerance(dtype))
    assert check.passed, str(check)


def plain_rbn(rbn_class, **kwargs):
    return rbn_class(3, centering=False, scaling=False, **kwargs)


def step(layer, x, dy):
    """(y, dx, {canonical name: grad}) of sum(y * dy)."""
    weights = layer.trainable_params()

    def objective(inputs):
        y = layer(inputs)
        return (y * dy).sum(), y

    (_, y), (dx, grads) = ms.value_and_grad(objective, 0, weights, has_aux=True)(x)
    names = {id(param): name for name, param in canonical_parameters(layer).items()}
    return y.asnumpy(), dx.asnumpy(), {names[id(w)]: g.asnumpy() for w, g in zip(weights, grads)}


# ----------------------------------------------------------------------------- every constructor option


@pytest.mark.parametrize("use_batch_statistics", [None, True, False], ids=lambda v: f"ubs={v}")
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "frozen"])
@pytest.mark.parametrize("options", [{}, OPTIONS], ids=["defaults", "options"])
@pytest.mark.parametrize("dims", LAYERS)
def test_equals_batchnorm_for_every_option(dims, options, affine, use_batch_statistics):
    """Calibrations off: MindSpore's BatchNorm exactly, train and eval: outputs, gradients, moving
    statistics. affine=False applies the frozen gamma/beta, as MindSpore does."""
    bn_class, rbn_class, shape = LAYERS[dims]
    kwargs = dict(options, affine=affine, use_batch_statistics=use_batch_statistics)
    bn, rbn = bn_class(3, **kwargs), plain_rbn(rbn_class, **kwargs)
    assert [p.name for p in rbn.trainable_params()] == (["gamma", "beta"] if affine else [])
    rng = np.random.default_rng(len(shape))
    dy = Tensor(rng.standard_normal(shape).astype(np.float32))
    for training in (True, True, False):
        x = Tensor((2 + rng.standard_normal(shape)).astype(np.float32))
        bn.set_train(training)
        rbn.set_train(training)
        want, got = step(bn, x, dy), step(rbn, x, dy)
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])
        assert sorted(got[2]) == sorted(want[2])
        for name in want[2]:
            assert_close(got[2][name], want[2][name])
        for leaf in ("moving_mean", "moving_variance", "gamma", "beta"):
            inner = bn.bn2d if dims == "3d" else bn
            assert_close(getattr(rbn, leaf).asnumpy(), getattr(inner, leaf).asnumpy())


def test_nhwc_equals_batchnorm_on_nchw():
    """MindSpore's BatchNorm takes NHWC on GPU only: compare with it on the transposed input."""
    bn = nn.BatchNorm2d(3, **OPTIONS).set_train()
    rbn = plain_rbn(RepresentativeBatchNorm2d, data_format="NHWC", **OPTIONS).set_train()
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32) + 1
    for training in (True, False):
        bn.set_train(training)
        rbn.set_train(training)
        y = rbn(Tensor(x.transpose(0, 2, 3, 1))).asnumpy()
        assert_close(y.transpose(0, 3, 1, 2), bn(Tensor(x)).asnumpy())
        assert_close(rbn.moving_variance.asnumpy(), bn.moving_variance.asnumpy())


# ----------------------------------------------------------------------------- affine=False and checkpoints


def test_frozen_gamma_beta_round_trip():
    """Frozen gamma/beta are exported unless they are 1/0 (PyTorch's affine=False has no weight:
    a PyTorch layer then refuses the dict instead of silently dropping them)."""
    layer = RepresentativeBatchNorm2d(3, affine=False, gamma_init=2.0, beta_init=0.5)
    arrays = state_dict_to_numpy(layer)
    assert arrays["weight"].tolist() == [2.0] * 3 and arrays["bias"].tolist() == [0.5] * 3
    fresh = load_numpy_state_dict(RepresentativeBatchNorm2d(3, affine=False), arrays)
    assert fresh.gamma.asnumpy().tolist() == [2.0] * 3 and not fresh.gamma.requires_grad
    identity = state_dict_to_numpy(RepresentativeBatchNorm2d(3, affine=False))
    assert "weight" not in identity and "bias" not in identity
    # A dict without weight/bias (PyTorch affine=False) means no affine: gamma 1, beta 0.
    load_numpy_state_dict(layer, identity)
    assert layer.gamma.asnumpy().tolist() == [1.0] * 3 and layer.beta.asnumpy().tolist() == [0.0] * 3
    with pytest.raises(KeyError, match="missing keys"):  # a trainable affine still needs its weight
        load_numpy_state_dict(RepresentativeBatchNorm2d(3), identity)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_convert_frozen_batchnorm_preserves_output(training):
    """gamma/beta frozen for fine-tuning (or affine=False): converted, outputs kept, still frozen."""
    net = nn.SequentialCell([nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, gamma_init=1.5, beta_init=0.3)])
    net[1].gamma.requires_grad = False
    net[1].beta.requires_grad = False
    net.set_train(training)
    x = Tensor(np.random.default_rng(2).standard_normal((3, 2, 5, 5)).astype(np.float32))
    want = net(x).asnumpy()
    converted = convert_bn_to_rbn(net)
    assert isinstance(converted[1], RepresentativeBatchNorm2d)
    assert not converted[1].gamma.requires_grad and not converted[1].beta.requires_grad
    assert_close(converted(x).asnumpy(), want)
    affine_false = convert_bn_to_rbn(nn.BatchNorm2d(2, affine=False, gamma_init=2.0)).set_train(training)
    assert affine_false.trainable_params()[0].name == "center_weight" and not affine_false.gamma.requires_grad
    assert_close(affine_false(x).asnumpy(), nn.BatchNorm2d(2, affine=False, gamma_init=2.0).set_train(training)(x).asnumpy())


# ----------------------------------------------------------------------------- empty batches, NaN, Inf


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dims", LAYERS)
def test_empty_batch(dims, training, mode):
    """N = 0: an empty output and empty input gradient, zero parameter gradients, statistics
    untouched (PyTorch's behaviour; MindSpore's BatchNorm decays its moving variance in PyNative)."""
    ms.set_context(mode=mode)
    _, rbn_class, shape = LAYERS[dims]
    layer = rbn_class(3).set_train(training)
    x = Tensor(np.zeros((0,) + shape[1:], np.float32))
    y, dx, grads = step(layer, x, Tensor(np.zeros((0,) + shape[1:], np.float32)))
    assert y.shape == dx.shape == (0,) + shape[1:]
    assert all(not grad.any() for grad in grads.values()) and len(grads) == 5
    assert layer.moving_mean.asnumpy().tolist() == [0] * 3 and layer.moving_variance.asnumpy().tolist() == [1] * 3
    assert layer.num_batches_tracked.asnumpy() == 0


def test_nan_and_inf_like_batchnorm():
    """Training: a NaN or Inf poisons its channel, outputs and moving statistics, as in
    nn.BatchNorm2d. Eval: it poisons its element in BatchNorm, its instance (n, c) in RBN (the
    instance statistics of Eq. 12 see it; the channel path subtracts the instance mean even with
    the calibrations off). Nothing raises or hangs."""
    x = np.random.default_rng(3).standard_normal((2, 3, 2, 2)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 1, 0, 0] = np.nan, np.inf
    finite_instances = np.isfinite(x).all(axis=(2, 3))
    for calibrated in (False, True):  # the calibrated layer: its finiteness only (it is not BatchNorm)
        bn = nn.BatchNorm2d(3).set_train()
        rbn = RepresentativeBatchNorm2d(3, centering=calibrated, scaling=calibrated).set_train()
        want, got = bn(Tensor(x)).asnumpy(), rbn(Tensor(x)).asnumpy()
        assert np.array_equal(np.isfinite(got), np.isfinite(want))  # channels 0 and 1 non-finite
        for leaf in ("moving_mean", "moving_variance"):
            # BatchNorm's moving mean of the Inf channel is Inf, RBN's NaN (0 * Inf in the centering).
            assert np.array_equal(np.isfinite(getattr(rbn, leaf).asnumpy()), np.isfinite(getattr(bn, leaf).asnumpy()))
        if not calibrated:
            assert_close(got[:, 2], want[:, 2])
        for layer in (bn, rbn):
            layer.set_train(False)
            layer.moving_mean.set_data(Tensor(np.zeros(3, np.float32)))
            layer.moving_variance.set_data(Tensor(np.ones(3, np.float32)))
        want, got = bn(Tensor(x)).asnumpy(), rbn(Tensor(x)).asnumpy()
        assert np.isfinite(got[finite_instances]).all() and not np.isfinite(got[~finite_instances]).any()
        if not calibrated:
            assert_close(got[finite_instances], want[finite_instances])


# ----------------------------------------------------------------------------- common mistakes


@pytest.mark.parametrize("layer_class, shape, error, message", [
    (RepresentativeBatchNorm1d, (2, 3, 4, 4), ValueError, "expected 2D or 3D input (got 4D input)"),
    (RepresentativeBatchNorm2d, (2, 3, 4), ValueError, "expected 4D input (got 3D input)"),
    (RepresentativeBatchNorm3d, (2, 3, 4, 4), ValueError, "expected 5D input (got 4D input)"),
    (RepresentativeBatchNorm2d, (2, 5, 4, 4), ValueError, "expected 3 channels (got 5)"),
], ids=["1d-rank", "2d-rank", "3d-rank", "channels"])
def test_common_mistakes_raise_what_batchnorm_raises(layer_class, shape, error, message):
    """The exception type of MindSpore's BatchNorm (ValueError), with a message that says what to pass."""
    bn_class = {RepresentativeBatchNorm1d: nn.BatchNorm1d, RepresentativeBatchNorm2d: nn.BatchNorm2d,
                RepresentativeBatchNorm3d: nn.BatchNorm3d}[layer_class]
    x = Tensor(np.ones(shape, np.float32))
    with pytest.raises(error):
        bn_class(3).set_train()(x)
    with pytest.raises(error) as raised:
        layer_class(3).set_train()(x)
    assert str(raised.value) == message


def test_integer_input_is_a_type_error_as_in_batchnorm():
    x = Tensor(np.ones((2, 3, 2, 2), np.int32))
    with pytest.raises(TypeError):
        nn.BatchNorm2d(3).set_train()(x)
    with pytest.raises(TypeError, match=r"^expected Float32 input \(got Int32 input\)$"):
        RepresentativeBatchNorm2d(3).set_train()(x)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)], ids=["1d", "2d"])
def test_one_value_per_channel_in_training_like_batchnorm(shape):
    """MindSpore's BatchNorm accepts it: the output is beta, the moving mean moves, the moving
    variance (unbiased, 0/0) becomes NaN. RBN does the same (PyTorch's raises instead)."""
    bn_class, rbn_class = (nn.BatchNorm1d, RepresentativeBatchNorm1d) if len(shape) == 2 else \
        (nn.BatchNorm2d, RepresentativeBatchNorm2d)
    bn, rbn = bn_class(3, beta_init=0.5).set_train(), rbn_class(3, beta_init=0.5).set_train()
    x = Tensor(np.arange(3, dtype=np.float32).reshape(shape))
    assert_close(rbn(x).asnumpy(), bn(x).asnumpy())
    assert_close(rbn.moving_mean.asnumpy(), bn.moving_mean.asnumpy())
    assert np.isnan(bn.moving_variance.asnumpy()).all() and np.isnan(rbn.moving_variance.asnumpy()).all()


# ----------------------------------------------------------------------------- concurrent first use

CHILD = textwrap.dedent("""
    import numpy as np, mindspore as ms, rbn_reference
    from rbn_reference import parity
    from tolerances import tolerance
    from rbn_mindspore import RepresentativeBatchNorm2d, cpu_kernels, state_dict_to_numpy
    assert cpu_kernels.instance_kernels() is not None
    layer = RepresentativeBatchNorm2d(3, scaling_stat="sigma_c").set_train()
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    y = layer(ms.Tensor(x.astype(np.float32))).asnumpy()
    params = {k: v.astype(np.float64) for k, v in state_dict_to_numpy(layer).items()
              if k in rbn_reference.PARAM_NAMES}
    want = rbn_reference.forward(x, params, None, training=True, scaling_stat="sigma_c")[0]
    check = parity.compare("y", "y", y, want, "float32", tolerance("float32"))
    assert check.passed, str(check)
""")


def test_two_processes_build_the_kernels_at_once(tmp_path):
    """Both compile into an empty cache at the same time; both load a whole library and match the
    oracle; no temporary file stays (each build writes a temporary file and renames it)."""
    cache = tmp_path / "cache"
    env = dict(os.environ, RBN_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    children = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [child.communicate(timeout=300)[0] for child in children]
    finally:
        for child in children:
            child.kill()
    for child, output in zip(children, outputs):
        assert child.returncode == 0, output[-3000:]
    assert [path.suffix for path in cache.iterdir()] == [".so"], sorted(os.listdir(cache))
