"""The same network in PyTorch, MindSpore and Jittor: same arrays, same logits, same SGD step.

The same canonical arrays are loaded in every framework (and, for the round trip, carried
through every file format by ``rbn.checkpoint.convert``); every comparison is a
parity Check against PyTorch under the one float32 tolerance (see the SGD test for the
widening its ill-conditioned gradients need).
"""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("mindspore")
pytest.importorskip("jittor")

from rbn import checkpoint, frameworks  # noqa: E402
from rbn.trajectory import moved_one_ulp  # noqa: E402
from rbn_reference.parity import assert_checks, compare  # noqa: E402
from test_models import BATCH, SMALL, random_state  # noqa: E402
from tolerances import PEER_NOISE_PERTURBED, peer_tolerance, tolerance  # noqa: E402

FRAMEWORKS = frameworks.names()  # the safe import order
LR = 0.1


def batch(seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(BATCH).astype(np.float32), rng.integers(0, 10, BATCH[0]).astype(np.int64)


def loaded(framework, arch, arrays):
    porting = checkpoint.adapter(framework)
    model = checkpoint.build(framework, arch, 10)
    porting.load_numpy_state_dict(model, arrays)
    return porting, model


def checks_against_float64(label, got, want, peers):
    """Check ``got`` (float32) against ``want`` (PyTorch in float64), array by array.

    Each array's tolerance is ``peer_tolerance``: the float32 table widened by PyTorch's own
    float32 error there, the worst over ``peers`` (PyTorch float32 results: vs ``want``;
    reasoned in the tolerance table). A framework agrees when it is about as close to the exact
    answer as PyTorch is.
    """
    assert sorted(got) == sorted(want)
    checks = []
    for name in sorted(want):
        if name.endswith("num_batches_tracked"):
            assert int(got[name]) == int(want[name]), name
            continue
        own_error = max(float(np.abs(peer[name].astype(np.float64) - want[name]).max()) for peer in peers)
        checks.append(compare(label, f"{label} {name}", got[name], want[name], "float32",
                              peer_tolerance("float32", own_error)))
    return checks


@pytest.mark.parametrize("arch", SMALL)
def test_round_trip_through_every_format_is_bit_identical(arch, tmp_path):
    arrays = random_state(arch)
    start = tmp_path / "start.pt"
    checkpoint.write_checkpoint(start, checkpoint.Checkpoint(arrays, {}))
    chain = [start, tmp_path / "a.pkl", tmp_path / "b.ckpt", tmp_path / "c.safetensors", tmp_path / "end.pt"]
    for src, dst in zip(chain, chain[1:]):
        checkpoint.convert(src, dst, arch=arch, progress=False)
    end = checkpoint.read_checkpoint(chain[-1]).arrays
    assert sorted(end) == sorted(arrays)
    for name, array in arrays.items():
        assert end[name].dtype == array.dtype and end[name].shape == array.shape, name
        np.testing.assert_array_equal(end[name], array, err_msg=name)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("arch", SMALL + ("res2net50_26w_4s",))
def test_logits_agree_across_frameworks(arch, mode):
    arrays = random_state(arch)
    x, _ = batch()
    logits = {framework: checkpoint.adapter(framework).logits(loaded(framework, arch, arrays)[1], x, mode == "train")
              for framework in FRAMEWORKS}
    assert logits["torch"].shape == (BATCH[0], 10)
    assert_checks([compare(f"logits ({mode})", f"{arch} {framework} {mode} logits", logits[framework],
                           logits["torch"], "float32", tolerance("float32")) for framework in FRAMEWORKS[1:]])


@pytest.mark.parametrize("arch", SMALL)
def test_one_sgd_step_agrees_across_frameworks(arch):
    """Updated weights and running statistics, and the updates themselves (gradient parity)."""
    arrays = random_state(arch)
    x, target = batch()
    after = {}
    for framework in FRAMEWORKS:
        porting, model = loaded(framework, arch, arrays)
        porting.sgd_step(model, x, target, LR)
        after[framework] = porting.state_dict_to_numpy(model)
    torch_porting = checkpoint.adapter("torch")
    peers = [after["torch"]]  # PyTorch's float32 error, the worst of it from starts moved one ulp too
    for member in range(1, PEER_NOISE_PERTURBED + 1):
        model = loaded("torch", arch, moved_one_ulp(arrays, [0, member]))[1]
        torch_porting.sgd_step(model, x, target, LR)
        peers.append(torch_porting.state_dict_to_numpy(model))
    exact = checkpoint.build("torch", arch, 10).double()
    torch_porting.load_numpy_state_dict(exact, arrays)
    torch_porting.sgd_step(exact, x.astype(np.float64), target, LR)
    after["float64"] = torch_porting.state_dict_to_numpy(exact)

    def update(state):
        return {name: state[name] - arrays[name] for name in state if not name.endswith("num_batches_tracked")}

    assert max(np.abs(step).max() for step in update(after["float64"]).values()) > 1e-3  # the step did move
    checks = []
    for framework in FRAMEWORKS:
        checks += checks_against_float64(f"{framework} sgd step", after[framework], after["float64"], peers)
        checks += checks_against_float64(f"{framework} sgd update", update(after[framework]),
                                         update(after["float64"]), [update(peer) for peer in peers])
    assert_checks(checks)
