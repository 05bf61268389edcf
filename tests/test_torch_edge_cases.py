"""rbn_torch where users meet edge cases: empty batches, NaN/Inf input, frozen BatchNorms.

The yardstick is ``nn.BatchNorm*d`` itself: what it does on the same input (measured on
torch 2.13: an empty batch gives an empty output, zero parameter gradients, unchanged running
statistics, and ``num_batches_tracked`` still counts the training call).
"""

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from rbn_torch import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d,  # noqa: E402
                       convert_bn_to_rbn)

LAYERS = {"1d": (nn.BatchNorm1d, RepresentativeBatchNorm1d), "1d-len": (nn.BatchNorm1d, RepresentativeBatchNorm1d),
          "2d": (nn.BatchNorm2d, RepresentativeBatchNorm2d), "3d": (nn.BatchNorm3d, RepresentativeBatchNorm3d)}
SHAPES = {"1d": (6, 3), "1d-len": (4, 3, 5), "2d": (3, 3, 4, 5), "3d": (2, 3, 2, 3, 4)}


def random_parameters(layer, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.copy_(torch.rand(param.shape, generator=generator) - 0.5
                        + (1.0 if name in ("weight", "scale_bias") else 0.0))
    return layer


def pair(kind, calibrations, **kwargs):
    """A trained-looking BatchNorm and the RBN with the same state (calibrations on or off)."""
    bn_class, rbn_class = LAYERS[kind]
    bn = random_parameters(bn_class(3, **kwargs))
    bn(3 + torch.randn(SHAPES[kind]))  # running statistics away from their init
    rbn = random_parameters(rbn_class(3, centering=calibrations, scaling=calibrations, **kwargs))
    rbn.load_state_dict(bn.state_dict(), strict=False)
    return bn, rbn


def run(layer, x):
    """Output, input gradient and parameter gradients of sum(y) (empty tensors sum to 0)."""
    inputs = x.clone().requires_grad_()
    y = layer(inputs)
    params = list(layer.parameters())
    grads = torch.autograd.grad(y.sum(), [inputs, *params], allow_unused=True)
    return y, grads[0], dict(zip([name for name, _ in layer.named_parameters()], grads[1:]))


# ----------------------------------------------------------------------------- empty batches


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("calibrations", [False, True], ids=["calibrations-off", "calibrations-on"])
@pytest.mark.parametrize("kind, empty_shape", [("1d", (0, 3)), ("1d-len", (0, 3, 5)), ("2d", (0, 3, 4, 5)),
                                               ("3d", (0, 3, 2, 3, 4)), ("2d", (2, 3, 0, 5))],
                         ids=["1d", "1d-len", "2d", "3d", "2d-empty-height"])
def test_empty_batch_behaves_as_batchnorm(kind, empty_shape, calibrations, training, momentum):
    bn, rbn = pair(kind, calibrations, momentum=momentum)
    bn.train(training), rbn.train(training)
    x = torch.randn(empty_shape)
    y_bn, dx_bn, grads_bn = run(bn, x)
    y_rbn, dx_rbn, grads_rbn = run(rbn, x)
    assert y_rbn.shape == y_bn.shape == empty_shape and y_rbn.dtype == y_bn.dtype
    assert dx_rbn.shape == dx_bn.shape == empty_shape
    for name, grad in grads_bn.items():
        assert torch.equal(grads_rbn[name], grad), name  # zeros, not None
    for name, grad in grads_rbn.items():
        assert torch.equal(grad, torch.zeros(3)), name
    for name, value in bn.state_dict().items():
        assert torch.equal(rbn.state_dict()[name], value), name  # num_batches_tracked counts in training


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batch_without_running_stats_and_in_half_precision(training):
    bn = nn.BatchNorm2d(3, track_running_stats=False).train(training)
    rbn = RepresentativeBatchNorm2d(3, track_running_stats=False).train(training)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(0, 3, 4, 4, dtype=dtype)
        assert rbn(x).shape == bn(x).shape and rbn(x).dtype == bn(x).dtype == dtype


def test_empty_batch_then_a_real_one_trains_as_batchnorm():
    """The empty call leaves no trace in the statistics the next batch updates."""
    bn, rbn = pair("2d", False, momentum=None)
    x = 2 + torch.randn(4, 3, 4, 5)
    for layer in (bn, rbn):
        layer(torch.randn(0, 3, 4, 5))
        layer(x)
    for name, value in bn.state_dict().items():
        torch.testing.assert_close(rbn.state_dict()[name], value, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- NaN and Inf


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_with_calibrations_off_are_batchnorms(bad, training):
    bn, rbn = pair("2d", False)
    bn.train(training), rbn.train(training)
    x = torch.randn(3, 3, 4, 5)
    x[0, 1, 2, 3] = bad
    y_bn, dx_bn, _ = run(bn, x)
    y_rbn, dx_rbn, _ = run(rbn, x)
    torch.testing.assert_close(y_rbn, y_bn, equal_nan=True)
    torch.testing.assert_close(dx_rbn, dx_bn, equal_nan=True)
    for name, value in bn.state_dict().items():
        torch.testing.assert_close(rbn.state_dict()[name], value, equal_nan=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_and_inf_with_calibrations_stay_where_batchnorm_puts_them(bad):
    """Training: as BatchNorm, the bad value's channel becomes NaN and the others are untouched.

    Eval: BatchNorm keeps a bad value to its own element; RBN's calibrations use per-instance
    statistics, so the bad value's whole (n, c) instance becomes NaN and the rest is untouched.
    """
    bn, rbn = pair("2d", True)
    clean = torch.randn(3, 3, 4, 5)
    x = clean.clone()
    x[0, 1, 2, 3] = bad
    state = copy.deepcopy(rbn.state_dict())
    for training in (True, False):
        bn.train(training), rbn.train(training)
        y_bn = bn(x) if training else None
        y = rbn(x)
        if training:
            assert torch.equal(y.isnan(), y_bn.isnan()) and y[:, 1].isnan().all()
            assert torch.isfinite(y[:, [0, 2]]).all()
            assert rbn.running_mean[1].isnan() or rbn.running_mean[1].isinf()
            assert torch.isfinite(rbn.running_mean[[0, 2]]).all()
        else:
            rbn.load_state_dict(state)  # running statistics from before the bad training step
            y = rbn(x)
            assert y[0, 1].isnan().all()
            mask = torch.ones_like(y, dtype=torch.bool)
            mask[0, 1] = False
            torch.testing.assert_close(y[mask], rbn(clean)[mask])


# ----------------------------------------------------------------------------- frozen BatchNorms


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_convert_frozen_batchnorm_preserves_output_and_freezing(training):
    """Fine-tuning often freezes BatchNorm's affine parameters; conversion must still preserve."""
    bn, _ = pair("2d", False)
    bn.weight.requires_grad_(False), bn.bias.requires_grad_(False)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), bn).train(training)
    x = torch.randn(4, 2, 4, 5)
    want = copy.deepcopy(net)(x)
    converted = convert_bn_to_rbn(net)
    layer = converted[1]
    assert isinstance(layer, RepresentativeBatchNorm2d)
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.center_weight.requires_grad and layer.scale_weight.requires_grad
    torch.testing.assert_close(converted(x), want, rtol=1e-5, atol=1e-6)
