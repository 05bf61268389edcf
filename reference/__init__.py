"""NumPy oracle of Representative Batch Normalization (Gao et al., CVPR 2021).

Plain NumPy in float64, forward and hand-derived backward of Eq. 12 (docs/math.md).
Importing this package never imports a deep-learning framework.
"""

from .rbn import CALIBRATION_NAMES, PARAM_NAMES, STATE_NAMES, Cache, Options, Parameters, backward, forward
from .statistics import STATISTICS
from .validation import (StateDictError, check_arrays, check_channel_vectors, check_dtypes, check_input,
                         check_pairs, check_state_dict, check_statistic, fit_shape)

__all__ = ["forward", "backward", "Cache", "Parameters", "Options", "STATISTICS", "PARAM_NAMES", "CALIBRATION_NAMES", "STATE_NAMES",
           "check_input", "check_channel_vectors", "check_pairs", "check_dtypes", "check_statistic",
           "check_state_dict", "check_arrays", "fit_shape", "StateDictError"]
