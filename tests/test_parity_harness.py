"""The shared parity harness and `rbn parity` catch what they are there to catch."""

import json

import numpy as np
import pytest

from rbn import cli, frameworks
from rbn_reference import parity
from rbn_reference.parity import run_reference

CASE = next(case for case in parity.CASES if case.id == "2d-mu_c-sigma_c")


def faithful(x, params, state, dy, **kwargs):
    """An adapter that computes in float64 and returns each array in the dtype it came in, as a
    framework would (float16 output and input gradient, float32 parameters, for float16 input)."""
    result = run_reference(x, params, state, dy, **kwargs)
    as_input = {"x": x.dtype, **{name: value.dtype for name, value in params.items()}}
    grads = {name: np.asarray(value).astype(as_input[name]) for name, value in result["grads"].items()}
    new_state = result["state"]
    if new_state is not None:
        new_state = {name: value if name == "num_batches_tracked" else value.astype(state[name].dtype)
                     for name, value in new_state.items()}
    return {"y": result["y"].astype(x.dtype), "grads": grads, "state": new_state}


def broken(change):
    def adapter(*args, **kwargs):
        result = faithful(*args, **kwargs)
        change(result)
        return result
    return adapter


def perturb_y(result):
    result["y"] = result["y"] * (1 + 1e-3)


def drop_grad(result):
    del result["grads"]["scale_bias"]


def float32_y(result):
    result["y"] = result["y"].astype(np.float32)


def no_running_update(result):
    result["state"]["num_batches_tracked"] = result["state"]["num_batches_tracked"] - 1


@pytest.mark.parametrize("dtype", parity.DTYPES + parity.MIXED_DTYPES)
@pytest.mark.parametrize("mode", parity.MODES)
def test_faithful_adapter_passes(dtype, mode):
    parity.assert_checks(parity.check_case(faithful, CASE, dtype, mode == "train"))


def test_float16_case_keeps_parameters_in_float32():
    x, params, state, dy = CASE.arrays("float16")
    assert x.dtype == dy.dtype == np.float16
    assert {value.dtype for value in params.values()} | {state["running_var"].dtype} == {np.dtype(np.float32)}


def test_float16_statistics_fail_the_float16_tolerance():
    """The float16 row allows the output's one rounding, not statistics computed in float16."""
    case = next(case for case in parity.CASES if case.id == "2d-batchnorm")

    def float16_batchnorm(x, params, state, dy, **kwargs):
        result = faithful(x, params, state, dy, **kwargs)
        half, axes = np.float16, (0, 2, 3)
        count = half(x.size // x.shape[1])
        mean = np.add.reduce(x, axis=axes, dtype=half, keepdims=True) / count
        var = np.add.reduce((x - mean) * (x - mean), axis=axes, dtype=half, keepdims=True) / count
        weight, bias = (params[name].astype(half).reshape(1, -1, 1, 1) for name in ("weight", "bias"))
        result["y"] = ((x - mean) / np.sqrt(var + half(kwargs["eps"])) * weight + bias).astype(half)
        return result
    y_check = parity.check_case(faithful, case, "float16", True)[0]
    assert y_check.passed
    y_check = parity.check_case(float16_batchnorm, case, "float16", True)[0]
    assert y_check.name == f"{case.id} train y" and not y_check.passed


def test_float32_parameter_gradient_expected_for_float16_input():
    def float16_parameters(result):
        result["grads"]["weight"] = result["grads"]["weight"].astype(np.float16)
    checks = parity.check_case(broken(float16_parameters), CASE, "float16", True)
    assert [check.detail for check in checks if not check.passed] == ["dtype float16, expected float32"]


@pytest.mark.parametrize("change, failing", [
    (perturb_y, "y"), (drop_grad, "grad scale_bias"), (float32_y, "y"), (no_running_update, "num_batches_tracked"),
])
def test_each_kind_of_error_fails_with_its_worst_element(change, failing):
    checks = parity.check_case(broken(change), CASE, "float64", True)
    failed = [check for check in checks if not check.passed]
    assert [check.name for check in failed] == [f"{CASE.id} train {failing}"]
    with pytest.raises(AssertionError, match=f"{failing} \\[float64\\]: FAIL"):
        parity.assert_checks(checks)


def test_float32_accuracy_fails_the_float64_tolerance():
    def rounded(x, params, state, dy, **kwargs):
        result = faithful(x.astype(np.float32), params, state, dy, **kwargs)
        result["y"] = result["y"].astype(np.float64)
        return result
    y_check = parity.check_case(rounded, CASE, "float64", True)[0]
    assert y_check.name == f"{CASE.id} train y" and not y_check.passed
    assert 1e-9 < y_check.max_rel < 1e-5 and "got" in y_check.detail


def test_worst_element_is_reported_with_both_values():
    def one_wrong(result):
        result["grads"]["x"][1, 2, 3, 0] += 0.5
    checks = parity.check_case(broken(one_wrong), CASE, "float64", False)
    check = next(check for check in checks if not check.passed)
    assert "worst at (1, 2, 3, 0)" in check.detail
    assert check.max_abs == pytest.approx(0.5)


@pytest.fixture
def fake_frameworks(tmp_path, monkeypatch):
    """Two adapters on numpy (installed) and one framework that is not installed."""
    (tmp_path / "good_adapter.py").write_text(
        "from test_parity_harness import faithful as run_module\nFRAMEWORK='good'\ndef version(): return '1.0'\n")
    (tmp_path / "bad_adapter.py").write_text(
        "from test_parity_harness import broken, perturb_y\nrun_module = broken(perturb_y)\n"
        "FRAMEWORK='bad'\ndef version(): return '0.1'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(frameworks, "FRAMEWORKS", (
        frameworks.Framework("numpy", "numpy", "good_adapter", ""),
        frameworks.Framework("json", "json", "bad_adapter", ""),
        frameworks.Framework("no_such_framework_here", "", "x", "")))
    monkeypatch.setattr(cli, "reference_rows", lambda full: [])  # the oracle's own rows are tested above
    monkeypatch.setattr(parity, "CASES", (CASE,))


