"""Res2Net-50 (26w x 4s, Gao et al. 2019) with a pluggable norm layer (default: RBN).

Same module structure as ``rbn_torch.models.res2net`` (the authors' and timm's
``res2net50_26w_4s``); names map mechanically, see ``resnet.py``.
"""
import math

from mindspore import nn, ops

from ._docs import builder_doc
from .resnet import ResNet, conv2d

__all__ = ["Bottle2neck", "res2net50_26w_4s"]


class Bottle2neck(nn.Cell):
    """Res2Net's bottleneck: the 3x3 stage split into ``scale`` groups of hierarchical residual
    convolutions. Inputs/Outputs: :math:`(N, C, H, W)`."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer, scale=4):
        super().__init__()
        # The first block of a stage ("stage" type) has a downsample: its last group is
        # average-pooled instead of being added into the hierarchy.
        self.first = downsample is not None
        self.width = int(math.floor(planes * (base_width / 64.0)))
        self.conv1 = conv2d(inplanes, self.width * scale, 1)
        self.bn1 = norm_layer(self.width * scale)
        self.convs = nn.CellList([conv2d(self.width, self.width, 3, stride) for _ in range(scale - 1)])
        self.bns = nn.CellList([norm_layer(self.width) for _ in range(scale - 1)])
        self.pool = nn.AvgPool2d(3, stride, pad_mode="pad", padding=1) if self.first else None
        self.conv3 = conv2d(self.width * scale, planes * self.expansion, 1)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def construct(self, x):
        splits = ops.split(self.relu(self.bn1(self.conv1(x))), self.width, axis=1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = splits[i] if i == 0 or self.first else sp + splits[i]
            sp = self.relu(bn(conv(sp)))
            outputs.append(sp)
        outputs.append(self.pool(splits[-1]) if self.first else splits[-1])
        out = self.bn3(self.conv3(ops.cat(outputs, 1)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def res2net50_26w_4s(num_classes=1000, norm_layer=None):
    return ResNet(Bottle2neck, [3, 4, 6, 3], num_classes, width_per_group=26, norm_layer=norm_layer)


res2net50_26w_4s.__doc__ = builder_doc("res2net50_26w_4s", "Res2Net-50 26w x 4s (Gao et al. 2019).")
