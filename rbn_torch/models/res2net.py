"""Res2Net-50 (26w x 4s, Gao et al. 2019) with a pluggable norm layer (default: RBN).

The structure and parameter names of the authors' ``res2net.py`` (and timm's
``res2net50_26w_4s``): each bottleneck splits ``conv1``'s output into ``scale`` groups of
``width`` channels; ``convs.<i>``/``bns.<i>`` process them hierarchically.
"""
import math

import torch
from torch import nn

from .resnet import ResNet, documented

__all__ = ["Bottle2neck", "res2net50_26w_4s"]


class Bottle2neck(nn.Module):
    """Res2Net's bottleneck: ``conv1``'s output in ``scale`` groups, each after the first
    convolved (``convs.<i>``, ``bns.<i>``) with the previous group's result added.

    Example::

        >>> import torch
        >>> from rbn_torch import RepresentativeBatchNorm2d
        >>> from rbn_torch.models.res2net import Bottle2neck
        >>> block = Bottle2neck(64, 16, 1, None, 1, 26, RepresentativeBatchNorm2d)
        >>> block(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer, scale=4):
        super().__init__()
        # The first block of a stage ("stage" type) has a downsample: its last group is
        # average-pooled instead of being added into the hierarchy.
        self.first = downsample is not None
        self.width = int(math.floor(planes * (base_width / 64.0)))
        self.conv1 = nn.Conv2d(inplanes, self.width * scale, 1, bias=False)
        self.bn1 = norm_layer(self.width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(self.width, self.width, 3, stride, 1, bias=False)
                                   for _ in range(scale - 1))
        self.bns = nn.ModuleList(norm_layer(self.width) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, stride, 1) if self.first else None
        self.conv3 = nn.Conv2d(self.width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        splits = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = splits[i] if i == 0 or self.first else sp + splits[i]
            sp = self.relu(bn(conv(sp)))
            outputs.append(sp)
        outputs.append(self.pool(splits[-1]) if self.first else splits[-1])
        out = self.bn3(self.conv3(torch.cat(outputs, 1)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@documented("Res2Net-50 26w x 4s (Gao et al. 2019)",
            origin="the authors' ``res2net.py`` and timm's ``res2net50_26w_4s``")
def res2net50_26w_4s(num_classes=1000, norm_layer=None):
    return ResNet(Bottle2neck, [3, 4, 6, 3], num_classes, width_per_group=26, norm_layer=norm_layer)
