"""Representative BatchNorm (Gao et al., CVPR 2021) for Jittor."""

from rbn.frameworks import lazy_submodules, set_jittor_environment

set_jittor_environment()  # read by Jittor at import: offline, no GPU

from . import functional  # noqa: E402
from .convert import convert_bn_to_rbn  # noqa: E402
from .modules import (  # noqa: E402
    RepresentativeBatchNorm,
    RepresentativeBatchNorm1d,
    RepresentativeBatchNorm2d,
    RepresentativeBatchNorm3d,
)
from .state_dict import load_numpy_state_dict, state_dict_to_numpy  # noqa: E402

__all__ = [
    "RepresentativeBatchNorm",
    "RepresentativeBatchNorm1d",
    "RepresentativeBatchNorm2d",
    "RepresentativeBatchNorm3d",
    "convert_bn_to_rbn",
    "state_dict_to_numpy",
    "load_numpy_state_dict",
    "functional",
    "models",
]


# ``import rbn_jittor`` then ``rbn_jittor.models``, as with torchvision, without loading the zoo on import.
__getattr__ = lazy_submodules(__name__, "models")
