"""rbn_jittor and rbn_torch on the same weights and input: same outputs, gradients, statistics.

Weights travel as state dicts both ways: a PyTorch RBN state dict loads into the Jittor
layer as it is, and the Jittor layer's canonical NumPy state dict loads into PyTorch.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jt = pytest.importorskip("jittor")
rbn_torch = pytest.importorskip("rbn_torch")

import rbn_jittor  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import TOLERANCES  # noqa: E402

SHAPE = (3, 4, 5, 4)
STEPS = 2


def torch_layer(centering_stat, scaling_stat):
    layer = rbn_torch.RepresentativeBatchNorm2d(SHAPE[1], dtype=torch.float64, centering_stat=centering_stat,
                                                scaling_stat=scaling_stat)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.copy_(torch.from_numpy(rng.uniform(-1.0, 1.5, SHAPE[1])))
        layer.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 2.0, SHAPE[1])))
        layer.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, SHAPE[1])))
    return layer


def run_torch(layer, x, dy, training):
    layer.train(training)
    x = torch.from_numpy(x).requires_grad_()
    for _ in range(STEPS if training else 1):
        y = layer(x)
    names = [name for name, _ in layer.named_parameters()]
    grads = torch.autograd.grad((y * torch.from_numpy(dy)).sum(), [x] + [getattr(layer, n) for n in names])
    state = {name: value.numpy() for name, value in layer.state_dict().items() if name not in names}
    return y.detach().numpy(), dict(zip(["x"] + names, (g.numpy() for g in grads))), state


def run_jittor(layer, x, dy, training):
    layer.is_train = training  # not eval(): that would stop the parameters' gradients
    with jt.flag_scope(auto_convert_64_to_32=0):
        x = jt.array(x)
        for _ in range(STEPS if training else 1):
            y = layer(x)
        names = ["weight", "bias", "center_weight", "scale_weight", "scale_bias"]
        grads = jt.grad((y * jt.array(dy)).sum(), [x] + [getattr(layer, n) for n in names])
        state = {k: v for k, v in rbn_jittor.state_dict_to_numpy(layer).items() if k not in names}
        return y.numpy(), dict(zip(["x"] + names, (g.numpy() for g in grads))), state


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stats", [("mu_c", "mu_c"), ("mu_s", "sigma_c")], ids="-".join)
def test_same_results_as_rbn_torch(stats, training):
    source = torch_layer(*stats)
    layer = rbn_jittor.RepresentativeBatchNorm2d(SHAPE[1], centering_stat=stats[0], scaling_stat=stats[1]).float64()
    layer.load_state_dict(source.state_dict())  # a PyTorch state dict, as it is
    rng = np.random.default_rng(4)
    x, dy = rng.normal(1.0, 2.0, SHAPE), rng.standard_normal(SHAPE)
    want = run_torch(source, x, dy, training)
    got = run_jittor(layer, x, dy, training)
    tol = TOLERANCES["float64"]
    checks = [parity.compare("y", "y", got[0], want[0], "float64", tol)]
    checks += [parity.compare("grad", f"grad {name}", got[1][name], grad, "float64", tol)
               for name, grad in want[1].items()]
    checks += [parity.compare("state", name, got[2][name], value, "float64", tol) for name, value in want[2].items()]
    parity.assert_checks(checks)
    # and back: the Jittor layer's canonical state dict loads into rbn_torch
    back = rbn_torch.RepresentativeBatchNorm2d(SHAPE[1], dtype=torch.float64, centering_stat=stats[0],
                                               scaling_stat=stats[1])
    back.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in rbn_jittor.state_dict_to_numpy(layer).items()})
    for name, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), rbn_jittor.state_dict_to_numpy(layer)[name])
