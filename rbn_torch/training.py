"""Training a network with PyTorch's own SGD: the ``Trainer`` behind ``rbn train``/``rbn trajectory``.

``rbn_torch.training``, ``rbn_jittor.training`` and ``rbn_mindspore.training`` have the same
``Trainer`` (same arguments, same methods) and compute the same update (docs/training.md):

.. math::
    g = \\nabla_p L + \\lambda p, \\qquad v \\leftarrow \\mu v + g \\; (v = g \\text{ at the first step}),
    \\qquad p \\leftarrow p - \\eta v

with :math:`L` the mean cross-entropy, :math:`\\lambda` the weight decay (every parameter decayed,
norm layers' included), :math:`\\mu` the momentum, :math:`\\eta` the step's learning rate.
"""
import torch
from torch import nn

from rbn_reference import check_arrays

from .models.porting import logits as eval_logits, set_mode
from .state_dict import load_numpy_state_dict

__all__ = ["Trainer", "DTYPES", "seed", "cast"]

# Training dtypes on CPU.
DTYPES = ("float32", "float64")


class Trainer:
    r"""Train ``model`` on NumPy batches with ``torch.optim.SGD`` (momentum, weight decay).

    The optimizer is ``torch.optim.SGD(momentum, dampening=0, weight_decay, nesterov=False)``
    over every parameter: weight decay is added to the gradient, :math:`g = \nabla_p L + \lambda p`,
    for all parameters, norm layers' weights and biases included; then
    :math:`v \leftarrow \mu v + g` (:math:`v = g` at the first step) and :math:`p \leftarrow p - \eta v`.

    Args:
        model (nn.Module): the network, in the dtype it will train in.
        momentum (float, keyword-only): :math:`\mu`. Default: 0.9.
        weight_decay (float, keyword-only): :math:`\lambda`, on every parameter. Default: 5e-4.

    Example::

        >>> import numpy as np, torch
        >>> from rbn_torch.training import Trainer
        >>> trainer = Trainer(torch.nn.Linear(4, 3))
        >>> x, y = np.ones((2, 4), np.float32), np.array([0, 2])
        >>> loss = trainer.step(x, y, lr=0.1)
        >>> trainer.logits(x).shape
        (2, 3)
    """

    def __init__(self, model, *, momentum=0.9, weight_decay=5e-4):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=momentum, dampening=0,
                                         weight_decay=weight_decay, nesterov=False)

    def step(self, x, y, lr):
        """One training step on the batch ``x`` (N, ...) with integer labels ``y`` (N,) at learning
        rate ``lr``, in train mode; returns the batch's mean cross-entropy before the step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        set_mode(self.model, True)
        loss = nn.functional.cross_entropy(self.model(torch.from_numpy(x)), torch.from_numpy(y.astype("int64")))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def momentum_buffers(self):
        """The optimizer's momentum buffers :math:`v` as NumPy arrays (copies) under the parameters'
        names (PyTorch's are canonical); zeros before the first step, which then gives :math:`v = g`
        as PyTorch's missing buffer does.

        Example::

            >>> import torch
            >>> from rbn_torch.training import Trainer
            >>> Trainer(torch.nn.Linear(2, 1)).momentum_buffers()["bias"]
            array([0.], dtype=float32)
        """
        buffers = {}
        for name, parameter in self.model.named_parameters():
            buffer = self.optimizer.state.get(parameter, {}).get("momentum_buffer")
            if buffer is None:
                buffer = torch.zeros_like(parameter.detach())
            buffers[name] = buffer.detach().cpu().numpy().copy()
        return buffers

    def load_state(self, arrays, momentum_buffers):
        """Restart training from a state: the model's parameters, running statistics and batch
        counts from canonical ``arrays`` (what ``state_dict_to_numpy`` gives; strictly, as
        ``load_numpy_state_dict``) and the optimizer's ``momentum_buffers`` (what
        :meth:`momentum_buffers` gives), each cast to its parameter's dtype.

        Args:
            arrays (dict): canonical name -> array, the model's whole state dict.
            momentum_buffers (dict): parameter name -> array, one for every parameter.

        Example::

            >>> import numpy as np, torch
            >>> from rbn_torch.training import Trainer
            >>> trainer = Trainer(torch.nn.Linear(2, 1))
            >>> trainer.load_state({"weight": np.zeros((1, 2)), "bias": np.zeros(1)},
            ...                    {"weight": np.ones((1, 2)), "bias": np.ones(1)})
            >>> trainer.momentum_buffers()["weight"]
            array([[1., 1.]], dtype=float32)
        """
        parameters = dict(self.model.named_parameters())
        check_arrays("momentum buffers", momentum_buffers, {name: tuple(p.shape) for name, p in parameters.items()})
        load_numpy_state_dict(self.model, arrays)
        for name, parameter in parameters.items():
            self.optimizer.state[parameter]["momentum_buffer"] = torch.tensor(momentum_buffers[name],
                                                                             dtype=parameter.dtype)

    def logits(self, x):
        """Eval-mode logits of the NumPy batch ``x`` as a NumPy array; the model's mode is restored."""
        training = self.model.training
        try:
            return eval_logits(self.model, x, False)
        finally:
            set_mode(self.model, training)


def seed(value):
    """Seed PyTorch's generator, which initialises the zoo's weights.

    Example::

        >>> import torch
        >>> from rbn_torch.training import seed
        >>> seed(0); a = torch.rand(1); seed(0)
        >>> bool(torch.rand(1) == a)
        True
    """
    torch.manual_seed(value)


def cast(model, dtype):
    """``model`` with every floating-point parameter and buffer in ``dtype`` ("float32" or "float64").

    Example::

        >>> import torch
        >>> from rbn_torch.training import cast
        >>> cast(torch.nn.Linear(2, 1), "float64").weight.dtype
        torch.float64
    """
    return model.to(getattr(torch, dtype))
