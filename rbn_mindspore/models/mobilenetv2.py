"""MobileNetV2 with a pluggable norm layer (default: RepresentativeBatchNorm2d).

Same module structure as ``rbn_torch.models`` (torchvision's ``features.<i>...``,
``classifier.1``); names map mechanically, see ``resnet.py``.
"""
from mindspore import nn
from mindspore.common.initializer import HeNormal, Normal, Zero

from ..modules import RepresentativeBatchNorm2d
from ._docs import builder_doc

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenet_v2"]

# t (expansion), c (channels), n (repeats), s (stride of the first repeat): the paper's Table 2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv2d(in_channels, out_channels, kernel_size, stride=1, groups=1):
    # torchvision's initialisation; explicit "pad" mode as in resnet.py.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad",
                     padding=(kernel_size - 1) // 2, group=groups, has_bias=False,
                     weight_init=HeNormal(mode="fan_out"))


class ConvNormActivation(nn.SequentialCell):
    """torchvision's Conv2dNormActivation with ReLU6: children 0 (conv), 1 (norm), 2 (act)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, groups, norm_layer):
        super().__init__([
            _conv2d(in_channels, out_channels, kernel_size, stride, groups),
            norm_layer(out_channels),
            nn.ReLU6(),
        ])


class InvertedResidual(nn.Cell):
    """MobileNetV2's inverted residual: 1x1 expansion, 3x3 depthwise, 1x1 linear projection, with
    the input added when shapes allow. Inputs/Outputs: :math:`(N, C, H, W)`."""

    def __init__(self, inp, oup, stride, expand_ratio, norm_layer):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden_dim, 1, 1, 1, norm_layer))
        layers += [
            ConvNormActivation(hidden_dim, hidden_dim, 3, stride, hidden_dim, norm_layer),
            _conv2d(hidden_dim, oup, 1),
            norm_layer(oup),
        ]
        self.conv = nn.SequentialCell(layers)

    def construct(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Cell):
    """MobileNetV2 (Sandler et al. 2018) with torchvision's structure and names; see
    :func:`mobilenet_v2` for the arguments, inputs and outputs."""

    def __init__(self, num_classes=1000, norm_layer=None, dropout=0.2):
        super().__init__()
        norm_layer = norm_layer or RepresentativeBatchNorm2d
        input_channel, last_channel = 32, 1280
        features = [ConvNormActivation(3, input_channel, 3, 2, 1, norm_layer)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t, norm_layer))
                input_channel = c
        features.append(ConvNormActivation(input_channel, last_channel, 1, 1, 1, norm_layer))
        self.features = nn.SequentialCell(features)
        # torchvision's classifier initialisation (normal 0.01, zero bias).
        classifier = nn.Dense(last_channel, num_classes, weight_init=Normal(0.01), bias_init=Zero())
        self.classifier = nn.SequentialCell([nn.Dropout(p=dropout), classifier])

    def construct(self, x):
        x = self.features(x)
        return self.classifier(x.mean((2, 3)))


def mobilenet_v2(num_classes=1000, norm_layer=None, dropout=0.2):
    return MobileNetV2(num_classes, norm_layer, dropout)


mobilenet_v2.__doc__ = builder_doc("mobilenet_v2", "MobileNetV2 (Sandler et al. 2018), width 1.0.", extra_args="""
        dropout (float, optional): dropout before the classifier. Default: ``0.2`` .""")
