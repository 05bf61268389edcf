"""ResNet-20, the CIFAR-style ResNet of He et al. (2016, Sec. 4.2), for small images.

Same module structure as ``rbn_torch.models.resnet_cifar`` (names map mechanically, see
``resnet.py``): a 3x3 stem with 16 channels and no max-pool, three stages of three
``BasicBlock``s (16/32/64 channels, strides 1/2/2), global average pooling, a linear
classifier; option-B 1x1 projection shortcuts (the zoo's ``BasicBlock`` downsample) instead
of the paper's zero-padded option A.
"""
from mindspore import nn

from ..modules import RepresentativeBatchNorm2d
from ._docs import EQUATION
from .resnet import BasicBlock, conv2d

__all__ = ["CifarResNet", "resnet20"]


class CifarResNet(nn.Cell):
    r"""CIFAR-style ResNet (He et al. 2016, Sec. 4.2) with option-B projection shortcuts.
    {equation}

    Args:
        layers (list[int]): ``BasicBlock`` s per stage, three stages (3, 3, 3: ResNet-20).
        num_classes (int, optional): outputs of the classifier. Default: ``10`` .
        in_channels (int, optional): channels of the input images. Default: ``3`` .
        norm_layer (type, optional): the norm layer class. Default: ``None`` (RBN).

    Inputs:
        - **x** (Tensor) - :math:`(N, in\_channels, H, W)`, float32, H and W at least 4.

    Outputs:
        Tensor of shape :math:`(N, num\_classes)`.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore.models import resnet20
        >>> net = resnet20(num_classes=10, in_channels=1).set_train(False)
        >>> net(ms.Tensor(np.ones((2, 1, 8, 8), np.float32))).shape
        (2, 10)
    """

    def __init__(self, layers, num_classes=10, in_channels=3, norm_layer=None):
        super().__init__()
        self._norm_layer = norm_layer or RepresentativeBatchNorm2d
        self.inplanes = 16
        self.conv1 = conv2d(in_channels, 16, 3)
        self.bn1 = self._norm_layer(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        self.fc = nn.Dense(64, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:  # option B: a 1x1 projection
            downsample = nn.SequentialCell(conv2d(self.inplanes, planes, 1, stride), self._norm_layer(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, 1, 64, self._norm_layer)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, None, 1, 64, self._norm_layer) for _ in range(1, blocks)]
        return nn.SequentialCell(layers)

    def construct(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def resnet20(num_classes=10, norm_layer=None, in_channels=3):
    """ResNet-20 (He et al. 2016, Sec. 4.2; option-B projection shortcuts), about 0.27M parameters.

    Args:
        num_classes (int, optional): outputs of the classifier. Default: ``10`` .
        norm_layer (type, optional): the norm layer class; ``mindspore.nn.BatchNorm2d`` gives the
            baseline. Default: ``None`` (:class:`rbn_mindspore.RepresentativeBatchNorm2d`).
        in_channels (int, optional): channels of the input images (1 for grey digits). Default: ``3`` .
    """
    return CifarResNet([3, 3, 3], num_classes, in_channels, norm_layer)


CifarResNet.__doc__ = CifarResNet.__doc__.replace("{equation}", EQUATION)
