"""rbn_mindspore.SyncRepresentativeBatchNorm with 2 processes on MindSpore's CPU collectives (dynamic
cluster: MS_ROLE / MS_SCHED_HOST / MS_SCHED_PORT / MS_WORKER_NUM, mccl) against 1 process with the
whole batch (issue 15), in PyNative and GRAPH_MODE.

One launch (a scheduler and two workers, bounded by a timeout) runs every scenario: even shards
(4 + 4), uneven ones (3 + 5), an empty rank (0 + 8), process groups, and an RBN resnet18 converted
with ``convert_sync_batchnorm`` under MindSpore's data parallel (``TrainOneStepCell`` with its
gradient mean) for 3 SGD steps. The tests compare what each rank saved with one process here.
GRAPH_MODE runs the scenarios whose processes' graphs differ (uneven shards, an empty rank): there
the collectives must still run in one order on every process.

Gradient convention of the layer scenarios: each rank differentiates its share of the
single-process loss (``sum(Y * dY)`` over its rows); the data-parallel average of the ranks'
parameter gradients is then the single-process gradient over the world size.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor, nn  # noqa: E402
from rbn import checkpoint  # noqa: E402
from rbn_reference import parity  # noqa: E402
from rbn_reference.parity import assert_checks  # noqa: E402
from test_mindspore_cpu_kernels import kernel_choice  # noqa: E402
from test_models_parity import checks_against_float64  # noqa: E402
from tolerances import tolerance  # noqa: E402

from rbn_mindspore import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d,  # noqa: E402
                           SyncRepresentativeBatchNorm, canonical_parameters, load_numpy_state_dict, models,
                           state_dict_to_numpy)
from rbn_mindspore.functional import representative_batch_norm  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
LAUNCH_TIMEOUT = 420  # seconds: three processes, two compilation modes, on 2 busy cores
CASES = {"mu_c-sigma_c-even": ("mu_c", "sigma_c", 4), "sigma_s-mu_s-even": ("sigma_s", "mu_s", 4),
         "mu_c-mu_c-uneven": ("mu_c", "mu_c", 3), "mu_c-sigma_c-empty": ("mu_c", "sigma_c", 0),
         "mu_s-mu_c-empty": ("mu_s", "mu_c", 0)}  # rank 0 takes the first n of 8 samples
SHAPE = (8, 3, 4, 5)
RESNET_SHAPE = (8, 3, 32, 32)
GRAPH_CASES = ("mu_c-mu_c-uneven", "mu_c-sigma_c-empty", "mu_s-mu_c-empty")
RESNET_STEPS = 3
RESNET_LR = 0.1

WORKER = textwrap.dedent("""
    import os, pathlib, sys, numpy as np, mindspore as ms
    from mindspore import nn
    from mindspore.communication import init, get_rank
    ms.set_context(mode=ms.PYNATIVE_MODE)
    init()
    from rbn_mindspore import (SyncRepresentativeBatchNorm, canonical_parameters, load_numpy_state_dict, models,
                               state_dict_to_numpy)
    rank, data, out = get_rank(), np.load(sys.argv[1]), os.path.dirname(sys.argv[1])
    params = {k[6:]: data[k] for k in data.files if k.startswith("param.")}

    def layer_step(layer, rows):
        load_numpy_state_dict(layer, params, strict=False)
        layer.set_train()
        x, dy = ms.Tensor(data["x"][rows]), ms.Tensor(data["dy"][rows])
        weights = layer.trainable_params()
        def objective(inputs):
            y = layer(inputs)
            return (y * dy).sum(), y
        (_, y), (dx, grads) = ms.value_and_grad(objective, 0, weights, has_aux=True)(x)
        names = {id(p): n for n, p in canonical_parameters(layer).items()}
        result = {"y": y.asnumpy(), "dx": dx.asnumpy(), "running_mean": layer.moving_mean.asnumpy(),
                  "running_var": layer.moving_variance.asnumpy(),
                  "num_batches_tracked": layer.num_batches_tracked.asnumpy()}
        result.update({"grad." + names[id(w)]: g.asnumpy() for w, g in zip(weights, grads)})
        return result

    for item in sys.argv[2:]:
        mode, case = item.split("/")
        ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
        centering_stat, scaling_stat, first = case.split(":")
        rows = slice(0, int(first)) if rank == 0 else slice(int(first), None)
        layer = SyncRepresentativeBatchNorm(3, centering_stat=centering_stat, scaling_stat=scaling_stat)
        np.savez(f"{out}/{mode}_{case.replace(':', '_')}_{rank}.npz", **layer_step(layer, rows))
    ms.set_context(mode=ms.PYNATIVE_MODE)

    rows = slice(4 * rank, 4 * rank + 4)
    for name, groups in (("alone", [[0], [1]]), ("created", [[1, 0]])):
        layer = SyncRepresentativeBatchNorm(3, process_groups=groups, scaling_stat="sigma_c")
        np.savez(f"{out}/groups_{name}_{rank}.npz", group=str(layer._group), **layer_step(layer, rows))
    try:
        SyncRepresentativeBatchNorm(3, process_groups=[[0, 2]])
    except ValueError as error:
        pathlib.Path(f"{out}/groups_error_{rank}.txt").write_text(str(error))

    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    net = models.resnet18(num_classes=10)
    load_numpy_state_dict(net, {k[7:]: data[k] for k in data.files if k.startswith("resnet.")})
    net = SyncRepresentativeBatchNorm.convert_sync_batchnorm(net).set_train()
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")),
                               nn.SGD(net.trainable_params(), float(data["lr"])))
    half = len(data["images"][0]) // 2
    for images, labels in zip(data["images"], data["labels"]):
        step(ms.Tensor(images[rank * half:(rank + 1) * half]), ms.Tensor(labels[rank * half:(rank + 1) * half]))
    np.savez(f"{out}/resnet_{rank}.npz", **state_dict_to_numpy(net))
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


