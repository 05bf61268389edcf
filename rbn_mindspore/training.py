"""Training a network with MindSpore's own optimizer: the ``Trainer`` behind ``rbn train``/``rbn trajectory``.

Same ``Trainer`` as ``rbn_torch.training`` (see there for the update). ``mindspore.nn.Momentum``
computes :math:`v \\leftarrow \\mu v + g`, :math:`p \\leftarrow p - \\eta v` from :math:`v = 0`,
PyTorch's update without dampening. Its weight decay is folded into the gradient as in PyTorch,
but by default only for parameters whose names hold neither ``gamma`` nor ``beta`` (a norm
layer's are then not decayed): here every parameter is in one group with the weight decay, so
all are. The train step (forward, backward, update) runs compiled (``ms.jit``, graph mode).
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops
from rbn_reference import check_arrays

from .models.porting import logits as eval_logits, set_mode
from .state_dict import canonical_parameters, load_numpy_state_dict

__all__ = ["Trainer", "DTYPES", "seed", "cast"]

# Training dtypes on CPU: MindSpore's Conv2D takes float16/float32 only (a float64 step raises
# TypeError), so a float64 network cannot train here.
DTYPES = ("float32",)


class TrainStep(nn.Cell):
    """Forward, mean cross-entropy, backward and the optimizer's update as one compiled graph.

    One ``value_and_grad`` call runs the forward once, so the running statistics move once a step.
    """

    def __init__(self, model, optimizer):
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.weights = optimizer.parameters

    def loss(self, x, y):
        return ops.cross_entropy(self.model(x), y)

    @ms.jit
    def construct(self, x, y, lr):
        # The learning rate enters the graph as an input: a ``set_data`` on the optimizer's
        # learning-rate Parameter from outside is not seen by the compiled graph (measured).
        loss, grads = ms.value_and_grad(self.loss, None, self.weights)(x, y)
        grads = ops.depend(grads, ops.assign(self.optimizer.learning_rate, lr))
        return ops.depend(loss, self.optimizer(grads))


class Trainer:
    r"""Train ``model`` on NumPy batches with ``mindspore.nn.Momentum`` (momentum, weight decay).

    The optimizer is ``nn.Momentum([{"params": all trainable, "weight_decay": weight_decay}],
    momentum, use_nesterov=False)``: :math:`g = \nabla_p L + \lambda p` for all parameters, norm
    layers' ``gamma``/``beta`` included; :math:`v \leftarrow \mu v + g` from :math:`v = 0`;
    :math:`p \leftarrow p - \eta v`.

    Args:
        model (Cell): the network, in the dtype it will train in.
        momentum (float, keyword-only): :math:`\mu`. Default: ``0.9`` .
        weight_decay (float, keyword-only): :math:`\lambda`, on every parameter. Default: ``5e-4`` .

    Examples:
        >>> import numpy as np
        >>> from mindspore import nn
        >>> from rbn_mindspore.training import Trainer
        >>> trainer = Trainer(nn.Dense(4, 3))
        >>> x, y = np.ones((2, 4), np.float32), np.array([0, 2])
        >>> loss = trainer.step(x, y, lr=0.1)
        >>> trainer.logits(x).shape
        (2, 3)
    """

    def __init__(self, model, *, momentum=0.9, weight_decay=5e-4):
        self.model = model
        self.optimizer = nn.Momentum([{"params": model.trainable_params(), "weight_decay": weight_decay}],
                                     learning_rate=0.0, momentum=momentum, use_nesterov=False)
        self._train_step = TrainStep(model, self.optimizer)

    def step(self, x, y, lr):
        """One training step on the batch ``x`` (N, ...) with integer labels ``y`` (N,) at learning
        rate ``lr``, in train mode; returns the batch's mean cross-entropy before the step."""
        set_mode(self.model, True)
        loss = self._train_step(ms.Tensor(x), ms.Tensor(y.astype(np.int32)), ms.Tensor(lr, ms.float32))
        return float(loss.asnumpy())

    def _moments(self):
        """(canonical name, moment Parameter) of every parameter: ``nn.Momentum.moments`` is in the
        order of its parameters."""
        names = {parameter.name: name for name, parameter in canonical_parameters(self.model).items()}
        return [(names[parameter.name], moment)
                for parameter, moment in zip(self.optimizer.parameters, self.optimizer.moments)]

    def momentum_buffers(self):
        """The optimizer's momentum buffers :math:`v` (``nn.Momentum``'s ``moments``) as NumPy arrays
        (copies) under canonical parameter names; zeros before the first step.

        Examples:
            >>> from mindspore import nn
            >>> from rbn_mindspore.training import Trainer
            >>> Trainer(nn.Dense(2, 1)).momentum_buffers()["bias"]
            array([0.], dtype=float32)
        """
        return {name: moment.asnumpy().copy() for name, moment in self._moments()}

    def load_state(self, arrays, momentum_buffers):
        """Restart training from a state, as ``rbn_torch.training.Trainer.load_state`` does.

        The values are copied into each Parameter's memory (``copy_``), which the compiled train
        step reads: after a ``set_data`` the compiled step goes on reading the old values (measured).

        Args:
            arrays (dict): the model's whole state dict, loaded with ``load_numpy_state_dict``.
            momentum_buffers (dict): :meth:`momentum_buffers`'s, of every trainable Parameter.

        Examples:
            >>> import numpy as np
            >>> from mindspore import nn
            >>> from rbn_mindspore.training import Trainer
            >>> trainer = Trainer(nn.Dense(2, 1))
            >>> trainer.load_state({"weight": np.zeros((1, 2)), "bias": np.zeros(1)},
            ...                    {"weight": np.ones((1, 2)), "bias": np.ones(1)})
            >>> trainer.momentum_buffers()["weight"]
            array([[1., 1.]], dtype=float32)
        """
        moments = self._moments()
        check_arrays("momentum buffers", momentum_buffers, {name: moment.shape for name, moment in moments})
        load_numpy_state_dict(self.model, arrays)
        for name, moment in moments:
            moment.copy_(ms.Tensor(np.asarray(momentum_buffers[name]), dtype=moment.dtype))

    def logits(self, x):
        """Eval-mode logits of the NumPy batch ``x`` as a NumPy array; the model's mode is restored."""
        training = self.model.training
        try:
            return eval_logits(self.model, x, False)
        finally:
            set_mode(self.model, training)


def seed(value):
    """Seed MindSpore's generator, which initialises the zoo's weights."""
    ms.set_seed(value)


def cast(model, dtype):
    """``model`` with every floating-point Parameter (trainable and running statistics) in ``dtype``
    ("float32" or "float64"); integer ones (RBN's batch count) stay integers.

    Examples:
        >>> from mindspore import nn
        >>> from rbn_mindspore.training import cast
        >>> cast(nn.Dense(2, 1), "float64").weight.dtype
        mindspore.float64
    """
    for parameter in model.get_parameters():
        if parameter.dtype in ms.common.dtype.float_type:
            parameter.set_dtype(getattr(ms, dtype))
    return model
