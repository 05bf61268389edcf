"""Representative Batch Normalization (Gao et al., CVPR 2021) for PyTorch."""

from . import functional
from .convert import convert_bn_to_rbn, load_numpy_state_dict, state_dict_to_numpy
from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d

__all__ = ["RepresentativeBatchNorm1d", "RepresentativeBatchNorm2d", "RepresentativeBatchNorm3d",
           "convert_bn_to_rbn", "state_dict_to_numpy", "load_numpy_state_dict", "functional"]
