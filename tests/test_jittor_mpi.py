"""``sync=True`` under MPI: two processes with half the batch each == one process with all of it.

The test launches this file under ``mpirun -np 2`` (the ``__main__`` block is the worker);
it needs OpenMPI (Debian: ``apt-get install -y openmpi-bin libopenmpi-dev``).
"""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

jt = pytest.importorskip("jittor")

from rbn_jittor.parity import run_module  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import TOLERANCES  # noqa: E402

SHAPE = (6, 4, 5, 4)  # split into two (3, 4, 5, 4): the parity cases' 2d shape
CASE_IDS = ("2d-mu_c-sigma_c", "2d-mu_s-mu_c")  # the channel path and the literal path
STEPS = 2


def inputs(case_id):
    case = next(case for case in parity.CASES if case.id == case_id)
    _, params, state, _ = case.arrays("float64")
    rng = np.random.default_rng(len(case_id))
    x = rng.normal(2.0, 1.5, SHAPE)
    dy = rng.standard_normal(SHAPE)
    return x, params, state, dy, dict(training=True, steps=STEPS, **case.config)


def run_rank(out_dir):
    """Worker: this process's half of the batch, results saved as rank<r>_<case>.npz."""
    assert jt.in_mpi and jt.world_size == 2
    for case_id in CASE_IDS:
        x, params, state, dy, config = inputs(case_id)
        part = slice(jt.rank * SHAPE[0] // 2, (jt.rank + 1) * SHAPE[0] // 2)
        result = run_module(x[part], params, state, dy[part], **config)
        arrays = {"y": result["y"], **{f"grad_{k}": v for k, v in result["grads"].items()},
                  **{f"state_{k}": v for k, v in result["state"].items()}}
        np.savez(os.path.join(out_dir, f"rank{jt.rank}_{case_id}.npz"), **arrays)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI's mpirun is not installed")
def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    env = dict(os.environ, use_mkl=os.environ.get("use_mkl", "0"),
               nvcc_path=os.environ.get("nvcc_path", ""))
    command = ["mpirun", "-np", "2", "--allow-run-as-root", "--oversubscribe",
               sys.executable, __file__, str(tmp_path)]
    # its own process group, killed whole on timeout: a hung rank fails the test instead of stalling CI
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail("mpirun did not finish in 900 s:\n" + stdout[-3000:] + stderr[-3000:])
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    tol = TOLERANCES["float64"]
    for case_id in CASE_IDS:
        x, params, state, dy, config = inputs(case_id)
        whole = run_module(x, params, state, dy, **config)
        ranks = [np.load(tmp_path / f"rank{rank}_{case_id}.npz") for rank in (0, 1)]
        checks = [parity.compare("mpi", f"{case_id} y", np.concatenate([r["y"] for r in ranks]),
                                 whole["y"], "float64", tol),
                  parity.compare("mpi", f"{case_id} grad x",
                                 np.concatenate([r["grad_x"] for r in ranks]), whole["grads"]["x"],
                                 "float64", tol)]
        # each process differentiates its own share of the loss: the shares add up
        checks += [parity.compare("mpi", f"{case_id} grad {name}", ranks[0][f"grad_{name}"]
                                  + ranks[1][f"grad_{name}"], whole["grads"][name], "float64", tol)
                   for name in params]
        checks += [parity.compare("mpi", f"{case_id} rank {rank} {name}", ranks[rank][f"state_{name}"],
                                  value, "float64", tol)
                   for rank in (0, 1) for name, value in whole["state"].items()]
        parity.assert_checks(checks)


if __name__ == "__main__":
    run_rank(sys.argv[1])
