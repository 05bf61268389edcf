"""``rbn trajectory``: one seeded start, trained step by step in several frameworks, compared.

One initial network is drawn from a NumPy seed (shapes and names from the first framework's zoo
model), with every RBN layer's calibration parameters moved away from their no-op
initialisation and the norm layers' affine parameters and running statistics randomized. It is
written as a neutral checkpoint and read back into each framework (``rbn.checkpoint``). Each
framework then trains it with its own optimizer (``rbn_<fw>.training.Trainer``) on the same
NumPy batches, dropout off. After every step the loss, the parameters and the running statistics
of each framework are compared with the first framework's: the gap is ``max|got - want| /
max|want|`` per array (the project's norm-wise measure), the worst over the arrays of a group.

The bounds are ``rbn_reference.tolerances.trajectory_bound``. Float64 runs must agree to far
below the float32 noise floor measured in the same run. The floor is an envelope: the first
framework in float32 is run from the start and from ``TRAJECTORY_NOISE_PERTURBED`` copies of it
with every value moved one float32 ulp (``perturbed_start``), each against the first framework
in float64; the floor is the worst gap of them all, up to the step (a single float32 run cannot
bound a discrete event, such as an activation crossing zero, that rounding triggers at a
different step in another run).

Float32 runs are judged step by step instead, since free-running float32 training meets such
events at steps its own rounding decides, and no small envelope of another framework's runs
holds them: before every step the first framework's state (parameters, running statistics,
batch counts, momentum buffers; ``Trainer.load_state``) is loaded into the float32 framework's
model, its own state set aside, and it takes the step; its gap to the first framework after it
(the 1-step gap) must stay within a multiple of the same step's 1-step noise (the first framework
in the other dtype, restarted from that state and from copies of it moved one ulp). Then the
model's own state is put back for its free-running step, whose gaps are still reported.
"""

import json
import os
import sys
import tempfile
from typing import NamedTuple

import numpy as np

from rbn_reference import CALIBRATION_NAMES
from rbn_reference.tolerances import TRAJECTORY_NOISE_PERTURBED, trajectory_bound

from . import checkpoint, frameworks, training
from .files import atomic_output

DTYPES = ("float64", "float32")
# (momentum, weight decay) of each --optimizer; "momentum" is rbn train's optimizer.
OPTIMIZERS = {"sgd": (0.0, 5e-4), "momentum": (0.9, 5e-4)}
GROUPS = ("loss", "parameters", "running statistics")
RUNNING_NAMES = ("running_mean", "running_var")


class TrajectoryError(ValueError):
    """Bad input: an unknown framework or architecture, a bad step count, an unwritable --out."""


class RunInfo(NamedTuple):
    """What a :class:`Trajectory` keeps of a run."""

    label: str  # how it is printed: the framework, or e.g. "torch float64" for a noise run
    framework: str
    dtype: str  # the dtype it runs in
    fallback: str  # why it runs in float32 where float64 was asked; "" otherwise
    # "reference" (the first framework), "compared", "noise" (measures the floor only), or
    # "restarted" (one step from the reference's state before each step, see ``run``)
    role: str


class Run(NamedTuple):
    """One training run: a framework at a dtype, with its model and its optimizer."""

    info: RunInfo
    porting: object
    model: object
    trainer: object


def check_arguments(arch, names, steps, out):
    """Refuse bad input before anything runs or is written."""
    unknown = [name for name in names if name not in frameworks.names()]
    if unknown or not names:
        raise TrajectoryError(f"unknown framework {', '.join(map(repr, unknown)) or '(none)'}; "
                              f"expected a comma-separated list of {', '.join(frameworks.names())}")
    if len(set(names)) != len(names):
        raise TrajectoryError(f"each framework once, got {','.join(names)}")
    missing = [name for name in names if not frameworks.get(name).installed()]
    if missing:
        raise TrajectoryError(f"not installed: {', '.join(missing)}")
    if arch not in checkpoint.ARCHITECTURES:
        raise TrajectoryError(f"unknown architecture {arch!r}; expected one of {', '.join(checkpoint.ARCHITECTURES)}")
    if steps < 1:
        raise TrajectoryError(f"--steps must be at least 1 (got {steps})")
    try:
        training.check_output_directory(out)
    except training.TrainingError as error:
        raise TrajectoryError(str(error)) from None


