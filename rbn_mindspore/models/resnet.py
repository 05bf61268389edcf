"""ResNet and ResNeXt with a pluggable norm layer (default: RepresentativeBatchNorm2d).

Same module structure as ``rbn_torch.models`` (torchvision's); parameter names differ only
mechanically (``rbn_mindspore.state_dict`` maps them): ``nn.Dense`` keeps ``weight``/``bias``
with torch's (out, in) layout, a BatchNorm's are ``gamma``/``beta``/``moving_mean``/
``moving_variance``.
"""
from mindspore import nn
from mindspore.common.initializer import HeNormal

from ..modules import RepresentativeBatchNorm2d
from ._docs import EQUATION, builder_doc

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "resnext50_32x4d"]


def conv2d(in_planes, out_planes, kernel_size, stride=1, groups=1):
    # torchvision's initialisation (kaiming normal, fan_out); explicit "pad" mode because
    # MindSpore's default "same" pads asymmetrically at stride 2.
    return nn.Conv2d(in_planes, out_planes, kernel_size, stride, pad_mode="pad",
                     padding=(kernel_size - 1) // 2, group=groups, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


class BasicBlock(nn.Cell):
    """ResNet's two-conv residual block (torchvision's ``BasicBlock``): conv-norm-ReLU, conv-norm,
    plus the (optionally downsampled) input, ReLU. Inputs/Outputs: :math:`(N, C, H, W)`."""
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv2d(inplanes, planes, 3, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv2d(planes, planes, 3)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Cell):
    """ResNet's 1x1-3x3-1x1 residual block with expansion 4 (torchvision's ``Bottleneck``; grouped
    3x3 for ResNeXt). Inputs/Outputs: :math:`(N, C, H, W)`."""
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv2d(inplanes, width, 1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv2d(width, width, 3, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv2d(width, planes * self.expansion, 1)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Cell):
    r"""ResNet / ResNeXt (He et al. 2016; Xie et al. 2017) with torchvision's structure and names.
    {equation}

    Args:
        block (type): :class:`BasicBlock` or :class:`Bottleneck` (or Res2Net's ``Bottle2neck``).
        layers (list[int]): blocks per stage, four stages.
        num_classes (int, optional): outputs of the classifier. Default: ``1000`` .
        groups (int, optional): groups of the 3x3 convolutions (ResNeXt). Default: ``1`` .
        width_per_group (int, optional): channels per group. Default: ``64`` .
        norm_layer (type, optional): the norm layer class. Default: ``None`` (RBN).

    Inputs:
        - **x** (Tensor) - :math:`(N, 3, H, W)`, float32.

    Outputs:
        Tensor of shape :math:`(N, num\_classes)`.

    Raises:
        ValueError: If :class:`BasicBlock` is given groups or width_per_group other than 1 and 64.

    Supported Platforms:
        ``CPU`` (tested) ``GPU`` ``Ascend``

    Examples:
        >>> import numpy as np
        >>> import mindspore as ms
        >>> from rbn_mindspore.models import ResNet
        >>> from rbn_mindspore.models.resnet import BasicBlock
        >>> net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).set_train(False)
        >>> net(ms.Tensor(np.ones((1, 3, 32, 32), np.float32))).shape
        (1, 10)
    """
    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64, norm_layer=None):
        super().__init__()
        self._norm_layer = norm_layer or RepresentativeBatchNorm2d
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = conv2d(3, self.inplanes, 7, stride=2)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, pad_mode="pad", padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.fc = nn.Dense(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.SequentialCell(conv2d(self.inplanes, planes * block.expansion, 1, stride),
                                           self._norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        self._norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, self.groups, self.base_width, self._norm_layer)
                   for _ in range(1, blocks)]
        return nn.SequentialCell(layers)

    def construct(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def resnet18(num_classes=1000, norm_layer=None):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, norm_layer=norm_layer)


def resnet34(num_classes=1000, norm_layer=None):
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, norm_layer=norm_layer)


def resnet50(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, norm_layer=norm_layer)


def resnet101(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, norm_layer=norm_layer)


def resnet152(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, norm_layer=norm_layer)


def resnext50_32x4d(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, groups=32, width_per_group=4,
                  norm_layer=norm_layer)


for _builder, _summary in ((resnet18, "ResNet-18 (He et al. 2016)."), (resnet34, "ResNet-34 (He et al. 2016)."),
                           (resnet50, "ResNet-50 (He et al. 2016)."), (resnet101, "ResNet-101 (He et al. 2016)."),
                           (resnet152, "ResNet-152 (He et al. 2016)."),
                           (resnext50_32x4d, "ResNeXt-50 32x4d (Xie et al. 2017).")):
    _builder.__doc__ = builder_doc(_builder.__name__, _summary)
ResNet.__doc__ = ResNet.__doc__.replace("{equation}", EQUATION)