def layer_reference(params, x, dy, centering_stat, scaling_stat):
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
           "running_var": layer.moving_variance.asnumpy(), "num_batches_tracked": layer.num_batches_tracked.asnumpy()}
    out.update({"grad." + names[id(w)]: g.asnumpy() for w, g in zip(weights, grads)})
    return out


def resnet_run(initial, images, labels, lr):
    """``RESNET_STEPS`` SGD steps of an RBN resnet18 on the whole batch, one process; the state after."""
    net = models.resnet18(num_classes=10)
    load_numpy_state_dict(net, initial)
    net.set_train()
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")),
                               nn.SGD(net.trainable_params(), lr))
    for x, y in zip(images, labels):
        step(Tensor(x), Tensor(y))
    return state_dict_to_numpy(net)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    params = {name: (value + rng.uniform(-0.5, 0.5, value.shape)).astype(np.float32)
              for name, value in state_dict_to_numpy(RepresentativeBatchNorm2d(3)).items()
              if name in ("weight", "bias", "center_weight", "scale_weight", "scale_bias")}
    data = {"x": (3 + rng.standard_normal(SHAPE)).astype(np.float32),
            "dy": rng.standard_normal(SHAPE).astype(np.float32),
            "images": rng.standard_normal((RESNET_STEPS,) + RESNET_SHAPE).astype(np.float32),
            "labels": rng.integers(0, 10, (RESNET_STEPS, RESNET_SHAPE[0])).astype(np.int32),
            "lr": np.array(RESNET_LR)}
    ms.set_seed(0)
    resnet = state_dict_to_numpy(models.resnet18(num_classes=10))
    return params, data, resnet


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory, inputs):
    params, data, resnet = inputs
    directory = tmp_path_factory.mktemp("sync")
    np.savez(directory / "data.npz", **data, **{"param." + k: v for k, v in params.items()},
             **{"resnet." + k: v for k, v in resnet.items()})
    script = directory / "worker.py"
    script.write_text(WORKER)
    # MS_NODE_TIMEOUT: a CPU collective waits 30 s for its peer by default, and a peer compiling a graph on a
    # busy core (another test process beside this launch) can take longer; the launch's own timeout bounds a hang.
    env = dict(os.environ, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(free_port()), MS_WORKER_NUM=str(WORLD_SIZE),
               MS_NODE_TIMEOUT=str(LAUNCH_TIMEOUT), PYTHONPATH=str(ROOT))
    cases = [f"{mode}/{':'.join(map(str, CASES[case]))}" for mode in ("pynative", "graph")
             for case in (CASES if mode == "pynative" else GRAPH_CASES)]
    roles = [("MS_SCHED", None)] + [("MS_WORKER", str(rank)) for rank in range(WORLD_SIZE)]
    processes = []
    for role, node in roles:
        role_env = dict(env, MS_ROLE=role, **({"MS_NODE_ID": node} if node else {}))
        processes.append(subprocess.Popen([sys.executable, str(script), str(directory / "data.npz"), *cases],
                                          env=role_env, cwd=directory, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=LAUNCH_TIMEOUT)[0] for process in processes]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the MindSpore workers did not finish in {LAUNCH_TIMEOUT} s (a hang?)")
    finally:
        for process in processes:
            process.kill()
    # the workers' tracebacks first: the scheduler only reports that a worker is gone
    failed = [output[-3000:] for process, output in list(zip(processes, outputs))[::-1] if process.returncode]
    assert not failed, "\n\n".join(failed)
    return directory