def initial_arrays(framework, arch, seed, num_classes, in_channels):
    """A seeded start under canonical names: shapes from ``framework``'s zoo model, values from NumPy.

    Weights are He-normal (fan in); each norm layer gets ``weight`` in [0.5, 1.5], ``bias``,
    ``center_weight`` and ``scale_weight`` around 0 and ``scale_bias`` around its init 1, so that
    every term of Eq. 12 acts (at the no-op init w_m = w_v = 0 the calibration's gradients are
    all that moves them), and running statistics that are not the init's 0 and 1. The values are
    float32 numbers, so the float32 and float64 runs start from the same point.
    """
    porting = checkpoint.adapter(framework)
    arrays = porting.state_dict_to_numpy(checkpoint.build(framework, arch, num_classes, in_channels=in_channels))
    rng = np.random.default_rng(seed)
    norm_prefixes = {name.rpartition(".")[0] for name in arrays if name.endswith(".running_mean")}
    drawn = {}
    for name in sorted(arrays):
        array = arrays[name]
        prefix, _, leaf = name.rpartition(".")
        if not np.issubdtype(array.dtype, np.floating):
            drawn[name] = array
            continue
        if prefix in norm_prefixes:
            low, high = {"weight": (0.5, 1.5), "running_var": (0.5, 1.5), "scale_bias": (0.0, 2.0)}.get(leaf, (-0.5, 0.5))
            value = rng.uniform(low, high, array.shape)
        elif array.ndim >= 2:
            value = rng.standard_normal(array.shape) * np.sqrt(2.0 / np.prod(array.shape[1:]))
        else:
            value = rng.uniform(-0.1, 0.1, array.shape)
        drawn[name] = value.astype(np.float32)
    if not any(name.rpartition(".")[2] in CALIBRATION_NAMES for name in drawn):
        raise TrajectoryError(f"{arch} has no RBN layers")
    return drawn


