"""Same weights and input in rbn_torch and rbn_mindspore: same outputs, gradients, moving statistics.

Through each package's public API only: torch exports canonical NumPy arrays, MindSpore loads them.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ms = pytest.importorskip("mindspore")

from mindspore import Tensor  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

import rbn_mindspore  # noqa: E402
import rbn_torch  # noqa: E402

LAYERS = {"1d": (rbn_torch.RepresentativeBatchNorm1d, rbn_mindspore.RepresentativeBatchNorm1d, (6, 3, 4)),
          "2d": (rbn_torch.RepresentativeBatchNorm2d, rbn_mindspore.RepresentativeBatchNorm2d, (3, 3, 4, 5)),
          "3d": (rbn_torch.RepresentativeBatchNorm3d, rbn_mindspore.RepresentativeBatchNorm3d, (2, 3, 2, 3, 4))}


def assert_same(got, want, dtype, name="value"):
    check = parity.compare("value", name, np.asarray(got), np.asarray(want), dtype, tolerance(dtype))
    assert check.passed, str(check)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layer, stats", [("2d", ("mu_c", "mu_c")), ("2d", ("sigma_c", "sigma_s")),
                                          ("1d", ("mu_s", "sigma_c")), ("3d", ("mu_c", "sigma_c"))],
                         ids=lambda value: value if isinstance(value, str) else "-".join(value))
def test_same_as_rbn_torch(layer, stats, dtype):
    torch_class, ms_class, shape = LAYERS[layer]
    kwargs = dict(centering_stat=stats[0], scaling_stat=stats[1])
    torch_layer = torch_class(3, dtype=getattr(torch, dtype), **kwargs)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for param in torch_layer.parameters():
            param.copy_(torch.from_numpy(rng.uniform(0.3, 1.2, param.shape)))
    ms_layer = ms_class(3, dtype=getattr(ms, dtype), **kwargs)
    rbn_mindspore.load_numpy_state_dict(ms_layer, rbn_torch.state_dict_to_numpy(torch_layer))
    ms_weights = ms_layer.trainable_params()
    names = {id(param): name for name, param in rbn_mindspore.canonical_parameters(ms_layer).items()}
    for training in (True, True, False):
        torch_layer.train(training)
        ms_layer.set_train(training)
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        inputs = torch.from_numpy(x).requires_grad_()
        y = torch_layer(inputs)
        torch_grads = torch.autograd.grad(y, [inputs, *torch_layer.parameters()], torch.from_numpy(dy))
        want = dict(zip(["x"] + [name for name, _ in torch_layer.named_parameters()], torch_grads))

        def objective(inputs):
            out = ms_layer(inputs)
            return (out * Tensor(dy)).sum(), out

        (_, ms_y), (dx, dweights) = ms.value_and_grad(objective, 0, ms_weights, has_aux=True)(Tensor(x))
        assert_same(ms_y.asnumpy(), y.detach().numpy(), dtype)
        assert_same(dx.asnumpy(), want["x"].numpy(), dtype)
        for weight, grad in zip(ms_weights, dweights):
            assert_same(grad.asnumpy(), want[names[id(weight)]].numpy(), dtype)
        ms_state = rbn_mindspore.state_dict_to_numpy(ms_layer)
        for name, value in rbn_torch.state_dict_to_numpy(torch_layer).items():
            assert_same(ms_state[name], value, dtype, name)
