"""A second process running the same RBN training step compiles no Jittor kernel (issue 12).

Jittor caches each compiled kernel on disk; a kernel whose fused op graph depends on what happens
to be alive at sync time is met anew by a later process. The channel path's passes are
``jt.code`` kernels (rbn_jittor/kernels.py) so that the cache, once warm, serves every run.
"""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("jittor")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # a cold cache compiles the step's kernels first (about a minute here)
# Jittor prints "Compiling Operators" only for a batch that takes over 2 s; its cache logs every
# kernel it builds ("Cache key of <kernel> not found." / "... changed.") at verbosity 10.
COMPILE_LOG_ENV = {"log_vprefix": "cache_compile=10"}

# conv -> RBN (channel and spatial statistics) -> pooled linear, one SGD step with momentum
STEP = """
from rbn import frameworks
frameworks.prepare_import("jittor")
import jittor as jt
import numpy as np
import rbn_jittor

jt.set_seed(0)
model = jt.nn.Sequential(
    jt.nn.Conv2d(3, 4, 3, padding=1, bias=False), rbn_jittor.RepresentativeBatchNorm2d(4), jt.nn.ReLU(),
    jt.nn.Conv2d(4, 4, 3, padding=1, bias=False),
    rbn_jittor.RepresentativeBatchNorm2d(4, centering_stat="mu_s", scaling_stat="sigma_s"),
    jt.nn.AdaptiveAvgPool2d(1), jt.nn.Flatten(), jt.nn.Linear(4, 2))
optimizer = jt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x = jt.array(np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype("float32"))
loss = (model(x) ** 2).mean()
optimizer.step(loss)
jt.sync_all(True)
print("loss", loss.item())
"""


def compiled_kernels(log):
    return [line for line in log.splitlines() if "Cache key of" in line or "Compiling Operators" in line]


def run_step():
    env = dict(os.environ, log_silent="0", **COMPILE_LOG_ENV)
    result = subprocess.run([sys.executable, "-c", STEP], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def test_second_process_compiles_nothing():
    first = run_step()
    second = run_step()
    assert compiled_kernels(second) == []
    # the same computation both times, so the cache (not a different path) served the second
    assert [line for line in first.splitlines() if line.startswith("loss")] == \
        [line for line in second.splitlines() if line.startswith("loss")]
