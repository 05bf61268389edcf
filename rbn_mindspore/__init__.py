"""Representative BatchNorm (Gao et al., CVPR 2021) for MindSpore, PyNative and Graph mode."""

from rbn.frameworks import lazy_submodules

from . import functional
from .convert import convert_bn_to_rbn
from .distributed import SyncRepresentativeBatchNorm
from .modules import RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d
from .state_dict import canonical_parameters, load_checkpoint, load_numpy_state_dict, state_dict_to_numpy

__all__ = ["RepresentativeBatchNorm1d", "RepresentativeBatchNorm2d", "RepresentativeBatchNorm3d",
           "SyncRepresentativeBatchNorm",
           "convert_bn_to_rbn", "functional", "state_dict_to_numpy", "load_numpy_state_dict",
           "canonical_parameters", "load_checkpoint"]


# ``import rbn_mindspore`` then ``rbn_mindspore.models``, as with torchvision, without loading the zoo on import.
__getattr__ = lazy_submodules(__name__, "models")
