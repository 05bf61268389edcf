"""Res2Net-50 (26w x 4s, Gao et al. 2019) with a pluggable norm layer (default: RBN).

Same module structure and parameter names as ``rbn_torch.models.res2net`` (the authors' and
timm's ``res2net50_26w_4s``).
"""
import math

import jittor as jt
from jittor import nn

from .resnet import ResNet, documented

__all__ = ["Bottle2neck", "res2net50_26w_4s"]


class Bottle2neck(nn.Module):
    """Res2Net's bottleneck: the 3x3 stage split into ``scale`` groups of hierarchical residuals."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer, scale=4):
        super().__init__()
        # The first block of a stage ("stage" type) has a downsample: its last group is
        # average-pooled instead of being added into the hierarchy.
        self.first = downsample is not None
        self.width = int(math.floor(planes * (base_width / 64.0)))
        self.conv1 = nn.Conv2d(inplanes, self.width * scale, 1, bias=False)
        self.bn1 = norm_layer(self.width * scale)
        self.convs = nn.ModuleList([nn.Conv2d(self.width, self.width, 3, stride, 1, bias=False)
                                    for _ in range(scale - 1)])
        self.bns = nn.ModuleList([norm_layer(self.width) for _ in range(scale - 1)])
        self.pool = nn.AvgPool2d(3, stride, 1) if self.first else None
        self.conv3 = nn.Conv2d(self.width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def execute(self, x):
        splits = jt.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = splits[i] if i == 0 or self.first else sp + splits[i]
            sp = self.relu(bn(conv(sp)))
            outputs.append(sp)
        outputs.append(self.pool(splits[-1]) if self.first else splits[-1])
        out = self.bn3(self.conv3(jt.concat(outputs, 1)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@documented("Res2Net-50 26w x 4s (Gao et al. 2019)", "the authors' and timm's")
def res2net50_26w_4s(num_classes=1000, norm_layer=None):
    return ResNet(Bottle2neck, [3, 4, 6, 3], num_classes, width_per_group=26, norm_layer=norm_layer)
