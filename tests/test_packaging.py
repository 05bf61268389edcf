"""Import hygiene: the oracle imports no framework; a framework package needs only its own."""

import importlib.util
import pathlib
import subprocess
import sys
import zipfile

import pytest

FRAMEWORKS = {"torch": "rbn_torch", "jittor": "rbn_jittor", "mindspore": "rbn_mindspore"}


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_reference_imports_no_framework():
    result = run_python(
        "import sys, rbn_reference, rbn_reference.parity, rbn, rbn.cli, rbn.checkpoint, rbn.frameworks\n"
        f"print(sorted(set({list(FRAMEWORKS)!r}) & set(sys.modules)))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_framework_package_imports_without_the_other_frameworks(framework):
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed")
    others = [name for name in FRAMEWORKS if name != framework]
    # A None entry in sys.modules makes `import name` raise ImportError, as if not installed.
    result = run_python(
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in others)
        + f"import {FRAMEWORKS[framework]} as package\n"
        "layer = package.RepresentativeBatchNorm2d(4)\n"
        f"print(sorted(set({others!r}) & {{name for name, module in sys.modules.items() if module}}))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).with_name("rbn")
    result = subprocess.run([str(script), "parity", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout and "--framework" in result.stdout


def test_wheel_ships_the_mindspore_kernel_source(tmp_path):
    """rbn_mindspore compiles cpu_kernels.cc on first use: an installed wheel needs the source."""
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--quiet", "--wheel-dir", str(tmp_path), str(root)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("rbn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "rbn_mindspore/cpu_kernels.cc" in archive.namelist()
