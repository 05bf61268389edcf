"""rbn_mindspore under MindSpore's mixed precision (mindspore.amp, O1/O2/O3) and exported to
MindIR (issue 16)."""

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor, amp, nn  # noqa: E402

from rbn_mindspore import RepresentativeBatchNorm2d, models  # noqa: E402

LEVELS = ["O1", "O2", "O3"]


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


def batch():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    return x, Tensor(np.array([1, 3], np.int32))


def first_norm(net):
    return next(cell for _, cell in net.cells_and_names() if isinstance(cell, RepresentativeBatchNorm2d))


def assert_trains(train, net):
    """Two steps on one batch: finite, decreasing loss; statistics and parameters stay float32."""
    x, y = batch()
    train.set_train()
    losses = []
    for _ in range(2):
        out = train(x, y)
        losses.append(float((out[0] if isinstance(out, tuple) else out).asnumpy()))
    assert np.isfinite(losses).all() and losses[1] < losses[0], losses
    norm = first_norm(net)
    assert norm.moving_mean.dtype == norm.gamma.dtype == ms.float32
    assert norm.num_batches_tracked.asnumpy() == 2 and np.isfinite(norm.moving_variance.asnumpy()).all()


@pytest.mark.parametrize("level", LEVELS)
def test_auto_mixed_precision_trains_rbn_resnet18(level):
    ms.set_seed(0)
    net = models.resnet18(num_classes=10)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    train = nn.TrainOneStepCell(nn.WithLossCell(amp.auto_mixed_precision(net, level), loss),
                                nn.Momentum(net.trainable_params(), 0.01, 0.9))
    assert_trains(train, net)


@pytest.mark.parametrize("level", LEVELS)
def test_build_train_network_trains_rbn_resnet18(level):
    ms.set_seed(0)
    net = models.resnet18(num_classes=10)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    # O2's default DynamicLossScaleManager is refused on CPU by MindSpore itself (for
    # nn.BatchNorm2d networks too): "Only `loss_scale_manager=None` or ... FixedLossScaleManager".
    kwargs = dict(loss_scale_manager=None) if level == "O2" else {}
    train = amp.build_train_network(net, nn.Momentum(net.trainable_params(), 0.01, 0.9), loss, level=level, **kwargs)
    assert_trains(train, net)


def test_half_input_is_computed_in_float32():
    """What O2/O3 hand a float32 layer: float16 input. Statistics in float32 (the same numbers as
    the float32 layer on the float16 values), the output and the input gradient in float16."""
    x16 = Tensor(np.random.default_rng(1).standard_normal((3, 4, 5, 5)).astype(np.float16) + 2)
    half, full = (RepresentativeBatchNorm2d(4, scaling_stat="sigma_c").set_train() for _ in range(2))
    y16 = half(x16)
    y32 = full(x16.astype(ms.float32))
    assert y16.dtype == ms.float16
    assert np.array_equal(y16.asnumpy(), y32.asnumpy().astype(np.float16))
    assert np.array_equal(half.moving_variance.asnumpy(), full.moving_variance.asnumpy())
    assert half.moving_variance.dtype == ms.float32
    flagged = RepresentativeBatchNorm2d(4, scaling_stat="sigma_c").set_train().to_float(ms.float16)
    flagged(x16)  # a float32 island: without it every op inside would run in float16
    assert np.array_equal(flagged.moving_variance.asnumpy(), full.moving_variance.asnumpy())

    def objective(inputs):
        return half(inputs).astype(ms.float32).sum()

    grad = ms.grad(objective)(x16)
    assert grad.dtype == ms.float16 and np.isfinite(grad.asnumpy()).all()


def test_float64_input_into_a_float32_layer_is_still_refused():
    with pytest.raises(TypeError, match=r"^expected Float32 input \(got Float64 input\)$"):
        RepresentativeBatchNorm2d(3)(Tensor(np.ones((2, 3, 2, 2))))


def test_mindir_export_reloads_with_the_same_logits(tmp_path):
    """Eval-mode RBN resnet18 -> MINDIR -> mindspore.load + nn.GraphCell: the same logits."""
    ms.set_seed(0)
    net = models.resnet18(num_classes=10).set_train(False)
    x, _ = batch()
    want = net(x).asnumpy()
    ms.export(net, x, file_name=str(tmp_path / "rbn_resnet18"), file_format="MINDIR")
    got = nn.GraphCell(ms.load(str(tmp_path / "rbn_resnet18.mindir")))(x).asnumpy()
    assert np.array_equal(got, want)
