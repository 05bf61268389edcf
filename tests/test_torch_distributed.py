"""rbn_torch.SyncRepresentativeBatchNorm: processes sharing a batch == one process holding all of it.

One launch of two gloo processes (``torch.multiprocessing`` spawn, tcp on 127.0.0.1, bounded
by a timeout) runs every distributed scenario; the tests then compare what each rank saved
with a single process running the whole batch, here in the test process.

Gradient convention: each rank backpropagates its share of the single-process loss
(``sum(Y * dY)`` over its own rows). The synchronized backward then gives each rank the rows
of the single-process ``dL/dX``, and the ranks' parameter gradients sum to the single-process
one; DDP's average (their sum over the world size) is that of the loss divided by the world
size. The DDP test uses the usual DDP loss instead, a mean over each rank's equal shard,
whose DDP average is exactly the gradient of the mean over the whole batch.

The single-process reference runs in float64 (the oracle's precision) and the distributed
float32 results must be within the float32 tolerance of it, as the parity tests demand of the
single-process float32 layer.
"""

import datetime
import doctest
import os
import socket
import time
import zlib
from typing import NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

import rbn_torch  # noqa: E402
import rbn_torch.distributed  # noqa: E402
from rbn_torch import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d,  # noqa: E402
                       SyncRepresentativeBatchNorm)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD_SIZE = 2
LAUNCH_TIMEOUT = 180  # seconds; the launch takes ~10 s on 2 busy cores
BATCH = 8
CHANNELS = 3
STEPS = 2  # the second step's running statistics start from the first's


class Scenario(NamedTuple):
    id: str
    spatial: tuple
    dtype: str
    centering_stat: str
    scaling_stat: str
    split: tuple  # rows of the batch of 8 on rank 0 and rank 1
    mean: float = 0.0
    std: float = 1.5
    momentum: float = 0.1

    def arrays(self):
        """Two steps' inputs, the upstream gradient and the parameters, float64, seeded by the id."""
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        shape = (BATCH, CHANNELS, *self.spatial)
        xs = [rng.normal(self.mean, self.std, shape) + rng.normal(0, 0.5, (1, CHANNELS) + (1,) * len(self.spatial))
              for _ in range(STEPS)]
        dy = rng.standard_normal(shape)
        params = {name: rng.uniform(-0.5, 0.5, CHANNELS) + (1.0 if name in ("weight", "scale_bias") else 0.0)
                  for name in ("weight", "bias", "center_weight", "scale_weight", "scale_bias")}
        return xs, dy, params

    def rows(self, rank):
        start = sum(self.split[:rank])
        return slice(start, start + self.split[rank])

    def tolerance(self):
        return tolerance(self.dtype, offset_ratio=abs(self.mean) / self.std)


SCENARIOS = [
    Scenario("2d-mu_c-mu_c-float32", (5, 4), "float32", "mu_c", "mu_c", (4, 4)),
    Scenario("2d-sigma_c-sigma_c-float64", (5, 4), "float64", "sigma_c", "sigma_c", (4, 4)),
    Scenario("2d-mu_s-sigma_s-float32", (5, 4), "float32", "mu_s", "sigma_s", (4, 4)),
    Scenario("1d-flat-mu_c-sigma_c-float32", (), "float32", "mu_c", "sigma_c", (4, 4), momentum=None),
    Scenario("1d-mu_c-mu_s-float64", (6,), "float64", "mu_c", "mu_s", (4, 4)),
    Scenario("3d-mu_c-mu_c-float32", (3, 2, 4), "float32", "mu_c", "mu_c", (4, 4)),
    Scenario("uneven-2d-mu_c-sigma_c-float32", (5, 4), "float32", "mu_c", "sigma_c", (3, 5)),
    Scenario("uneven-2d-sigma_s-mu_c-float32", (5, 4), "float32", "sigma_s", "mu_c", (3, 5)),
    Scenario("empty-rank-2d-mu_c-mu_c-float32", (5, 4), "float32", "mu_c", "mu_c", (0, 8)),
    Scenario("empty-rank-2d-mu_s-mu_c-float32", (5, 4), "float32", "mu_s", "mu_c", (0, 8)),
    Scenario("offset-1e4-2d-mu_c-mu_c-float32", (5, 4), "float32", "mu_c", "mu_c", (4, 4), mean=1e4, std=1.0),
    Scenario("offset-1e4-2d-sigma_c-mu_s-float32", (5, 4), "float32", "sigma_c", "mu_s", (3, 5), mean=1e4,
             std=1.0),
]
LOCAL_CLASSES = {0: RepresentativeBatchNorm1d, 1: RepresentativeBatchNorm1d, 2: RepresentativeBatchNorm2d,
                 3: RepresentativeBatchNorm3d}

