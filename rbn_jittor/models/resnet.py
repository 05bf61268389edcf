"""ResNet and ResNeXt with a pluggable norm layer (default: RepresentativeBatchNorm2d).

Same module structure and parameter names as ``rbn_torch.models`` (torchvision's), so a
checkpoint maps by name; Jittor's own BatchNorm has no ``num_batches_tracked``.
"""
import jittor as jt
from jittor import nn

from ..modules import RepresentativeBatchNorm2d

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "resnext50_32x4d"]

# One docstring for every builder of the zoo (ResNet here, MobileNetV2 and Res2Net beside).
BUILDER_DOC = """{title} with every norm layer a ``norm_layer`` (default: RepresentativeBatchNorm2d).

    The structure and parameter names of ``rbn_torch.models.{name}`` ({origin}), so a checkpoint
    maps by name; no weights are downloaded. Each RBN layer computes Eq. 12 of the paper per
    (n, c) instance: ``X_cm = X + w_m K_m``; ``X_m = X_cm - E[X_cm]``;
    ``X_s = X_m / sqrt(Var[X_cm] + eps)``; ``X_cs = X_s * sigmoid(w_v K_s + w_b)``;
    ``Y = X_cs * gamma + beta``.

    Args:
        num_classes (int): outputs of the classifier. Default: 1000.
        norm_layer (callable): builds a norm layer from a channel count; ``jittor.nn.BatchNorm2d``
            gives the baseline. Default: None (RepresentativeBatchNorm2d).{extra}

    Shape:
        - Input: (N, 3, H, W), H and W at least 32.
        - Output: (N, num_classes), the logits.

    Example::

        >>> from rbn_jittor.models import {name}
        >>> model = {name}(num_classes=10){example}
    """

# The classes' Examples also run the network (the builders' only build it, which is what costs).
FORWARD_EXAMPLE = """
        >>> import jittor as jt
        >>> model.is_train = False
        >>> model(jt.randn(2, 3, 32, 32)).shape
        [2,10,]"""


def builder_doc(name, title, origin="torchvision's", extra="", example=""):
    """``BUILDER_DOC`` for the builder ``name`` (``origin``: whose structure)."""
    return BUILDER_DOC.format(name=name, title=title, origin=origin, extra=extra, example=example)


def documented(title, origin="torchvision's"):
    """Decorator: give a zoo builder ``BUILDER_DOC`` under its own name."""
    def decorate(builder):
        builder.__doc__ = builder_doc(builder.__name__, title, origin)
        return builder
    return decorate


def conv3x3(in_planes, out_planes, stride=1, groups=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with norm layers and a shortcut (ResNet-18/34), torchvision's names."""

    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def execute(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1, 3x3 (grouped for ResNeXt), 1x1 convolutions with norm layers and a shortcut, torchvision's names."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample, groups, base_width, norm_layer):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def execute(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    __doc__ = builder_doc("resnet18", "ResNet (He et al. 2016) and ResNeXt", extra="""
        block (type): ``BasicBlock`` or ``Bottleneck`` (or Res2Net's ``Bottle2neck``).
        layers (list of int): blocks per stage.
        groups (int), width_per_group (int): ResNeXt's cardinality and width. Default: 1, 64.""",
                          example=FORWARD_EXAMPLE)

    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64, norm_layer=None):
        super().__init__()
        self._norm_layer = norm_layer or RepresentativeBatchNorm2d
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        # torchvision's initialisation; norm layers initialise themselves.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                jt.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       self._norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        self._norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, self.groups, self.base_width, self._norm_layer)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def execute(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dims=(2, 3)))


@documented("ResNet-18")
def resnet18(num_classes=1000, norm_layer=None):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, norm_layer=norm_layer)


@documented("ResNet-34")
def resnet34(num_classes=1000, norm_layer=None):
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, norm_layer=norm_layer)


@documented("ResNet-50")
def resnet50(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, norm_layer=norm_layer)


@documented("ResNet-101")
def resnet101(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, norm_layer=norm_layer)


@documented("ResNet-152")
def resnet152(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, norm_layer=norm_layer)


@documented("ResNeXt-50 32x4d")
def resnext50_32x4d(num_classes=1000, norm_layer=None):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, groups=32, width_per_group=4,
                  norm_layer=norm_layer)