def test_cli_reports_pass_fail_and_not_installed(fake_frameworks, capsys):
    assert cli.main(["parity", "--framework", "numpy", "--framework", "no_such_framework_here"]) == 0
    table = capsys.readouterr().out
    assert "not installed" in table
    for group in cli.FRAMEWORK_GROUPS:
        assert any(group in line and "PASS" in line and "float32" in line for line in table.splitlines())
    assert cli.main(["parity", "--framework", "json"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_json_is_written_atomically(fake_frameworks, tmp_path, capsys):
    target = tmp_path / "report.json"
    assert cli.main(["parity", "--framework", "numpy", "--dtype", "float64", "--json", str(target)]) == 0
    rows = json.loads(target.read_text())
    assert {row["check"] for row in rows} == set(cli.FRAMEWORK_GROUPS)
    assert all(row["status"] == "PASS" and row["dtype"] == "float64" for row in rows)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".report")] == []


def test_reference_rows_are_the_finite_difference_self_check():
    rows = cli.reference_rows()
    assert [row.check for row in rows] == list(cli.REFERENCE_GROUPS)
    assert all(row.status == "PASS" and row.max_rel < 1e-6 for row in rows)


def test_representative_cases_cover_every_path():
    cases = parity.cases(full=False)
    assert len(cases) == len(parity.REPRESENTATIVE_CASES) < len(parity.CASES)
    assert {len(case.shape) for case in cases} == {len(case.shape) for case in parity.CASES}
    statistics = {stat for case in cases for stat in (case.centering_stat, case.scaling_stat)}
    assert {"mu_c", "sigma_c", "mu_s", "sigma_s"} <= statistics
    for field in ("affine", "centering", "scaling", "track_running_stats"):
        assert {getattr(case, field) for case in cases} == {True, False}, field
    assert {case.momentum for case in cases} == {0.1, None}


def test_cli_runs_the_representative_cases_unless_full(monkeypatch):
    seen = []

    def counting(x, *args, **kwargs):
        seen.append(x.shape)
        return faithful(x, *args, **kwargs)
    monkeypatch.setattr(cli.frameworks, "import_module",
                        lambda *args: type("Adapter", (), {"run_module": staticmethod(counting),
                                                           "version": staticmethod(lambda: "1.0")}))
    framework = frameworks.Framework("numpy", "numpy", "unused", "")
    for full, expected in ((False, parity.cases(full=False)), (True, parity.CASES)):
        seen.clear()
        rows = cli.framework_rows(framework, ("float64",), full)
        assert len(seen) == len(expected) * len(parity.MODES)
        assert {row.cases for row in rows if row.check == "forward (train)"} == {len(expected)}
    assert cli.build_parser().parse_args(["parity", "--full"]).full
    assert not cli.build_parser().parse_args(["parity"]).full
