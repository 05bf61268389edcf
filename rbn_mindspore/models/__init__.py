"""The paper's classification networks (Table 1: ResNet, ResNeXt, MobileNetV2, Res2Net)
and ResNet-20 for small images (He et al. 2016, Sec. 4.2), with
the structure of ``rbn_torch.models`` and mechanically mapped names (see resnet.py).

Every builder takes ``num_classes`` and ``norm_layer`` (default: RepresentativeBatchNorm2d;
``mindspore.nn.BatchNorm2d`` gives the baseline). No weights are downloaded.
"""
from .mobilenetv2 import MobileNetV2, mobilenet_v2
from .res2net import res2net50_26w_4s
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d
from .resnet_cifar import CifarResNet, resnet20

__all__ = ["ResNet", "CifarResNet", "MobileNetV2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "mobilenet_v2", "res2net50_26w_4s", "resnet20"]