def batches(data, steps, batch_size, seed):
    """The first ``steps`` training batches of ``rbn train``'s order: (x float64, y int64) each."""
    per_epoch = len(data.y_train) // batch_size
    orders = training.epoch_orders(len(data.y_train), batch_size, -(-steps // per_epoch), seed)
    return [(data.x_train[order], data.y_train[order]) for order in orders.reshape(-1, batch_size)[:steps]]


def relative_gap(got, want):
    """``max|got - want| / max|want|``, in float64 (0 where both are 0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.abs(want).max()) if want.size else 0.0
    error = float(np.abs(got - want).max()) if want.size else 0.0
    return error / scale if scale > 0 else error


def gaps(state, loss, reference_state, reference_loss):
    """The worst relative gap of each group (``GROUPS``) of one run's state to a reference's."""
    worst = {"loss": relative_gap(loss, reference_loss), "parameters": 0.0, "running statistics": 0.0}
    for name, want in reference_state.items():
        leaf = name.rpartition(".")[2]
        if leaf == "num_batches_tracked":
            continue
        group = "running statistics" if leaf in RUNNING_NAMES else "parameters"
        worst[group] = max(worst[group], relative_gap(state[name], want))
    return worst


def envelope(member_gaps):
    """The noise of one step: each group's worst gap over the noise members' ``{group: gap}``."""
    return {group: max(gaps_of[group] for gaps_of in member_gaps) for group in GROUPS}


def perturbed_start(start_checkpoint, seed, member):
    """``start_checkpoint`` with every floating value moved one float32 ulp up or down, at random.

    The directions are drawn from ``(seed, member)``. One ulp is the rounding a float32
    computation of the start would carry anyway; a run from here is another sample of float32
    training's rounding, not a different start (see the tolerances' "Training trajectories").
    """
    return checkpoint.Checkpoint(moved_one_ulp(start_checkpoint.arrays, [seed, member]), start_checkpoint.metadata)


def moved_one_ulp(arrays, key):
    """``arrays`` (name -> array) in float32, every floating value moved one float32 ulp up or down at
    random (directions drawn from ``key``, anything ``numpy.random.default_rng`` takes); integers kept."""
    rng = np.random.default_rng(key)
    moved = {}
    for name, array in sorted(arrays.items()):
        if np.issubdtype(array.dtype, np.floating):
            array = np.asarray(array, np.float32)
            array = np.nextafter(array, np.where(rng.random(array.shape) < 0.5, -np.inf, np.inf).astype(np.float32))
        moved[name] = array
    return moved


def start(framework, start_checkpoint, arch, dtype, optimizer, label=None, fallback="", role="compared"):
    """A :class:`Run`: ``arch`` in ``framework`` loaded from the neutral checkpoint, in ``dtype``."""
    porting, model = checkpoint.build_model(framework, start_checkpoint, arch)
    framework_training = frameworks.import_module(framework, f"{frameworks.get(framework).package}.training")
    model = framework_training.cast(model, dtype)
    momentum, weight_decay = optimizer
    trainer = framework_training.Trainer(model, momentum=momentum, weight_decay=weight_decay)
    return Run(RunInfo(label or framework, framework, dtype, fallback, role), porting, model, trainer)


def float64_fallback(framework, start_checkpoint, arch):
    """Why ``framework`` cannot train ``arch`` in float64 on this machine, or "" if it can.

    Found by trying, not assumed: one training step of the float64 network on a tiny batch
    (MindSpore's CPU ``Conv2D`` accepts float16 and float32 only, say). The step runs in a
    temporary working directory: a framework's failed graph compile leaves files in its cwd.
    """
    x = np.zeros((2, checkpoint.in_channels(start_checkpoint.arrays), 8, 8))
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            start(framework, start_checkpoint, arch, "float64", (0.0, 0.0)).trainer.step(x, np.zeros(2, np.int64), 0.0)
        except Exception as error:  # each framework words an unsupported dtype differently
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            return f"{type(error).__name__}: {(lines or ['(no message)'])[0]}"
        finally:
            os.chdir(here)
    return ""


def restarted(info):
    """Whether a compared run is judged by its restarted one-step gaps: it runs in float32 (see ``run``)."""
    return info.dtype == "float32"


class Trajectory(NamedTuple):
    """What ``run`` measured: per step, each run's loss and each compared run's gaps and bounds."""

    runs: list  # RunInfo of each run: the first framework, the compared ones, the noise runs, the restarted ones
    losses: list  # per step: {label: loss}
    gaps: list  # per step: {label: {group: gap}} free-running, for every framework but the first
    noise_members: list  # per step: {label: {group: gap}}, each float32 run of the first framework to its float64
    noise: list  # per step: the envelope of noise_members, {group: worst gap}
    restarted_gaps: list  # per step: {label: {group: gap}}, one step from the reference's state, float32 runs only
    restart_noise_members: list  # per step: {label: {group: gap}}, the same for the first framework in the other dtype
    restart_noise: list  # per step: the envelope of restart_noise_members, {group: worst gap}; {} without restarts
    bounds: list  # per step: {label: {group: bound}} of the gaps each run is judged by (``judged``)
    start: checkpoint.Checkpoint  # the neutral checkpoint every run started from

    def compared(self):
        """The RunInfo of every framework but the first."""
        return [info for info in self.runs if info.role == "compared"]

    def judged(self, step, label):
        """``{group: gap}`` that bounds[step][label] applies to: restarted for float32 runs, else free-running."""
        return self.restarted_gaps[step][label] if label in self.restarted_gaps[step] else self.gaps[step][label]

    def failures(self):
        return [(step + 1, info.label, group, gap, self.bounds[step][info.label][group])
                for step in range(len(self.gaps)) for info in self.compared()
                for group, gap in self.judged(step, info.label).items()
                if not gap <= self.bounds[step][info.label][group]]


def run(arch="resnet20", names=("torch", "mindspore", "jittor"), steps=50, dtype="float64", optimizer="momentum",
        lr=0.02, batch_size=16, seed=0, report=None):
    """Train the seeded start in every framework of ``names``; return the :class:`Trajectory`.

    Raises TrajectoryError if the first framework cannot train in float64 (it measures the noise floor).

    Besides the frameworks of ``names``, the first framework runs in the other dtype of the two,
    and in float32 from ``TRAJECTORY_NOISE_PERTURBED`` perturbed starts: the noise runs.

    Float32 runs (a framework that cannot train in float64, or every one with ``dtype``
    "float32") are judged step by step: before each step the reference's state (parameters,
    running statistics, batch counts, momentum buffers) is loaded into the run's model, its own
    state set aside, and it takes that one step; its gap to the reference after the step is the
    step's restarted gap. Its own state is then put back for its free-running step. Free-running
    float32 training is chaotic (see the tolerances), a restarted step carries one step's rounding
    only. Its bound scales with the step's 1-step noise: the worst restarted gap of the first
    framework in the other dtype, from the same state and from ``TRAJECTORY_NOISE_PERTURBED``
    copies of it moved one ulp. Float64 runs are judged by their free-running gaps.

    The batches are ``rbn train``'s: the digits dataset (8x8 grey images of 10 digits) in its
    seeded order. ``report(step, trajectory)`` is called after every step.
    """
    first = names[0]
    data = training.load_dataset("digits")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "start.safetensors")
        arrays = initial_arrays(first, arch, seed, data.num_classes, data.x_train.shape[1])
        checkpoint.write_checkpoint(path, checkpoint.Checkpoint(arrays, {"origin": first, "arch": arch, "norm": "rbn"}))
        start_checkpoint = checkpoint.read_checkpoint(path)
    fallbacks = {name: float64_fallback(name, start_checkpoint, arch) if dtype == "float64" or name == first else ""
                 for name in names}
    if fallbacks[first]:
        raise TrajectoryError(f"the first framework measures the float32 noise floor against itself in float64, and "
                              f"{first} cannot train in float64 here ({fallbacks[first]}); put another one first")
    settings = OPTIMIZERS[optimizer]
    runs = [start(name, start_checkpoint, arch, "float32" if fallbacks[name] else dtype, settings,
                  fallback=fallbacks[name], role="reference" if name == first else "compared") for name in names]
    other = "float32" if dtype == "float64" else "float64"
    other_run = start(first, start_checkpoint, arch, other, settings, label=f"{first} {other}", role="noise")
    runs.append(other_run)
    runs += [start(first, perturbed_start(start_checkpoint, seed, member), arch, "float32", settings,
                   label=f"{first} float32 perturbed {member}", role="noise")
             for member in range(1, TRAJECTORY_NOISE_PERTURBED + 1)]
    # One restarted run per float32 run, keyed by the run it stands for, and the 1-step noise
    # members: the first framework in the other dtype, restarted from the reference's state and
    # from it moved one ulp (seeded by the member and the step). They borrow a model: the run they
    # stand for, or the noise run in the other dtype (``restarted_steps``). A model of their own
    # would cost a compile more (MindSpore compiles its train step per model).
    restarts = {r.info.label: r._replace(info=RunInfo(f"{r.info.label} restarted", r.info.framework, r.info.dtype,
                                                       "", "restarted"))
                for r in runs if r.info.role == "compared" and restarted(r.info)}
    restart_members = [other_run._replace(info=RunInfo(
        f"{first} {other} restarted" + (f", moved {member}" if member else ""), first, other, "", "restarted"))
                       for member in range(TRAJECTORY_NOISE_PERTURBED + 1)] if restarts else []
    reference = runs[0]
    float64_label = first if dtype == "float64" else f"{first} float64"
    members = [r.info.label for r in runs if r.info.framework == first and r.info.dtype == "float32"]
    trajectory = Trajectory([r.info for r in runs + list(restarts.values()) + restart_members],
                            [], [], [], [], [], [], [], [], start_checkpoint)
    for step, (x, y) in enumerate(batches(data, steps, batch_size, seed)):
        before = snapshot(reference)
        losses, states = {}, {}
        for r in restarts.values():
            (losses[r.info.label], states[r.info.label]), = restarted_steps(r, [before], x, y, lr)
        if restart_members:
            starts = [before] + [tuple(moved_one_ulp(arrays, [seed, member, step]) for arrays in before)
                                 for member in range(1, len(restart_members))]
            for r, (loss, after) in zip(restart_members, restarted_steps(other_run, starts, x, y, lr)):
                losses[r.info.label], states[r.info.label] = loss, after
        for r in runs:
            losses[r.info.label] = r.trainer.step(x.astype(r.info.dtype), y, lr)
            states[r.info.label] = r.porting.state_dict_to_numpy(r.model)
        member_gaps = {label: gaps(states[label], losses[label], states[float64_label], losses[float64_label])
                       for label in members}
        noise = envelope(member_gaps.values())
        floor = {group: max([noise[group]] + [past[group] for past in trajectory.noise]) for group in GROUPS}
        one_step = {label: gaps(states[r.info.label], losses[r.info.label], states[first], losses[first])
                    for label, r in restarts.items()}
        restart_member_gaps = {r.info.label: gaps(states[r.info.label], losses[r.info.label], states[first],
                                                  losses[first]) for r in restart_members}
        restart_noise = envelope(restart_member_gaps.values()) if restart_members else {}
        trajectory.losses.append(losses)
        trajectory.noise_members.append(member_gaps)
        trajectory.noise.append(noise)
        trajectory.restarted_gaps.append(one_step)
        trajectory.restart_noise_members.append(restart_member_gaps)
        trajectory.restart_noise.append(restart_noise)
        trajectory.gaps.append({info.label: gaps(states[info.label], losses[info.label], states[first], losses[first])
                                for info in trajectory.compared()})
        trajectory.bounds.append({info.label: {group: trajectory_bound(info.dtype, judged_noise[group])
                                               for group in GROUPS}
                                  for info in trajectory.compared()
                                  for judged_noise in [restart_noise if restarted(info) else floor]})
        if report is not None:
            report(step + 1, trajectory)
    return trajectory


def snapshot(r):
    """A run's state and momentum buffers (``Trainer.load_state``'s arguments), as copies: PyTorch's
    state dict arrays are views of the tensors its step updates in place."""
    state = r.porting.state_dict_to_numpy(r.model)
    return {name: array.copy() for name, array in state.items()}, r.trainer.momentum_buffers()


def restarted_steps(r, starts, x, y, lr):
    """[(loss, state after)] of one step of ``r``'s model from each of ``starts`` (``snapshot``'s
    form); the model's own state is set aside once, before the first, and put back after the last,
    to the bit."""
    own = snapshot(r)
    results = []
    for start_state in starts:
        r.trainer.load_state(*start_state)
        results.append((r.trainer.step(x.astype(r.info.dtype), y, lr), snapshot(r)[0]))
    r.trainer.load_state(*own)
    return results


def columns(trajectory):
    """The per-step table's column names: the loss, then each compared run's free-running gaps (and for
    a float32 run its restarted one-step gaps), then the noise envelope (and the first framework's
    one-step gaps in the other dtype)."""
    names = ["step", "loss"]
    for info in trajectory.compared():
        names += [f"{info.label} {group}" for group in GROUPS]
        if restarted(info):
            names += [f"{info.label} 1-step {group}" for group in GROUPS]
    names += [f"noise {group}" for group in GROUPS]
    if trajectory.restart_noise[0]:
        names += [f"1-step noise {group}" for group in GROUPS]
    return names


def step_row(step, trajectory):
    """The cells of ``step`` (1-based) under ``columns``; a judged gap above its bound is marked with !."""
    index = step - 1
    bounds = trajectory.bounds[index]

    def cells_of(gaps_of, label=None):
        return [f"{gap:.1e}" + ("!" if label and not gap <= bounds[label][group] else "")
                for group, gap in gaps_of.items()]

    cells = [str(step), f"{trajectory.losses[index][trajectory.runs[0].label]:.6f}"]
    for info in trajectory.compared():
        if restarted(info):
            cells += cells_of(trajectory.gaps[index][info.label]) + \
                cells_of(trajectory.restarted_gaps[index][info.label], info.label)
        else:
            cells += cells_of(trajectory.gaps[index][info.label], info.label)
    return cells + cells_of(trajectory.noise[index]) + cells_of(trajectory.restart_noise[index])


WIDTH = 10


def format_row(cells):
    """One line of the per-step table."""
    return "  ".join(cell.rjust(WIDTH) if i else cell.rjust(4) for i, cell in enumerate(cells))


def noise_runs(trajectory):
    """What the noise columns are, in words."""
    first = trajectory.runs[0].framework
    return (f"the worst of {first} float32 from the start and from {TRAJECTORY_NOISE_PERTURBED} starts moved one "
            f"ulp, against {first} float64")


def restart_runs(trajectory):
    """How float32 runs are judged, in words ("" when there is none)."""
    labels = [info.label for info in trajectory.compared() if restarted(info)]
    if not labels:
        return ""
    first = trajectory.runs[0]
    other = "float32" if first.dtype == "float64" else "float64"
    return (f"float32 runs ({', '.join(labels)}) are judged by their 1-step gaps: each step also run from "
            f"{first.label}'s state before it (parameters, running statistics, batch counts, momentum buffers); "
            f"1-step noise = the worst of the same for {first.framework} {other}, from that state and from "
            f"{TRAJECTORY_NOISE_PERTURBED} copies of it moved one ulp. Their free-running gaps are shown, not "
            f"judged: free-running float32 training meets discrete events at steps its rounding decides")


def header(trajectory, dtype, optimizer):
    """The lines printed above the per-step table: what a gap is, how each run is judged and which runs
    fell back to float32."""
    first = trajectory.runs[0].label
    lines = [f"gaps to {first} after each step: max|got - want| / max|want|, the worst array of the group; "
             f"! = above its bound", f"noise = {noise_runs(trajectory)}"]
    if restart_runs(trajectory):
        lines.append(restart_runs(trajectory))
    for info in trajectory.compared():
        if info.fallback:
            lines.append(f"{info.framework} runs in float32: it cannot train in float64 on this CPU ({info.fallback})")
    names = [name.replace("running statistics", "running").replace("parameters", "params") for name in columns(trajectory)]
    lines.append(format_row(names))
    return "\n".join(lines)


def summary(trajectory):
    """One line per compared run and group: the gaps it is judged by (1-step for float32 runs, free
    run for float64 ones), the worst relative to its bound, the bound there, PASS or FAIL."""
    lines = [f"{'framework':<12} {'dtype':<8} {'judged by':<9} {'group':<19} {'worst gap':>10} {'at step':>7} "
             f"{'bound':>9}  status"]
    for info in trajectory.compared():
        for group in GROUPS:
            ratios = [(trajectory.judged(i, info.label)[group] / trajectory.bounds[i][info.label][group], i)
                      for i in range(len(trajectory.gaps))]
            _, worst = max(ratios)
            gap, bound = trajectory.judged(worst, info.label)[group], trajectory.bounds[worst][info.label][group]
            lines.append(f"{info.label:<12} {info.dtype:<8} {'1 step' if restarted(info) else 'free run':<9} "
                         f"{group:<19} {gap:>10.2e} {worst + 1:>7} {bound:>9.1e}  {'PASS' if gap <= bound else 'FAIL'}")
    return "\n".join(lines)


def as_json(trajectory, settings):
    """The run as JSON-ready data: settings, runs, per-step gaps (free-running and restarted), bounds and
    noise (each member's, the envelope, the restarted one-step noise)."""
    return {**settings,
            "runs": [{"label": info.label, "framework": info.framework, "dtype": info.dtype,
                      "float64_fallback": info.fallback or None, "role": info.role,
                      **({"judged_by": "restarted" if restarted(info) else "free-running"}
                         if info.role == "compared" else {})}
                     for info in trajectory.runs],
            "noise": noise_runs(trajectory),
            "restarted": restart_runs(trajectory) or None,
            "steps": [{"step": i + 1, "loss": trajectory.losses[i], "gaps": trajectory.gaps[i],
                       "restarted_gaps": trajectory.restarted_gaps[i], "bounds": trajectory.bounds[i],
                       "noise": trajectory.noise[i], "noise_members": trajectory.noise_members[i],
                       "restart_noise": trajectory.restart_noise[i] or None,
                       "restart_noise_members": trajectory.restart_noise_members[i] or None}
                      for i in range(len(trajectory.losses))],
            "failures": [dict(zip(("step", "framework", "group", "gap", "bound"), failure))
                         for failure in trajectory.failures()],
            "passed": not trajectory.failures()}


def plot(trajectory, path):
    """Per step on log axes: every compared run's free-running gaps, a float32 run's 1-step gaps, the
    bound of the gaps each is judged by, the noise envelope and the 1-step noise."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steps = np.arange(1, len(trajectory.gaps) + 1)
    tiny = 1e-18  # a gap of exactly 0 has no place on a log axis
    figure, axes = pyplot.subplots(1, len(GROUPS), figsize=(5 * len(GROUPS), 4), sharey=True)
    for axis, group in zip(axes, GROUPS):
        for info in trajectory.compared():
            label = info.label
            line, = axis.semilogy(steps, [max(g[label][group], tiny) for g in trajectory.gaps], label=label)
            if restarted(info):
                axis.semilogy(steps, [max(g[label][group], tiny) for g in trajectory.restarted_gaps], "-.",
                              color=line.get_color(), label=f"{label} 1-step")
            axis.semilogy(steps, [b[label][group] for b in trajectory.bounds], ":", color=line.get_color(),
                          label=f"{label} {'1-step ' if restarted(info) else ''}bound")
        axis.semilogy(steps, [max(n[group], tiny) for n in trajectory.noise], "k--",
                      label=f"noise ({len(trajectory.noise_members[0])} {trajectory.runs[0].framework} float32 runs)")
        if trajectory.restart_noise[0]:
            axis.semilogy(steps, [max(n[group], tiny) for n in trajectory.restart_noise], "k-.",
                          label=f"1-step noise ({len(trajectory.restart_noise_members[0])} runs)")
        axis.set_title(group)
        axis.set_xlabel("step")
    axes[0].set_ylabel(f"relative gap to {trajectory.runs[0].label}")
    axes[-1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)


def add_arguments(parser):
    """Add ``rbn trajectory``'s options to ``parser``."""
    parser.add_argument("--arch", default="resnet20", help="zoo architecture (default: resnet20)")
    parser.add_argument("--frameworks", default=",".join(frameworks.names()),
                        help="comma-separated; gaps are to the first (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="training steps (default: 50)")
    parser.add_argument("--dtype", choices=DTYPES, default="float64", help="default: float64")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="momentum",
                        help="sgd: momentum 0; momentum: 0.9; weight decay 5e-4 in both (default: momentum)")
    parser.add_argument("--lr", type=float, default=0.02, help="constant learning rate (default: 0.02)")
    parser.add_argument("--batch-size", type=int, default=16, help="default: 16")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start and the batches (default: 0)")
    parser.add_argument("--out", default="trajectory",
                        help="directory for trajectory.png, trajectory.json and the start checkpoint "
                             "start.safetensors (default: ./trajectory)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")


def command(args):
    """``rbn trajectory``: exit status 0 when every gap is within its bound, 1 if not, 2 on bad input."""
    names = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    try:
        check_arguments(args.arch, names, args.steps, args.out)
        if not 2 <= args.batch_size <= 256 or not args.lr > 0:
            raise TrajectoryError(f"expected 2 <= --batch-size <= 256 and --lr > 0 (got {args.batch_size}, {args.lr})")
    except TrajectoryError as error:
        print(f"rbn trajectory: error: {error}", file=sys.stderr)
        return 2
    settings = {"arch": args.arch, "frameworks": names, "steps": args.steps, "dtype": args.dtype,
                "optimizer": args.optimizer, "momentum": OPTIMIZERS[args.optimizer][0],
                "weight_decay": OPTIMIZERS[args.optimizer][1], "lr": args.lr, "batch_size": args.batch_size,
                "seed": args.seed}

    def report(step, trajectory):
        if args.json:
            return
        if step == 1:
            print(header(trajectory, args.dtype, args.optimizer))
        print(format_row(step_row(step, trajectory)), flush=True)

    try:
        trajectory = run(args.arch, names, args.steps, args.dtype, args.optimizer, args.lr, args.batch_size, args.seed,
                         report)
    except TrajectoryError as error:
        print(f"rbn trajectory: error: {error}", file=sys.stderr)
        return 2
    document = as_json(trajectory, settings)
    os.makedirs(args.out, exist_ok=True)
    with atomic_output(os.path.join(args.out, "start.safetensors"), force=True) as path:
        checkpoint.write_checkpoint(path, trajectory.start)
    with atomic_output(os.path.join(args.out, "trajectory.json"), force=True) as path, open(path, "w") as stream:
        json.dump(document, stream, indent=2)
    with atomic_output(os.path.join(args.out, "trajectory.png"), force=True) as path:
        plot(trajectory, path)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print()
        print(summary(trajectory))
    failures = trajectory.failures()
    for step, label, group, gap, bound in failures[:5]:
        print(f"rbn trajectory: {label} {group} at step {step}: gap {gap:.2e} above its bound {bound:.2e}",
              file=sys.stderr)
    print(f"rbn trajectory: wrote {args.out}/trajectory.png, trajectory.json, start.safetensors; "
          f"{'FAIL' if failures else 'PASS'}", file=sys.stderr)
    return 1 if failures else 0
