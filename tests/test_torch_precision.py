"""Mixed precision with rbn_torch: one training step of an RBN resnet18 under autocast.

RBN computes its statistics in float32 whatever the input's dtype (as nn.BatchNorm does) and
returns the input's dtype; its parameters and running statistics stay float32.
"""

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import rbn_torch.models as zoo  # noqa: E402
from rbn_torch import RepresentativeBatchNorm2d  # noqa: E402

from tolerances import BFLOAT16_LOSS_RTOL, FLOAT16_LOSS_RTOL  # noqa: E402


def batch(device="cpu"):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    target = torch.randint(0, 10, (4,), generator=generator)
    return x.to(device), target.to(device)


def model(device="cpu"):
    torch.manual_seed(0)
    net = zoo.resnet18(num_classes=10).to(device)
    with torch.no_grad():  # calibrations away from their init, so that each term of Eq. 12 matters
        for layer in net.modules():
            if isinstance(layer, RepresentativeBatchNorm2d):
                for param in layer.parameters():
                    param.add_(0.2 * torch.rand_like(param) - 0.1)
    return net


def step(net, x, target, autocast=None, scaler=None):
    """Forward, loss, backward and an SGD step; returns the loss as a float."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with autocast or torch.autocast("cpu", enabled=False):
        loss = nn.functional.cross_entropy(net(x), target)
    if scaler is None:
        loss.backward()
        grads = [param.grad.clone() for param in net.parameters()]
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads = [param.grad.clone() for param in net.parameters()]
        scaler.step(optimizer)
        scaler.update()
    return loss.item(), grads


def assert_float32_state(net):
    for name, value in net.state_dict().items():
        want = torch.int64 if name.endswith("num_batches_tracked") else torch.float32
        assert value.dtype == want, name
        assert torch.isfinite(value.float()).all(), name


def test_bfloat16_autocast_training_step():
    x, target = batch()
    reference = model()
    autocast_net = copy.deepcopy(reference)
    loss32, grads32 = step(reference, x, target)
    loss16, grads16 = step(autocast_net, x, target, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert abs(loss16 - loss32) <= BFLOAT16_LOSS_RTOL * abs(loss32), (loss16, loss32)
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads16)
    assert_float32_state(autocast_net)
    assert [grad.shape for grad in grads16] == [grad.shape for grad in grads32]


def test_rbn_layer_under_bfloat16_autocast_returns_bfloat16():
    layer = RepresentativeBatchNorm2d(3)
    conv = nn.Conv2d(3, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(conv(torch.randn(2, 3, 4, 4)))
    assert y.dtype == torch.bfloat16 and layer.running_var.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="float16 autocast with GradScaler is a CUDA feature; this torch has no CUDA device")
def test_float16_autocast_with_grad_scaler_on_cuda():
    x, target = batch("cuda")
    reference = model("cuda")
    autocast_net = copy.deepcopy(reference)
    loss32, _ = step(reference, x, target)
    loss16, grads16 = step(autocast_net, x, target, autocast=torch.autocast("cuda", dtype=torch.float16),
                           scaler=torch.amp.GradScaler("cuda"))
    assert abs(loss16 - loss32) <= FLOAT16_LOSS_RTOL * abs(loss32), (loss16, loss32)
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads16)
    assert_float32_state(autocast_net)
