"""MobileNetV2 with a pluggable norm layer (default: RepresentativeBatchNorm2d).

Module structure and parameter names are torchvision's (``features.<i>...``,
``classifier.1``), so a torchvision state dict loads by name.
"""
from torch import nn

from ..modules import RepresentativeBatchNorm2d

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
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
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

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
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
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean((2, 3)))


def mobilenet_v2(num_classes=1000, norm_layer=None, dropout=0.2):
    return MobileNetV2(num_classes, norm_layer, dropout)
