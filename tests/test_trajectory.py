"""``rbn trajectory``: one seeded start, several frameworks, step by step, judged by its bound.

The real frameworks must pass; planted mistakes in one framework's training (a wrong momentum,
a missing weight decay, a running-statistics update off by one in the unbiased count) must
each fail it (exit status 1), judged by free-running gaps in float64 and by restarted one-step
gaps in float32; bad input must exit 2 and write nothing. A few steps at the digits' native 8x8
keep it fast.
"""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("mindspore")
pytest.importorskip("jittor")

from rbn import checkpoint, cli, frameworks, training, trajectory  # noqa: E402
from rbn_reference.tolerances import TRAJECTORY_NOISE_PERTURBED  # noqa: E402
from tolerances import trajectory_bound  # noqa: E402

STEPS = 3  # momentum acts from the second step on
FAST = ["--steps", str(STEPS), "--batch-size", "8"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trajectory") / "out"
    status = cli.main(["trajectory", *FAST, "--out", str(out)])
    return status, out, json.loads((out / "trajectory.json").read_text())


def test_the_three_frameworks_follow_one_trajectory(real_run):
    status, out, report = real_run
    assert status == 0, report["failures"]
    assert report["passed"] and [step["step"] for step in report["steps"]] == list(range(1, STEPS + 1))
    compared = [run for run in report["runs"] if run["role"] == "compared"]
    assert [run["framework"] for run in compared] == list(frameworks.names()[1:])
    # The noise floor is an envelope: torch float32 from the start and from the perturbed starts,
    # each against torch float64; the noise of a step is the worst of them, the floor its running max.
    members = [run["label"] for run in report["runs"]
               if run["framework"] == "torch" and run["dtype"] == "float32" and run["role"] in ("reference", "noise")]
    assert len(members) == 1 + TRAJECTORY_NOISE_PERTURBED
    for step in report["steps"]:
        assert sorted(step["noise_members"]) == sorted(members)
        for group, noise in step["noise"].items():
            assert noise == max(step["noise_members"][member][group] for member in members)
            assert 0 < noise < 1e-5  # a few steps from one start: rounding, no discrete event yet
        # Perturbed by an ulp, the members do not follow the plain float32 run to the bit.
        assert len({step["noise_members"][member]["parameters"] for member in members}) > 1
        losses = np.array(list(step["loss"].values()))
        assert np.isfinite(losses).all() and losses.min() > 0
        # The 1-step noise: torch float32 restarted from torch float64's state before the step, and
        # from it moved one ulp; the envelope of them against torch float64's step.
        restart_members = step["restart_noise_members"]
        assert len(restart_members) == 1 + TRAJECTORY_NOISE_PERTURBED
        for group, noise in step["restart_noise"].items():
            assert noise == max(gaps[group] for gaps in restart_members.values())
            assert 0 < noise < 1e-6  # one step's float32 rounding
        for run in compared:
            label = run["label"]
            if run["judged_by"] == "restarted":
                judged, noise = step["restarted_gaps"][label], step["restart_noise"]
                assert 0 < max(judged.values()) < 2e-6  # one step from torch's state: rounding only
            else:
                judged = step["gaps"][label]
                noise = {group: max(past["noise"][group] for past in report["steps"][:step["step"]])
                         for group in judged}
            for group, gap in judged.items():
                assert gap <= step["bounds"][label][group], (step["step"], label, group)
                assert step["bounds"][label][group] == trajectory_bound(run["dtype"], noise[group])
    # A framework that cannot train in float64 says why, runs in float32 and is judged by its
    # restarted one-step gaps; a float64 one by its free-running gaps.
    for run in compared:
        assert (run["dtype"] == "float32") == (run["float64_fallback"] is not None), run
        assert run["judged_by"] == ("restarted" if run["dtype"] == "float32" else "free-running"), run
        assert all((run["label"] in step["restarted_gaps"]) == (run["dtype"] == "float32") for step in report["steps"])
    # The start moved the calibration away from its no-op init and the steps moved the weights.
    first = report["steps"][0]["loss"][report["runs"][0]["label"]]
    assert first != report["steps"][-1]["loss"][report["runs"][0]["label"]]
    assert sorted(path.name for path in out.iterdir()) == ["start.safetensors", "trajectory.json", "trajectory.png"]
    assert (out / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_start_moves_every_calibration_parameter():
    arrays = trajectory.initial_arrays("torch", "resnet20", 0, 10, 1)
    for leaf, init in (("center_weight", 0.0), ("scale_weight", 0.0), ("scale_bias", 1.0), ("weight", 1.0),
                       ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        values = [array for name, array in arrays.items()
                  if name.endswith("." + leaf) and name.rpartition(".")[0] + ".running_mean" in arrays]
        assert values and all(np.abs(array - init).max() > 0.1 for array in values), leaf


def test_a_perturbed_start_moves_every_value_one_ulp():
    start = checkpoint.Checkpoint(trajectory.initial_arrays("torch", "resnet20", 0, 10, 1), {"arch": "resnet20"})
    moved = trajectory.perturbed_start(start, 0, 1)
    assert moved.metadata == start.metadata and sorted(moved.arrays) == sorted(start.arrays)
    directions = []
    for name, array in start.arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            assert np.array_equal(moved.arrays[name], array), name
            continue
        step = moved.arrays[name].astype(np.float64) - array.astype(np.float64)
        assert moved.arrays[name].dtype == np.float32
        # One ulp: the spacing above |value|, or half of it going down from a power of two.
        ulp = np.spacing(np.abs(array))
        assert np.all((np.abs(step) == ulp) | (np.abs(step) == ulp / 2)), name
        directions.append(np.sign(step).ravel())
    directions = np.concatenate(directions)
    assert np.all(directions != 0) and 0.45 < np.mean(directions > 0) < 0.55
    # Seeded: the same member moves the same way; another member, another way.
    assert all(np.array_equal(a, trajectory.perturbed_start(start, 0, 1).arrays[n]) for n, a in moved.arrays.items())
    other = trajectory.perturbed_start(start, 0, 2).arrays
    assert any(not np.array_equal(a, other[n]) for n, a in moved.arrays.items())


def same_arrays(got, want):
    """Whether two {name: array} dicts hold the same names and, to the bit, the same arrays."""
    return sorted(got) == sorted(want) and all(np.array_equal(got[name], want[name]) for name in want)


def test_restarted_steps_borrow_a_model_and_give_it_back():
    """Steps of a run's model from other states (``restarted_steps``), and the model's own state
    put back, to the bit: each step equals that of a model of its own loaded with the state, and
    the model's next free-running step equals that of a model never borrowed."""
    start = checkpoint.Checkpoint(trajectory.initial_arrays("torch", "resnet20", 0, 10, 1),
                                  {"origin": "torch", "arch": "resnet20", "norm": "rbn"})
    (x0, y0), (x1, y1) = [(x.astype(np.float32), y)
                          for x, y in trajectory.batches(training.load_dataset("digits"), 2, 8, 0)]
    settings = trajectory.OPTIMIZERS["momentum"]
    host, untouched, own = [trajectory.start("torch", start, "resnet20", "float32", settings) for _ in range(3)]
    others = [trajectory.start("torch", trajectory.perturbed_start(start, 0, member), "resnet20", "float32", settings)
              for member in (1, 2)]
    for r in (host, untouched, *others):  # every state with momentum buffers of its own
        r.trainer.step(x0, y0, 0.02)
    starts = [trajectory.snapshot(other) for other in others]
    results = trajectory.restarted_steps(host, starts, x1, y1, 0.02)
    assert len(results) == len(starts)
    for state, (loss, after) in zip(starts, results):
        own.trainer.load_state(*state)
        assert loss == own.trainer.step(x1, y1, 0.02)
        assert same_arrays(after, trajectory.snapshot(own)[0])
    assert results[0][0] != results[1][0]  # two starts, two steps
    assert host.trainer.step(x1, y1, 0.02) == untouched.trainer.step(x1, y1, 0.02)
    for mine, theirs in zip(trajectory.snapshot(host), trajectory.snapshot(untouched)):
        assert same_arrays(mine, theirs)


def planted(monkeypatch, framework, **overrides):
    """``framework``'s Trainer built with ``overrides`` of its optimizer settings."""
    training = frameworks.import_module(framework, f"rbn_{framework}.training")
    original = training.Trainer.__init__

    def init(self, model, **settings):
        original(self, model, **{**settings, **overrides})

    monkeypatch.setattr(training.Trainer, "__init__", init)


def off_by_one(monkeypatch, framework):
    """``framework``'s RBN running variance made unbiased over one value more than the batch has."""
    functional = frameworks.import_module(framework, f"rbn_{framework}.functional")
    original = functional._update_running_stats

    def update(*arguments):  # (..., count, momentum) in every framework
        *state, count, momentum = arguments
        return original(*state, count + 1, momentum)

    monkeypatch.setattr(functional, "_update_running_stats", update)


MISTAKES = ("wrong momentum", "no weight decay", "running statistics off by one")


# Each mistake in Jittor against torch float64 (free-running) and against torch float32 with
# --dtype float32 (restarted); the smallest one (no weight decay: 1e-5 a step) in MindSpore, which
# runs in float32, against torch float64 (restarted, as in the default run; its compile is slow).
@pytest.mark.parametrize("mistake, framework, dtype",
                         [(mistake, "jittor", dtype) for mistake in MISTAKES for dtype in ("float64", "float32")] +
                         [("no weight decay", "mindspore", "float64")])
def test_a_planted_mistake_fails_the_command(mistake, framework, dtype, monkeypatch, tmp_path):
    """A float64 run is judged by its free-running gaps; a float32 one by its restarted one-step
    gaps, which a mistake moves at every step it acts in."""
    if mistake == "wrong momentum":
        planted(monkeypatch, framework, momentum=0.8)
    elif mistake == "no weight decay":
        planted(monkeypatch, framework, weight_decay=0.0)
    else:
        off_by_one(monkeypatch, framework)
    out = tmp_path / "out"
    assert cli.main(["trajectory", *FAST, "--frameworks", f"torch,{framework}", "--dtype", dtype,
                     "--out", str(out)]) == 1
    report = json.loads((out / "trajectory.json").read_text())
    failing = {(failure["framework"], failure["group"]) for failure in report["failures"]}
    assert failing and {name for name, _ in failing} == {framework}
    if mistake == "running statistics off by one":
        assert (framework, "running statistics") in failing
    run, = [run for run in report["runs"] if run["role"] == "compared"]
    assert run["judged_by"] == ("restarted" if run["dtype"] == "float32" else "free-running")
    judged = "restarted_gaps" if run["judged_by"] == "restarted" else "gaps"
    for failure in report["failures"]:
        assert failure["gap"] == report["steps"][failure["step"] - 1][judged][framework][failure["group"]]
    # A momentum acts from the second step on, the others from the first; restarted, each step
    # shows it afresh.
    steps = {failure["step"] for failure in report["failures"]}
    if run["judged_by"] == "restarted":
        assert steps == ({2, 3} if mistake == "wrong momentum" else {1, 2, 3}), steps


@pytest.mark.parametrize("arguments, message", [
    (["--frameworks", "torch,tensorflow"], "unknown framework 'tensorflow'"),
    (["--arch", "vgg11"], "unknown architecture 'vgg11'"),
    (["--steps", "0"], "--steps must be at least 1 (got 0)"),
])
def test_bad_input_exits_2_and_writes_nothing(arguments, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["trajectory", *arguments, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["trajectory", "--steps", "1", "--out", str(blocker / "out")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_first_framework_without_float64_exits_2(tmp_path, capsys):
    """The first framework measures the float32 noise floor against itself in float64."""
    out = tmp_path / "out"
    assert cli.main(["trajectory", "--frameworks", "mindspore,torch", "--steps", "1", "--out", str(out)]) == 2
    assert "mindspore cannot train in float64 here (" in capsys.readouterr().err  # with MindSpore's own reason
    assert not out.exists()
