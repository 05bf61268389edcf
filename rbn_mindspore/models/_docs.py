"""The docstring text the zoo's builders share (MindSpore's form)."""

EQUATION = r"""
    Every norm layer is ``norm_layer`` (default :class:`rbn_mindspore.RepresentativeBatchNorm2d`,
    Eq. 12: :math:`X_{cm} = X + w_m K_m`, :math:`X_m = X_{cm} - \mathrm{E}[X_{cm}]`,
    :math:`X_s = X_m / \sqrt{\mathrm{Var}[X_{cm}] + \epsilon}`,
    :math:`X_{cs} = X_s \cdot \mathrm{sigmoid}(w_v K_s + w_b)`, :math:`Y = X_{cs} \gamma + \beta`;
    ``mindspore.nn.BatchNorm2d`` gives the baseline). No weights are downloaded."""

BUILDER = r"""{summary}
{equation}

    Args:
        num_classes (int, optional): outputs of the classifier. Default: ``1000`` .
        norm_layer (type, optional): the norm layer class, called with the channel count.
            Default: ``None`` (:class:`rbn_mindspore.RepresentativeBatchNorm2d`).{extra_args}

    Inputs:
        - **x** (Tensor) - :math:`(N, 3, H, W)`, float32.

    Outputs:
        Tensor of shape :math:`(N, num\_classes)`, the logits.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> from rbn_mindspore.models import {name}
        >>> net = {name}(num_classes=10)
        >>> len(net.trainable_params()) > 0
        True
"""


def builder_doc(name, summary, extra_args=""):
    return BUILDER.format(name=name, summary=summary, equation=EQUATION, extra_args=extra_args)
