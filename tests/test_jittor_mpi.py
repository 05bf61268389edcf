"""``sync=True`` under MPI: two processes sharing a batch == one process with all of it (issue 15).

The test launches this file under ``mpirun -np 2`` (the ``__main__`` block is the worker), once,
bounded by a timeout; it needs OpenMPI (Debian: ``apt-get install -y openmpi-bin libopenmpi-dev``).
Scenarios: even shards (4 + 4), uneven ones (3 + 5), float32, on the channel path and the literal
one; and an empty rank (0 + 8), for which every process raises the same clear error.

Gradient convention: each rank differentiates its share of the single-process loss
(``sum(Y * dY)`` over its rows); the data-parallel average of the ranks' parameter gradients is
then the single-process gradient over the world size.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

jt = pytest.importorskip("jittor")

from rbn_jittor.parity import run_module  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
LAUNCH_TIMEOUT = 600  # seconds: Jittor compiles its kernels on a cold cache
SHAPE = (8, 4, 5, 4)  # the parity cases' 2d shape, batch 8
CASE_IDS = ("2d-mu_c-sigma_c", "2d-mu_s-mu_c")  # the channel path and the literal path
SPLITS = {"even": 4, "uneven": 3}  # rank 0's rows of the 8; rank 1 takes the rest
EMPTY_SPLIT = 0
STEPS = 2
DTYPE = "float32"


def inputs(case_id):
    case = next(case for case in parity.CASES if case.id == case_id)
    _, params, state, _ = case.arrays(DTYPE)
    rng = np.random.default_rng(len(case_id))
    x = rng.normal(2.0, 1.5, SHAPE).astype(DTYPE)
    dy = rng.standard_normal(SHAPE).astype(DTYPE)
    return x, params, state, dy, dict(training=True, steps=STEPS, **case.config)


def rows(first, rank):
    return slice(0, first) if rank == 0 else slice(first, None)


def run_rank(out_dir):
    """Worker: this process's rows of the batch, results saved as rank<r>_<case>_<split>.npz."""
    assert jt.in_mpi and jt.world_size == WORLD_SIZE
    for case_id in CASE_IDS:
        x, params, state, dy, config = inputs(case_id)
        for split, first in SPLITS.items():
            part = rows(first, jt.rank)
            result = run_module(x[part], params, state, dy[part], **config)
            arrays = {"y": result["y"], **{f"grad_{k}": v for k, v in result["grads"].items()},
                      **{f"state_{k}": v for k, v in result["state"].items()}}
            np.savez(os.path.join(out_dir, f"rank{jt.rank}_{case_id}_{split}.npz"), **arrays)
    x, params, state, dy, config = inputs(CASE_IDS[0])
    part = rows(EMPTY_SPLIT, jt.rank)
    try:
        run_module(x[part], params, state, dy[part], **config)
    except ValueError as error:
        with open(os.path.join(out_dir, f"rank{jt.rank}_empty.txt"), "w") as file:
            file.write(str(error))


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory):
    if shutil.which("mpirun") is None:
        pytest.skip("OpenMPI's mpirun is not installed")
    out_dir = tmp_path_factory.mktemp("mpi")
    # PYTHONPATH: the ranks import this checkout's rbn_jittor (the script's own directory is tests/)
    env = dict(os.environ, use_mkl=os.environ.get("use_mkl", "0"), nvcc_path=os.environ.get("nvcc_path", ""),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = ["mpirun", "-np", str(WORLD_SIZE), "--allow-run-as-root", "--oversubscribe",
               sys.executable, __file__, str(out_dir)]
    # its own process group, killed whole on timeout: a hung rank fails the test instead of stalling CI
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"mpirun did not finish in {LAUNCH_TIMEOUT} s:\n" + stdout[-3000:] + stderr[-3000:])
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return out_dir


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_two_processes_equal_one_process_with_the_whole_batch(ranks_dir, case_id, split):
    """Each rank's rows of the output and the input gradient, the data-parallel average of the
    parameter gradients, every rank's running statistics."""
    x, params, state, dy, config = inputs(case_id)
    whole = run_module(x, params, state, dy, **config)
    ranks = [np.load(ranks_dir / f"rank{rank}_{case_id}_{split}.npz") for rank in range(WORLD_SIZE)]
    tol = tolerance(DTYPE)
    checks = [parity.compare("mpi", f"{case_id} {split} y", np.concatenate([r["y"] for r in ranks]),
                             whole["y"], DTYPE, tol),
              parity.compare("mpi", f"{case_id} {split} grad x", np.concatenate([r["grad_x"] for r in ranks]),
                             whole["grads"]["x"], DTYPE, tol)]
    checks += [parity.compare("mpi", f"{case_id} {split} grad {name}",
                              sum(r[f"grad_{name}"] for r in ranks) / WORLD_SIZE,
                              whole["grads"][name] / WORLD_SIZE, DTYPE, tol)
               for name in params]
    checks += [parity.compare("mpi", f"{case_id} {split} rank {rank} {name}", ranks[rank][f"state_{name}"],
                              value, DTYPE, tol)
               for rank in range(WORLD_SIZE) for name, value in whole["state"].items()]
    assert {"running_mean", "running_var"} <= set(whole["state"])
    parity.assert_checks(checks)


def test_an_empty_rank_makes_every_rank_raise_instead_of_hanging(ranks_dir):
    for rank in range(WORLD_SIZE):
        message = (ranks_dir / f"rank{rank}_empty.txt").read_text()
        assert message == ("sync=True under MPI needs at least one sample on every process (got batches of "
                           "[0, 160] values per channel on ranks 0..1)")


if __name__ == "__main__":
    run_rank(sys.argv[1])
