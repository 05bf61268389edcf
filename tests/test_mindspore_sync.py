"""SyncRepresentativeBatchNorm with 2 processes on MindSpore's CPU collectives (dynamic cluster:
MS_ROLE / MS_SCHED_HOST / MS_SCHED_PORT / MS_WORKER_NUM, mccl) against 1 process with the
whole batch (issue 15), in PyNative and GRAPH_MODE. Every launch is bounded by a timeout."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

from rbn_mindspore import RepresentativeBatchNorm2d, SyncRepresentativeBatchNorm, canonical_parameters  # noqa: E402
from rbn_mindspore import load_numpy_state_dict, state_dict_to_numpy  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {"mu_c-sigma_c-even": ("mu_c", "sigma_c", 4), "sigma_s-mu_s-even": ("sigma_s", "mu_s", 4),
         "mu_c-mu_c-uneven": ("mu_c", "mu_c", 3)}  # rank 0 takes the first n of 8 samples
SHAPE = (8, 3, 4, 5)

WORKER = textwrap.dedent("""
    import os, sys, numpy as np, mindspore as ms
    from mindspore.communication import init, get_rank
    ms.set_context(mode=ms.PYNATIVE_MODE)
    init()
    from rbn_mindspore import SyncRepresentativeBatchNorm, canonical_parameters, load_numpy_state_dict
    rank, data = get_rank(), np.load(sys.argv[1])
    for mode, case in [(mode, case) for mode in ("pynative", "graph") for case in sys.argv[2:]]:
        ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
        centering_stat, scaling_stat, first = case.split(":")
        first = int(first)
        rows = slice(0, first) if rank == 0 else slice(first, None)
        layer = SyncRepresentativeBatchNorm(3, centering_stat=centering_stat, scaling_stat=scaling_stat)
        load_numpy_state_dict(layer, {k[6:]: data[k] for k in data.files if k.startswith("param.")}, strict=False)
        layer.set_train()
        x, dy = ms.Tensor(data["x"][rows]), ms.Tensor(data["dy"][rows])
        weights = layer.trainable_params()
        def objective(inputs):
            y = layer(inputs)
            return (y * dy).sum(), y
        (_, y), (dx, grads) = ms.value_and_grad(objective, 0, weights, has_aux=True)(x)
        names = {id(p): n for n, p in canonical_parameters(layer).items()}
        out = {"y": y.asnumpy(), "dx": dx.asnumpy(), "running_mean": layer.moving_mean.asnumpy(),
               "running_var": layer.moving_variance.asnumpy()}
        out.update({"grad." + names[id(w)]: g.asnumpy() for w, g in zip(weights, grads)})
        np.savez(f"{os.path.dirname(sys.argv[1])}/{mode}_{case.replace(':', '_')}_{rank}.npz", **out)
    print("done", rank, flush=True)
""")


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_close(name, got, want):
    check = parity.compare("sync", name, got, want, "float32", tolerance("float32"))
    assert check.passed, str(check)


def reference(params, x, dy, centering_stat, scaling_stat):
    """One process, the whole batch."""
    layer = RepresentativeBatchNorm2d(3, centering_stat=centering_stat, scaling_stat=scaling_stat)
    load_numpy_state_dict(layer, params, strict=False)
    layer.set_train()
    weights = layer.trainable_params()

    def objective(inputs):
        y = layer(inputs)
        return (y * Tensor(dy)).sum(), y

    (_, y), (dx, grads) = ms.value_and_grad(objective, 0, weights, has_aux=True)(Tensor(x))
    names = {id(p): n for n, p in canonical_parameters(layer).items()}
    out = {"y": y.asnumpy(), "dx": dx.asnumpy(), "running_mean": layer.moving_mean.asnumpy(),
           "running_var": layer.moving_variance.asnumpy()}
    out.update({"grad." + names[id(w)]: g.asnumpy() for w, g in zip(weights, grads)})
    return out


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sync")
    rng = np.random.default_rng(0)
    params = {name: (value + rng.uniform(-0.5, 0.5, value.shape)).astype(np.float32)
              for name, value in state_dict_to_numpy(RepresentativeBatchNorm2d(3)).items()
              if name in ("weight", "bias", "center_weight", "scale_weight", "scale_bias")}
    data = {"x": (3 + rng.standard_normal(SHAPE)).astype(np.float32),
            "dy": rng.standard_normal(SHAPE).astype(np.float32)}
    np.savez(directory / "data.npz", **data, **{"param." + k: v for k, v in params.items()})
    script = directory / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(free_port()), MS_WORKER_NUM="2",
               PYTHONPATH=str(ROOT))
    cases = [f"{c}:{s}:{n}" for c, s, n in CASES.values()]
    roles = [("MS_SCHED", None), ("MS_WORKER", "0"), ("MS_WORKER", "1")]
    processes = []
    for role, node in roles:
        role_env = dict(env, MS_ROLE=role, **({"MS_NODE_ID": node} if node else {}))
        processes.append(subprocess.Popen([sys.executable, str(script), str(directory / "data.npz"), *cases],
                                          env=role_env, cwd=directory, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return directory, params, data


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one_process(two_process_results, case, mode):
    """Outputs, input gradients (each rank's rows), parameter gradients summed over the ranks (the
    data-parallel sum of the per-rank losses) and moving statistics: as one process, whole batch."""
    directory, params, data = two_process_results
    centering_stat, scaling_stat, first = CASES[case]
    want = reference(params, data["x"], data["dy"], centering_stat, scaling_stat)
    ranks = [dict(np.load(directory / f"{mode}_{centering_stat}_{scaling_stat}_{first}_{rank}.npz"))
             for rank in (0, 1)]
    for name in ("y", "dx"):
        assert_close(name, np.concatenate([ranks[0][name], ranks[1][name]]), want[name])
    for name in want:
        if name.startswith("grad."):
            assert_close(name, ranks[0][name] + ranks[1][name], want[name])
    for name in ("running_mean", "running_var"):
        for rank in ranks:
            assert_close(name, rank[name], want[name])


def test_one_process_is_the_local_layer():
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32))
    sync, local = SyncRepresentativeBatchNorm(3).set_train(), RepresentativeBatchNorm2d(3).set_train()
    assert np.array_equal(sync(x).asnumpy(), local(x).asnumpy())
    with pytest.raises(ValueError, match="process_groups is not supported"):
        SyncRepresentativeBatchNorm(3, process_groups=[[0, 1]])