# The DDP run: an RBN resnet18 at 32x32, 3 SGD steps on a batch of 8 (4 per rank).
RESNET_STEPS = 3
RESNET_LR = 0.1
RESNET_DTYPE = torch.float64  # see test_ddp_resnet18_...


def layer_run(layer_class, scenario, dtype, rows=slice(None)):
    """``STEPS`` training steps of a fresh layer on ``rows`` of the scenario's batch; what to compare."""
    xs, dy, params = scenario.arrays()
    dtype = getattr(torch, dtype)
    layer = layer_class(CHANNELS, momentum=scenario.momentum, centering_stat=scenario.centering_stat,
                        scaling_stat=scenario.scaling_stat, dtype=dtype)
    with torch.no_grad():
        for name, value in params.items():
            getattr(layer, name).copy_(torch.from_numpy(value))
    for x in xs:
        layer.zero_grad()
        x = torch.tensor(x[rows], dtype=dtype, requires_grad=True)
        y = layer(x)
        (y * torch.tensor(dy[rows], dtype=dtype)).sum().backward()
    result = {"y": y, "grad x": x.grad}
    result.update({f"grad {name}": param.grad for name, param in layer.named_parameters()})
    result.update({name: buffer for name, buffer in layer.named_buffers()})
    return {name: value.detach().numpy() for name, value in result.items()}, layer


def resnet_batches(dtype=torch.float32):
    generator = torch.Generator().manual_seed(7)
    return [(torch.randn(BATCH, 3, 32, 32, generator=generator).to(dtype),
             torch.randint(0, 10, (BATCH,), generator=generator)) for _ in range(RESNET_STEPS)]


def resnet_run(model, batches, rows=slice(None)):
    """``RESNET_STEPS`` SGD steps (momentum 0.9) with the mean cross-entropy of ``rows``; the state after."""
    optimizer = torch.optim.SGD(model.parameters(), lr=RESNET_LR, momentum=0.9)
    for x, labels in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x[rows]), labels[rows]).backward()
        optimizer.step()


def new_resnet(dtype=torch.float32):
    torch.manual_seed(0)
    return rbn_torch.models.resnet18(num_classes=10).to(dtype)


def _count_all_reduce(counts):
    """Wrap torch.distributed.all_reduce (which rbn_torch.distributed calls) to count its calls; the original."""
    original = dist.all_reduce

    def counting(*args, **kwargs):
        counts[-1] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting
    return original


