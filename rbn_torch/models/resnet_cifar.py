"""ResNet-20, the CIFAR-style ResNet of He et al. (2016, Sec. 4.2), for small images.

A 3x3 stem convolution with 16 channels (norm, ReLU, no max-pool), three stages of three
``BasicBlock``s with 16/32/64 channels and strides 1/2/2, global average pooling and a linear
classifier: about 0.27M parameters. The paper's CIFAR nets use parameter-free option-A
shortcuts (zero-padded identity); this one uses option-B 1x1 convolution projections where the
shape changes, the zoo's ``BasicBlock`` downsample, so it ports like every other zoo network.
Parameter names follow the zoo's ResNet (``conv1``, ``bn1``, ``layer1..3``, ``fc``).
"""
from torch import nn

from ..modules import RepresentativeBatchNorm2d
from .resnet import BasicBlock, conv1x1, conv3x3

__all__ = ["CifarResNet", "resnet20"]


class CifarResNet(nn.Module):
    r"""CIFAR-style ResNet (He et al. 2016, Sec. 4.2) with every norm layer a ``norm_layer``.

    Each RBN layer computes Eq. 12 of the paper per (n, c) instance:
    :math:`X_{cm} = X + w_m K_m`; :math:`X_m = X_{cm} - E[X_{cm}]`;
    :math:`X_s = X_m / \sqrt{Var[X_{cm}] + \epsilon}`;
    :math:`X_{cs} = X_s \, \sigma(w_v K_s + w_b)`; :math:`Y = X_{cs} \gamma + \beta`.

    Args:
        layers (list of int): ``BasicBlock``s in each of the three stages (3, 3, 3: ResNet-20).
        num_classes (int): outputs of the classifier. Default: 10.
        in_channels (int): channels of the input images. Default: 3.
        norm_layer (callable): builds a norm layer from a channel count; ``torch.nn.BatchNorm2d``
            gives the baseline. Default: None (RepresentativeBatchNorm2d).

    Shape:
        - Input: :math:`(N, \text{in\_channels}, H, W)`, H and W at least 4 (two stride-2 stages).
        - Output: :math:`(N, \text{num\_classes})`, the logits.

    Example::

        >>> import torch
        >>> from rbn_torch.models import resnet20
        >>> model = resnet20(num_classes=10, in_channels=1).eval()
        >>> model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, layers, num_classes=10, in_channels=3, norm_layer=None):
        super().__init__()
        self._norm_layer = norm_layer or RepresentativeBatchNorm2d
        self.inplanes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = self._norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # the zoo's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:  # option B: a 1x1 projection
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), self._norm_layer(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, 1, 64, self._norm_layer)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, None, 1, 64, self._norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes=10, norm_layer=None, in_channels=3):
    r"""ResNet-20 (He et al. 2016, Sec. 4.2; option-B projection shortcuts), about 0.27M parameters.

    Args:
        num_classes (int): outputs of the classifier. Default: 10.
        norm_layer (callable): builds a norm layer from a channel count; ``torch.nn.BatchNorm2d``
            gives the baseline. Default: None (RepresentativeBatchNorm2d).
        in_channels (int): channels of the input images (1 for grey digits). Default: 3.

    Shape:
        - Input: :math:`(N, \text{in\_channels}, H, W)`, H and W at least 4.
        - Output: :math:`(N, \text{num\_classes})`, the logits.

    Example::

        >>> from rbn_torch.models import resnet20
        >>> model = resnet20(num_classes=10)
        >>> round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        0.27
    """
    return CifarResNet([3, 3, 3], num_classes, in_channels, norm_layer)