def load_ranks(directory, stem):
    return [dict(np.load(directory / f"{stem}_{rank}.npz")) for rank in range(WORLD_SIZE)]


def assert_ranks_equal_whole(ranks, want, rows):
    """Each rank's rows of the output and input gradient, the data-parallel average of the parameter
    gradients (the single-process gradient over the world size), every rank's moving statistics."""
    for name in ("y", "dx"):
        assert_close(name, np.concatenate([rank[name] for rank in ranks]), want[name][rows])
    for name in want:
        if name.startswith("grad."):
            assert_close(name, sum(rank[name] for rank in ranks) / WORLD_SIZE, want[name] / WORLD_SIZE)
    for rank in ranks:
        for name in ("running_mean", "running_var"):
            assert_close(name, rank[name], want[name])
        assert rank["num_batches_tracked"] == want["num_batches_tracked"] == 1


@pytest.mark.parametrize("mode, case",
                         [("pynative", case) for case in CASES] + [("graph", case) for case in GRAPH_CASES])
def test_two_processes_equal_one_process(ranks_dir, inputs, case, mode):
    params, data, _ = inputs
    centering_stat, scaling_stat, first = CASES[case]
    want = layer_reference(params, data["x"], data["dy"], centering_stat, scaling_stat)
    ranks = load_ranks(ranks_dir, f"{mode}_{centering_stat}_{scaling_stat}_{first}")
    if first == 0:  # the empty rank's share: nothing, and zero parameter gradients
        assert ranks[0]["y"].shape == ranks[0]["dx"].shape == (0,) + SHAPE[1:]
        assert all(not value.any() for name, value in ranks[0].items() if name.startswith("grad."))
    assert_ranks_equal_whole(ranks, want, slice(None))


def test_process_groups(ranks_dir, inputs):
    """[[0], [1]]: each rank alone (its shard's statistics); [[1, 0]]: a created group of both."""
    params, data, _ = inputs
    created = load_ranks(ranks_dir, "groups_created")
    assert created[0]["group"] == created[1]["group"] != "hccl_world_group"
    assert_ranks_equal_whole(created, layer_reference(params, data["x"], data["dy"], "mu_c", "sigma_c"), slice(None))
    for rank, result in enumerate(load_ranks(ranks_dir, "groups_alone")):
        rows = slice(4 * rank, 4 * rank + 4)
        want = layer_reference(params, data["x"][rows], data["dy"][rows], "mu_c", "sigma_c")
        assert str(result["group"]) == "None"
        for name, value in want.items():
            assert_close(name, result[name], value)
    for rank in range(WORLD_SIZE):
        message = (ranks_dir / f"groups_error_{rank}.txt").read_text()
        assert "below the world size 2" in message and "[[0, 2]]" in message


def test_data_parallel_resnet18_equals_one_process(ranks_dir, inputs):
    """3 SGD steps: every rank's parameter updates and moving statistics, against the exact ones.

    A float32 resnet18's train-mode gradients are ill-conditioned (BatchNorm's backward at 8
    values per channel in layer4; 3 steps amplify it): one process in float32 is already up to
    ~1e-2 away from float64 (see ``tolerances.peer_tolerance``). So, as the zoo's SGD test does,
    the exact answer is PyTorch's float64 network with the same weights and batches, and the
    data-parallel run must be as close to it as one MindSpore process with the whole batch is.
    The data-parallel layers compute their (N, C) algebra in float32 (MindSpore's ``AllReduce``
    takes no float64), so the peers are both one-process paths: the whole-layer CPU kernels (that
    algebra in float64) and the BatchNorm-primitive path (in float32, with the same MindSpore ops).
    """
    _, data, initial = inputs
    peers = [resnet_run(initial, data["images"], data["labels"], RESNET_LR)]
    with kernel_choice(primitive=True):
        peers.append(resnet_run(initial, data["images"], data["labels"], RESNET_LR))
    porting = checkpoint.adapter("torch")
    exact = checkpoint.build("torch", "resnet18", 10).double()
    porting.load_numpy_state_dict(exact, initial)
    for images, labels in zip(data["images"], data["labels"]):
        porting.sgd_step(exact, images.astype(np.float64), labels.astype(np.int64), RESNET_LR)
    exact = porting.state_dict_to_numpy(exact)

    def update(state):
        return {name: state[name] - initial[name] for name in state if not name.endswith("num_batches_tracked")}

    checks = []
    for rank, got in enumerate(load_ranks(ranks_dir, "resnet")):
        assert all(got[name] == RESNET_STEPS for name in got if name.endswith("num_batches_tracked"))
        checks += checks_against_float64(f"rank {rank} update", update(got), update(exact),
                                        [update(peer) for peer in peers])
    assert_checks(checks)