def _worker(rank, world_size, port, out_dir):
    """One rank: every scenario on its rows, the fallbacks, and the DDP resnet; saved as rank<r>.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=LAUNCH_TIMEOUT))
    results = {}
    for scenario in SCENARIOS:
        results[scenario.id], layer = layer_run(SyncRepresentativeBatchNorm, scenario, scenario.dtype,
                                                scenario.rows(rank))

    # One all_reduce in forward and one in backward, per layer and step.
    counts = []
    original = _count_all_reduce(counts)
    scenario = SCENARIOS[0]
    xs, dy, _ = scenario.arrays()
    x = torch.tensor(xs[0][scenario.rows(rank)], dtype=torch.float32, requires_grad=True)
    layer = SyncRepresentativeBatchNorm(CHANNELS)
    for path in ("mu_c", "mu_s"):
        layer.centering_stat = path
        counts.append(0)
        y = layer(x)
        counts.append(0)
        y.sum().backward()
    # Eval mode and a group of one compute locally: no collective.
    counts.append(0)
    eval_y = layer.eval()(x).detach().numpy()
    local_groups = [dist.new_group([r]) for r in range(world_size)]  # every rank creates every group
    alone = SyncRepresentativeBatchNorm(CHANNELS, process_group=local_groups[rank])
    counts.append(0)
    alone_y = alone(x).detach().numpy()
    dist.all_reduce = original
    results["collectives"] = {"counts": counts, "eval y": eval_y, "eval state": layer.state_dict(),
                              "alone y": alone_y}

    model = SyncRepresentativeBatchNorm.convert_sync_batchnorm(new_resnet(RESNET_DTYPE))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    resnet_run(ddp, resnet_batches(RESNET_DTYPE), slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size))
    results["resnet"] = {name: value.numpy() for name, value in model.state_dict().items()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(worker, nprocs, *args, timeout):
    """Start ``worker(rank, nprocs, port, *args)`` in ``nprocs`` spawned processes; fail after ``timeout`` s."""
    context = mp.start_processes(worker, args=(nprocs, free_port(), *args), nprocs=nprocs, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        # join raises ProcessRaisedException (with the worker's traceback) when a worker fails.
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers still running after {timeout} s (a hang?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sync_rbn")
    launch(_worker, WORLD_SIZE, str(out_dir), timeout=LAUNCH_TIMEOUT)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_two_processes_equal_one_process_with_the_whole_batch(ranks, scenario):
    whole, _ = layer_run(LOCAL_CLASSES[len(scenario.spatial)], scenario, "float64")
    parts = [rank[scenario.id] for rank in ranks]
    tol = scenario.tolerance()
    checks = [parity.compare("sync", f"{scenario.id} {name}", np.concatenate([part[name] for part in parts]),
                             whole[name], scenario.dtype, tol) for name in ("y", "grad x")]
    # Each rank's gradient is its share of the single-process one: the shares add up.
    checks += [parity.compare("sync", f"{scenario.id} {name}", sum(part[name] for part in parts), whole[name],
                              scenario.dtype, tol) for name in whole if name.startswith("grad ") and name != "grad x"]
    checks += [parity.compare("sync", f"{scenario.id} rank {rank} {name}", part[name], whole[name], scenario.dtype,
                              tol) for rank, part in enumerate(parts)
               for name in ("running_mean", "running_var", "num_batches_tracked")]
    parity.assert_checks(checks)


def test_one_all_reduce_in_forward_and_one_in_backward_and_none_when_local(ranks):
    for rank in ranks:
        # (forward, backward) on the channel path, then on the spatial path; then eval; then a group of one
        assert rank["collectives"]["counts"] == [1, 1, 1, 1, 0, 0]


def test_eval_mode_and_a_group_of_one_compute_locally(ranks):
    scenario = SCENARIOS[0]
    xs, _, _ = scenario.arrays()
    for rank, result in enumerate(ranks):
        # requires_grad as in the worker: the same (autograd) path, so the same rounding
        x = torch.tensor(xs[0][scenario.rows(rank)], dtype=torch.float32, requires_grad=True)
        local = RepresentativeBatchNorm2d(CHANNELS, centering_stat="mu_s")  # as the worker's layer ended
        local.load_state_dict(result["collectives"]["eval state"])
        assert_equal(result["collectives"]["eval y"], local.eval()(x))
        assert_equal(result["collectives"]["alone y"], RepresentativeBatchNorm2d(CHANNELS)(x))


def test_without_a_process_group_it_is_the_local_layer():
    assert not dist.is_initialized()
    scenario = SCENARIOS[0]
    sync, _ = layer_run(SyncRepresentativeBatchNorm, scenario, "float32")
    local, _ = layer_run(RepresentativeBatchNorm2d, scenario, "float32")
    for name, value in local.items():
        assert_equal(sync[name], value)


def test_ddp_resnet18_with_sync_rbn_equals_one_process_on_the_whole_batch(ranks):
    """3 SGD steps of float64 networks: the parameters' updates and the running statistics.

    In float64, at the table's tolerance: in float32 this network's 3-step trajectory is
    ill-conditioned (train-mode BatchNorm backward at 8 values per channel in layer4): one
    process in float32 already ends ~1e-2 relative away from float64 (measured), so a float32
    comparison would only measure rounding noise. The amplification (~1e5) leaves float64
    runs ~1e-11 apart, within the table's 1e-10.
    """
    initial = {name: value.numpy() for name, value in new_resnet(RESNET_DTYPE).state_dict().items()}
    model = new_resnet(RESNET_DTYPE)
    resnet_run(model, resnet_batches(RESNET_DTYPE))
    checks = []
    for name, want in model.state_dict().items():
        want = want.numpy()
        if name.endswith("num_batches_tracked"):
            assert all(rank["resnet"][name] == want for rank in ranks), name
            continue
        for rank, result in enumerate(ranks):
            # Updates, not values: a parameter's update is lr * its gradients, the thing being tested.
            checks.append(parity.compare("ddp", f"rank {rank} {name}", result["resnet"][name] - initial[name],
                                         want - initial[name], "float64", tolerance("float64")))
    parity.assert_checks(checks)


def test_convert_sync_batchnorm_keeps_everything():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), RepresentativeBatchNorm2d(4, momentum=None, scaling_stat="sigma_c"),
        torch.nn.Sequential(torch.nn.Flatten(1), RepresentativeBatchNorm1d(144, eps=1e-3, affine=False,
                                                                           centering=False)),
        RepresentativeBatchNorm3d(1, track_running_stats=False, centering_stat="mu_s", bias=False),
        torch.nn.BatchNorm1d(3))
    model[1].train(False)
    model[1].center_weight.requires_grad_(False)
    model[2][1].running_mean.fill_(0.5)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    layers = [model[1], model[2][1], model[3]]
    params = {name: param for name, param in model.named_parameters()}
    converted = SyncRepresentativeBatchNorm.convert_sync_batchnorm(model, process_group="group")
    assert converted is model  # containers are kept, as nn.SyncBatchNorm's converter does
    assert isinstance(converted[4], torch.nn.BatchNorm1d)  # not ours to convert
    for old, new in zip(layers, [converted[1], converted[2][1], converted[3]]):
        assert type(new) is SyncRepresentativeBatchNorm and new.process_group == "group"
        for attribute in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training",
                          "centering", "scaling", "centering_stat", "scaling_stat"):
            assert getattr(new, attribute) == getattr(old, attribute), attribute
    # The same Parameter objects (requires_grad, optimizer state), the same buffers and values.
    assert dict(converted.named_parameters()) == params
    assert not converted[1].center_weight.requires_grad
    assert converted[3].bias is None and converted[3].running_mean is None
    after = converted.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    # A layer alone comes back as the new layer.
    assert type(SyncRepresentativeBatchNorm.convert_sync_batchnorm(RepresentativeBatchNorm2d(2))) \
        is SyncRepresentativeBatchNorm


def test_state_dicts_are_the_local_layers():
    local = RepresentativeBatchNorm2d(4, scaling_stat="sigma_c")
    sync = SyncRepresentativeBatchNorm(4, scaling_stat="sigma_c")
    assert [(name, value.shape) for name, value in sync.state_dict().items()] == \
        [(name, value.shape) for name, value in local.state_dict().items()]
    sync.load_state_dict(local.state_dict())


def test_bad_input():
    layer = SyncRepresentativeBatchNorm(3)
    with pytest.raises(ValueError, match="expected 2D to 5D input"):
        layer(torch.randn(2, 3, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="centering_stat must be one of"):
        SyncRepresentativeBatchNorm(3, centering_stat="mean")


def test_docstring_examples_run():
    result = doctest.testmod(rbn_torch.distributed, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def assert_equal(got, want):
    np.testing.assert_array_equal(np.asarray(got), want.detach().numpy() if torch.is_tensor(want) else want)
