"""Representative BatchNorm (Gao et al., CVPR 2021) for Jittor."""

import glob
import os

# Jittor reads these at import: without network it must not fetch oneDNN (use_mkl), and
# with an nvcc but no GPU it fails to load libcudart unless nvcc_path is empty.
os.environ.setdefault("use_mkl", "0")
if "nvcc_path" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["nvcc_path"] = ""

from . import functional  # noqa: E402
from .convert import convert_bn_to_rbn, load_numpy_state_dict, state_dict_to_numpy  # noqa: E402
from .modules import (  # noqa: E402
    RepresentativeBatchNorm,
    RepresentativeBatchNorm1d,
    RepresentativeBatchNorm2d,
    RepresentativeBatchNorm3d,
)

__all__ = [
    "RepresentativeBatchNorm",
    "RepresentativeBatchNorm1d",
    "RepresentativeBatchNorm2d",
    "RepresentativeBatchNorm3d",
    "convert_bn_to_rbn",
    "state_dict_to_numpy",
    "load_numpy_state_dict",
    "functional",
]
