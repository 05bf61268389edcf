"""Mixed precision with rbn_jittor: an RBN resnet18 forward and backward under Jittor's AMP.

With ``jt.flags.auto_mixed_precision_level = 5`` Jittor computes every op in float16; RBN takes
the float16 input, computes its statistics and per-channel math in float32 (as BatchNorm's rule
is) and returns float16; its parameters and running statistics stay float32.
"""

import numpy as np
import pytest

jt = pytest.importorskip("jittor")

import rbn_jittor  # noqa: E402
import rbn_jittor.models as zoo  # noqa: E402

from tolerances import FLOAT16_LOSS_RTOL, FLOAT16_OUTPUT_RTOL  # noqa: E402

AMP_LEVEL = 5  # float16 ops and arrays, Jittor's own mixed-precision setting


def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 16, 16)).astype(np.float32), rng.integers(0, 4, 2)


def model():
    jt.set_seed(0)
    net = zoo.resnet18(num_classes=4)
    rng = np.random.default_rng(1)
    for layer in net.modules():  # calibrations away from their init, so that each term of Eq. 12 matters
        if isinstance(layer, rbn_jittor.RepresentativeBatchNorm):
            for param in layer.parameters():
                param.update(param + jt.array(rng.uniform(-0.1, 0.1, param.shape).astype(np.float32)))
    return net


def forward_backward(net, x, target):
    loss = jt.nn.cross_entropy_loss(net(jt.array(x)), jt.array(target))
    params = net.parameters()
    grads = jt.grad(loss, params)
    jt.sync_all()
    return loss, grads


@pytest.mark.skipif(not jt.has_cuda, reason="Jittor's CPU float16 kernels do not compile (jittor 1.3.11: its "
                    "relu, a float16 ternary(x > 0), fails with g++'s 'ambiguous overload for operator>'), "
                    "with BatchNorm as with RBN; AMP is for CUDA")
def test_resnet18_forward_backward_under_float16_amp():
    with jt.flag_scope(use_cuda=1):
        x, target = batch()
        loss32, grads32 = forward_backward(model(), x, target)
        net = model()
        with jt.flag_scope(auto_mixed_precision_level=AMP_LEVEL):
            loss16, grads16 = forward_backward(net, x, target)
        assert abs(loss16.item() - loss32.item()) <= FLOAT16_LOSS_RTOL * abs(loss32.item())
        for grad16, grad32 in zip(grads16, grads32):
            assert grad16.shape == grad32.shape and np.isfinite(grad16.numpy()).all()
        for layer in net.modules():
            if isinstance(layer, rbn_jittor.RepresentativeBatchNorm):
                for stat in (layer.running_mean, layer.running_var, layer.weight, layer.scale_bias):
                    assert stat.dtype == "float32" and np.isfinite(stat.numpy()).all()


def test_layer_under_float16_amp_computes_in_float32():
    """Under AMP every op is float16; RBN's output is its float32 result rounded once."""
    rng = np.random.default_rng(3)
    x = rng.normal(3.0, 2.0, (4, 3, 5, 5)).astype(np.float16).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layers = [rbn_jittor.RepresentativeBatchNorm2d(3, centering_stat=stat, scaling_stat="sigma_c")
              for stat in ("mu_c", "mu_s")]
    for layer in layers:
        want = layer(jt.array(x)).numpy()
        with jt.flag_scope(auto_mixed_precision_level=AMP_LEVEL):
            half = jt.array(x)
            y = layer(half)
            grads = jt.grad((y * jt.array(dy)).sum(), [half] + layer.parameters())
            jt.sync_all()
        assert half.dtype == "float16" and y.dtype == "float16"
        np.testing.assert_allclose(y.numpy(), want, rtol=FLOAT16_OUTPUT_RTOL, atol=FLOAT16_OUTPUT_RTOL)
        for grad in grads[1:]:
            assert grad.dtype == "float32" and np.isfinite(grad.numpy()).all()
        assert layer.running_var.dtype == "float32" and np.isfinite(layer.running_var.numpy()).all()


def test_float16_input_is_computed_in_float32():
    """Without AMP: a float16 input to a float32 layer; its output is the float32 one, rounded."""
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, (4, 3, 5, 5)).astype(np.float16)
    layers = [rbn_jittor.RepresentativeBatchNorm2d(3, centering_stat=stat, scaling_stat="sigma_c")
              for stat in ("mu_c", "mu_c", "mu_s", "mu_s")]
    y16, y32 = (layer(jt.array(x).cast(dtype)) for layer, dtype in zip(layers[:2], ("float16", "float32")))
    s16, s32 = (layer(jt.array(x).cast(dtype)) for layer, dtype in zip(layers[2:], ("float16", "float32")))
    for half, full in ((y16, y32), (s16, s32)):
        assert half.dtype == "float16"
        np.testing.assert_array_equal(half.numpy(), full.numpy().astype(np.float16))
    for layer in layers:
        assert layer.running_var.dtype == "float32"
    np.testing.assert_array_equal(layers[0].running_var.numpy(), layers[1].running_var.numpy())
