"""Training a network with Jittor's own SGD: the ``Trainer`` behind ``rbn train``/``rbn trajectory``.

Same ``Trainer`` as ``rbn_torch.training`` (see there for the update). ``jt.optim.SGD`` folds
weight decay into the gradient as PyTorch does, but dampens the first step too
(:math:`v = (1 - \\text{dampening}) g` from a zero buffer, where PyTorch sets :math:`v = g`):
with ``dampening=0`` both give :math:`v = g`. Parameters that are ``stop_grad`` (running
statistics, the RBN batch count) are skipped by the optimizer.
"""
import jittor as jt
import numpy as np
from jittor import nn
from rbn_reference import check_arrays

from .models.porting import logits as eval_logits, set_mode
from .state_dict import load_numpy_state_dict

__all__ = ["Trainer", "DTYPES", "seed", "cast"]

# Training dtypes on CPU.
DTYPES = ("float32", "float64")


def as_var(array):
    """``jt.array`` keeping float64 (Jittor turns float64 into float32 by default)."""
    with jt.flag_scope(auto_convert_64_to_32=0):
        return jt.array(array)


class Trainer:
    r"""Train ``model`` on NumPy batches with ``jt.optim.SGD`` (momentum, weight decay).

    The optimizer is ``jt.optim.SGD(momentum, weight_decay, dampening=0, nesterov=False)`` over
    every parameter: :math:`g = \nabla_p L + \lambda p` for all parameters, norm layers' weights
    and biases included; :math:`v \leftarrow \mu v + g` from :math:`v = 0` (so :math:`v = g` at
    the first step, as in PyTorch); :math:`p \leftarrow p - \eta v`.

    Args:
        model (jittor.Module): the network, in the dtype it will train in.
        momentum (float, keyword-only): :math:`\mu`. Default: 0.9.
        weight_decay (float, keyword-only): :math:`\lambda`, on every parameter. Default: 5e-4.

    Example::

        >>> import numpy as np
        >>> from jittor import nn
        >>> from rbn_jittor.training import Trainer
        >>> trainer = Trainer(nn.Linear(4, 3))
        >>> x, y = np.ones((2, 4), np.float32), np.array([0, 2])
        >>> loss = trainer.step(x, y, lr=0.1)
        >>> trainer.logits(x).shape
        (2, 3)
    """

    def __init__(self, model, *, momentum=0.9, weight_decay=5e-4):
        self.model = model
        self.optimizer = jt.optim.SGD(model.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay,
                                      dampening=0, nesterov=False)

    def step(self, x, y, lr):
        """One training step on the batch ``x`` (N, ...) with integer labels ``y`` (N,) at learning
        rate ``lr``, in train mode; returns the batch's mean cross-entropy before the step."""
        self.optimizer.lr = lr
        set_mode(self.model, True)
        loss = nn.cross_entropy_loss(self.model(as_var(x)), jt.array(y.astype("int32")))
        self.optimizer.step(loss)
        return float(loss.item())

    def _buffers(self):
        """(name, momentum buffer Var) of every trained parameter: ``jt.optim.SGD`` keeps one per
        parameter of a group in its ``values``, skipping ``stop_grad`` ones (running statistics)."""
        names = {id(var): name for name, var in self.model.named_parameters()}
        return [(names[id(parameter)], buffer) for group in self.optimizer.param_groups
                for parameter, buffer in zip(group["params"], group["values"]) if not parameter.is_stop_grad()]

    def momentum_buffers(self):
        """The optimizer's momentum buffers :math:`v` as NumPy arrays under canonical parameter names
        (Jittor's are); zeros before the first step.

        Example::

            >>> from jittor import nn
            >>> from rbn_jittor.training import Trainer
            >>> Trainer(nn.Linear(2, 1)).momentum_buffers()["bias"]
            array([0.], dtype=float32)
        """
        return {name: buffer.numpy().copy() for name, buffer in self._buffers()}

    def load_state(self, arrays, momentum_buffers):
        """Restart training from a state, as ``rbn_torch.training.Trainer.load_state`` does.

        Args:
            arrays (dict): the model's whole state dict, loaded with ``load_numpy_state_dict``.
            momentum_buffers (dict): :meth:`momentum_buffers`'s, of the parameters that are not ``stop_grad``.

        Example::

            >>> import numpy as np
            >>> from jittor import nn
            >>> from rbn_jittor.training import Trainer
            >>> trainer = Trainer(nn.Linear(2, 1))
            >>> trainer.load_state({"weight": np.zeros((1, 2)), "bias": np.zeros(1)},
            ...                    {"weight": np.ones((1, 2)), "bias": np.ones(1)})
            >>> trainer.momentum_buffers()["weight"]
            array([[1., 1.]], dtype=float32)
        """
        buffers = self._buffers()
        check_arrays("momentum buffers", momentum_buffers, {name: tuple(buffer.shape) for name, buffer in buffers})
        load_numpy_state_dict(self.model, arrays)
        for name, buffer in buffers:
            buffer.update(as_var(np.asarray(momentum_buffers[name], str(buffer.dtype))))

    def logits(self, x):
        """Eval-mode logits of the NumPy batch ``x`` as a NumPy array; the model's mode is restored."""
        training = [module.is_train for module in self.model.modules()]
        try:
            with jt.flag_scope(auto_convert_64_to_32=0):
                return eval_logits(self.model, x, False)
        finally:
            for module, mode in zip(self.model.modules(), training):
                module.is_train = mode


def seed(value):
    """Seed Jittor's generator, which initialises the zoo's weights."""
    jt.set_global_seed(value)


def cast(model, dtype):
    """``model`` with every floating-point Var (parameters and running statistics) in ``dtype``
    ("float32" or "float64").

    Example::

        >>> from jittor import nn
        >>> from rbn_jittor.training import cast
        >>> str(cast(nn.Linear(2, 1), "float64").weight.dtype)
        'float64'
    """
    return model.float64() if dtype == "float64" else model.float32()
