"""Training: each framework's Trainer against a NumPy-written SGD, and the ``rbn train`` command.

The Trainer check runs one linear layer (logits ``x W^T + b``), whose mean cross-entropy
gradient NumPy writes in two lines, through several steps of momentum, weight decay and a
changing learning rate: every framework's own optimizer must give PyTorch's update
(docs/training.md).
"""

import numpy as np
import pytest

from rbn import checkpoint, frameworks
from rbn_reference.parity import assert_checks, compare
from tolerances import tolerance

FEATURES, CLASSES, BATCH = 6, 4, 5
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
LRS = (0.5, 0.3, 0.1)  # changing, as on the cosine schedule; large so the step moves


def installed(name):
    return pytest.param(name, marks=pytest.mark.skipif(not frameworks.get(name).installed(),
                                                       reason=f"{name} is not installed"))


FRAMEWORK_PARAMS = [installed(name) for name in frameworks.names()]


def batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, BATCH))
            for _ in range(steps)]


def reference_sgd(weight, bias, data, lrs):
    """PyTorch's SGD (dampening 0, no Nesterov, decay folded into the gradient) on a linear layer,
    in float64: the parameters and the losses after each step."""
    params = [weight.astype(np.float64), bias.astype(np.float64)]
    buffers, history = None, []
    for (x, y), lr in zip(data, lrs):
        x = x.astype(np.float64)
        z = x @ params[0].T + params[1]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).mean()
        dz = (p - np.eye(CLASSES)[y]) / len(y)
        grads = [dz.T @ x + WEIGHT_DECAY * params[0], dz.sum(axis=0) + WEIGHT_DECAY * params[1]]
        buffers = grads if buffers is None else [MOMENTUM * v + g for v, g in zip(buffers, grads)]
        params = [w - lr * v for w, v in zip(params, buffers)]
        history.append((params, loss))
    return history


def linear(framework):
    if framework == "torch":
        from torch import nn
        return nn.Linear(FEATURES, CLASSES)
    if framework == "jittor":
        checkpoint.adapter("jittor")  # MindSpore before Jittor (see rbn.frameworks)
        from jittor import nn
        return nn.Linear(FEATURES, CLASSES)
    from mindspore import nn
    return nn.Dense(FEATURES, CLASSES)


@pytest.mark.parametrize("steps", [1, len(LRS)])
@pytest.mark.parametrize("framework", FRAMEWORK_PARAMS)
def test_trainer_step_is_torchs_sgd_written_in_numpy(framework, steps):
    porting = checkpoint.adapter(framework)
    training = frameworks.import_module(framework, f"rbn_{framework}.training")
    model = linear(framework)
    rng = np.random.default_rng(1)
    start = {"weight": rng.standard_normal((CLASSES, FEATURES)).astype(np.float32),
             "bias": rng.standard_normal(CLASSES).astype(np.float32)}
    porting.load_numpy_state_dict(model, start)
    trainer = training.Trainer(model, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    data = batches(steps)
    losses = [trainer.step(x, y, lr) for (x, y), lr in zip(data, LRS)]
    history = reference_sgd(start["weight"], start["bias"], data, LRS)
    (weight, bias), _ = history[-1]
    got = porting.state_dict_to_numpy(model)
    # The update itself is far above the tolerance: a wrong momentum or decay would show.
    assert np.abs(weight - start["weight"]).max() > 0.1
    assert_checks([compare("sgd", f"{framework} weight after {steps} steps", got["weight"], weight, "float32",
                           tolerance("float32")),
                   compare("sgd", f"{framework} bias after {steps} steps", got["bias"], bias, "float32",
                           tolerance("float32")),
                   compare("sgd", f"{framework} losses", np.array(losses, np.float32), np.array([h[1] for h in history]),
                           "float32", tolerance("float32"))])
    x = data[0][0]
    assert_checks([compare("logits", f"{framework} eval logits", trainer.logits(x), x @ weight.T + bias, "float32",
                           tolerance("float32"))])
