"""The tests' tolerance table: the one in rbn_reference.tolerances (see its reasoning).

It lives in the package because ``rbn parity`` judges PASS/FAIL with the same numbers.
"""

from rbn_reference.tolerances import (BFLOAT16_LOSS_RTOL, EXPORT_TOLERANCE, FLOAT16_LOSS_RTOL, FLOAT16_OUTPUT_RTOL,
                                      PEER_NOISE_PERTURBED, TOLERANCES, Tolerance, finite_difference_tolerance,
                                      peer_tolerance, tolerance, trajectory_bound, WHOLE_NETWORK_GRADIENT_RTOL)

__all__ = ["TOLERANCES", "Tolerance", "EXPORT_TOLERANCE", "BFLOAT16_LOSS_RTOL", "FLOAT16_LOSS_RTOL",
           "FLOAT16_OUTPUT_RTOL", "PEER_NOISE_PERTURBED", "finite_difference_tolerance", "peer_tolerance", "tolerance",
           "trajectory_bound", "WHOLE_NETWORK_GRADIENT_RTOL"]