def test_one_process_is_the_local_layer():
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32))
    sync, local = SyncRepresentativeBatchNorm(3).set_train(), RepresentativeBatchNorm2d(3).set_train()
    assert np.array_equal(sync(x).asnumpy(), local(x).asnumpy())


def test_float64_synchronized_statistics_are_refused():
    """MindSpore's AllReduce takes no float64: a clear error before any collective, not a compile
    failure on every process; local statistics (evaluation, no group) still take float64."""
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 2, 2)))
    running_mean, running_var = (ms.Parameter(Tensor(np.full(3, fill)), requires_grad=False) for fill in (0.0, 1.0))
    with pytest.raises(TypeError, match=r"group 'a group'\) need float32 input.*AllReduce takes no float64 "
                                        r"\(got Float64 input\)"):
        representative_batch_norm(x, running_mean, running_var, training=True, group="a group")
    local = representative_batch_norm(x, running_mean, running_var, training=False, group="a group")
    np.testing.assert_allclose(local.asnumpy(), x.asnumpy() / np.sqrt(1 + 1e-5), **tolerance("float64")._asdict())


def test_process_groups_are_checked():
    with pytest.raises(TypeError, match=r"list of lists of rank ids .*got \[0, 1\]"):
        SyncRepresentativeBatchNorm(3, process_groups=[0, 1])
    with pytest.raises(ValueError, match="at most once, none negative"):
        SyncRepresentativeBatchNorm(3, process_groups=[[0, 1], [1]])
    with pytest.raises(ValueError, match="at most once, none negative"):
        SyncRepresentativeBatchNorm(3, process_groups=[[-1, 0]])
    with pytest.raises(RuntimeError, match=r"mindspore.communication.init\(\)"):
        SyncRepresentativeBatchNorm(3, process_groups=[[0, 1]])


def test_convert_sync_batchnorm_keeps_everything():
    net = nn.SequentialCell([
        nn.Conv2d(3, 4, 3, pad_mode="valid"),
        RepresentativeBatchNorm2d(4, eps=1e-3, momentum=None, scaling_stat="sigma_c"),
        nn.SequentialCell([nn.Flatten(), RepresentativeBatchNorm1d(4 * 3 * 3, affine=False, centering=False,
                                                                   use_batch_statistics=True)]),
        nn.BatchNorm1d(36)])
    net[1].set_train()
    net[1].center_weight.requires_grad = False
    net[2][1].moving_mean.set_data(Tensor(np.full(36, 0.5, np.float32)))
    layers = [net[1], net[2][1]]
    before = {param.name: param for param in net.get_parameters()}
    values = {name: param.asnumpy().copy() for name, param in before.items()}
    converted = SyncRepresentativeBatchNorm.convert_sync_batchnorm(net)
    assert converted is net and type(net[3]) is nn.BatchNorm1d  # not ours to convert
    for old, new in zip(layers, [net[1], net[2][1]]):
        assert type(new) is SyncRepresentativeBatchNorm and new.process_groups is None
        for attribute in ("num_features", "eps", "momentum", "affine", "use_batch_statistics", "training",
                          "centering", "scaling", "centering_stat", "scaling_stat"):
            assert getattr(new, attribute) == getattr(old, attribute), attribute
    # The same Parameter objects, under the same full names: values, requires_grad, optimizers.
    after = {param.name: param for param in net.get_parameters()}
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert not net[1].center_weight.requires_grad and not net[2][1].gamma.requires_grad
    for name, value in values.items():
        assert np.array_equal(after[name].asnumpy(), value), name
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32))
    assert net(x).shape == (2, 36)
    # A layer alone comes back as the new layer; NHWC has no synchronized form.
    assert type(SyncRepresentativeBatchNorm.convert_sync_batchnorm(RepresentativeBatchNorm2d(2))) \
        is SyncRepresentativeBatchNorm
    with pytest.raises(ValueError, match="NCHW input: cannot convert a layer with data_format='NHWC'"):
        SyncRepresentativeBatchNorm.convert_sync_batchnorm(RepresentativeBatchNorm2d(2, data_format="NHWC"))
