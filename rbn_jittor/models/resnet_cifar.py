"""ResNet-20, the CIFAR-style ResNet of He et al. (2016, Sec. 4.2), for small images.

Same module structure and parameter names as ``rbn_torch.models.resnet_cifar``: a 3x3 stem
with 16 channels and no max-pool, three stages of three ``BasicBlock``s (16/32/64 channels,
strides 1/2/2), global average pooling, a linear classifier; option-B 1x1 projection
shortcuts (the zoo's ``BasicBlock`` downsample) instead of the paper's zero-padded option A.
"""
import jittor as jt
from jittor import nn

from ..modules import RepresentativeBatchNorm2d
from .resnet import BasicBlock, conv1x1, conv3x3

__all__ = ["CifarResNet", "resnet20"]


class CifarResNet(nn.Module):
    """CIFAR-style ResNet with every norm layer a ``norm_layer`` (see ``rbn_torch.models.resnet_cifar``).

    Example::

        >>> import jittor as jt
        >>> from rbn_jittor.models import resnet20
        >>> model = resnet20(num_classes=10, in_channels=1).eval()
        >>> model(jt.randn(2, 1, 8, 8)).shape
        [2,10,]
    """

    def __init__(self, layers, num_classes=10, in_channels=3, norm_layer=None):
        super().__init__()
        self._norm_layer = norm_layer or RepresentativeBatchNorm2d
        self.inplanes = 16
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = self._norm_layer(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # the zoo's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                jt.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:  # option B: a 1x1 projection
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), self._norm_layer(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, 1, 64, self._norm_layer)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, None, 1, 64, self._norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def execute(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dims=(2, 3)))


def resnet20(num_classes=10, norm_layer=None, in_channels=3):
    """ResNet-20 (He et al. 2016, Sec. 4.2; option-B projection shortcuts), about 0.27M parameters.

    Args:
        num_classes (int): outputs of the classifier. Default: 10.
        norm_layer (callable): the norm layer class; ``jittor.nn.BatchNorm2d`` gives the baseline.
            Default: None (RepresentativeBatchNorm2d).
        in_channels (int): channels of the input images (1 for grey digits). Default: 3.
    """
    return CifarResNet([3, 3, 3], num_classes, in_channels, norm_layer)
