"""MobileNetV2 with a pluggable norm layer (default: RepresentativeBatchNorm2d).

Same module structure and parameter names as ``rbn_torch.models`` (torchvision's).
"""
import jittor as jt
from jittor import nn

from ..modules import RepresentativeBatchNorm2d
from .resnet import FORWARD_EXAMPLE, builder_doc, documented

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenet_v2"]

# t (expansion), c (channels), n (repeats), s (stride of the first repeat): the paper's Table 2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class ConvNormActivation(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: children 0 (conv), 1 (norm), 2 (act)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, groups, norm_layer):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            norm_layer(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 projection, a shortcut at stride 1."""

    def __init__(self, inp, oup, stride, expand_ratio, norm_layer):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden_dim, 1, 1, 1, norm_layer))
        layers += [
            ConvNormActivation(hidden_dim, hidden_dim, 3, stride, hidden_dim, norm_layer),
            nn.Conv2d(hidden_dim, oup, 1, bias=False),
            norm_layer(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def execute(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    __doc__ = builder_doc("mobilenet_v2", "MobileNetV2 (Sandler et al. 2018)", extra="""
        dropout (float): before the classifier. Default: 0.2.""", example=FORWARD_EXAMPLE)

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
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        # torchvision's initialisation; norm layers initialise themselves.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                jt.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                jt.init.gauss_(m.weight, 0, 0.01)
                jt.init.zero_(m.bias)

    def execute(self, x):
        x = self.features(x)
        return self.classifier(x.mean(dims=(2, 3)))


@documented("MobileNetV2")
def mobilenet_v2(num_classes=1000, norm_layer=None, dropout=0.2):
    return MobileNetV2(num_classes, norm_layer, dropout)
