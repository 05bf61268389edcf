"""rbn_mindspore's fused CPU kernels (cpu_kernels.cc through ops.Custom) and the fallback to
MindSpore's BatchNorm primitive: each pass against NumPy, the choice of the whole-layer kernels
and their eps, the build cache, the fallback's parity with the oracle in PyNative and Graph mode.

The main parity grid (test_mindspore.py, test_mindspore_graph.py) runs on the whole-layer
kernels; the synchronized tests (test_mindspore_sync.py) on the split ones.
"""

import contextlib
import itertools
import os
import stat

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402

from rbn_mindspore import cpu_kernels, functional  # noqa: E402
from rbn_mindspore.parity import run_module  # noqa: E402

CHANNEL_STATISTICS = ("mu_c", "sigma_c")
CHANNEL_CASES = [case for case in parity.CASES
                 if (not case.centering or case.centering_stat in CHANNEL_STATISTICS)
                 and (not case.scaling or case.scaling_stat in CHANNEL_STATISTICS)]


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


def _forget_kernel_choice():
    cpu_kernels.instance_kernels.cache_clear()
    functional._channel_statistics_kernel.cache_clear()


@contextlib.contextmanager
def kernel_choice(primitive=False):
    """Within the block the per-process choice of kernels is made afresh: on MindSpore's BatchNorm
    primitive (as without a compiler) if `primitive`, else as the environment says; after it, afresh
    again, with the environment as it was."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            if primitive:
                patch.setenv(cpu_kernels.ENVIRONMENT_SWITCH, "0")
            _forget_kernel_choice()
            yield
    finally:
        _forget_kernel_choice()


@pytest.fixture
def fresh_kernel_choice():
    """Forget the per-process choice of kernels before and after the test."""
    with kernel_choice():
        yield


@pytest.fixture
def primitive_path():
    """The channel path on MindSpore's BatchNorm primitive, as without a compiler."""
    with kernel_choice(primitive=True):
        yield


def assert_close(name, got, want, dtype, offset_ratio=0.0):
    check = parity.compare("kernel", name, got.asnumpy(), want, dtype, tolerance(dtype, offset_ratio))
    assert check.passed, str(check)


# ----------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("rows, cols", [(6, 37), (1, 1000), (40, 1), (512, 512)])
def test_each_pass_matches_numpy(dtype, rows, cols):
    """Rows far from 0 (mean ~1e4): the kernels center before they scale or square. (512, 512) is
    2^18 values, where the passes go parallel (OpenMP); the smaller ones run in one thread."""
    kernels = cpu_kernels.instance_kernels()
    assert kernels is not None, "the CPU kernels should build on this machine (g++)"
    rng = np.random.default_rng(7)
    offset = 1e4
    x = (offset + rng.standard_normal((rows, 1)) + rng.standard_normal((rows, cols))).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    a, b, p, q, r = (rng.standard_normal(rows).astype(dtype) for _ in range(5))
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    want_mean = x64.mean(axis=1)
    centered = x64 - want_mean[:, None]

    mean, var = kernels.moments(Tensor(x))
    assert_close("mean", mean, want_mean, dtype, offset_ratio=offset)
    assert_close("var", var, centered.var(axis=1), dtype)
    # The remaining passes take the float64 means, rounded to dtype, as the layer passes its own.
    mean = Tensor(want_mean.astype(dtype))
    centered = x64 - want_mean.astype(dtype).astype(np.float64)[:, None]
    assert_close("affine", kernels.affine(Tensor(x), mean, Tensor(a), Tensor(b)),
                 a[:, None] * centered + b[:, None], dtype)
    sum_dy, sum_dy_centered = kernels.sums(Tensor(dy), Tensor(x), mean)
    assert_close("sum dy", sum_dy, dy64.sum(axis=1), dtype)
    assert_close("sum dy * centered", sum_dy_centered, (dy64 * centered).sum(axis=1), dtype)
    assert_close("combine", kernels.combine(Tensor(dy), Tensor(x), mean, Tensor(p), Tensor(q), Tensor(r)),
                 p[:, None] * dy64 + q[:, None] * centered + r[:, None], dtype)


def test_kernel_refuses_what_it_cannot_read():
    """The C side checks the rank (a (rows, cols) view) and fails loudly instead of misreading."""
    with pytest.raises(RuntimeError, match="RbnInstanceMoments"):
        cpu_kernels.instance_kernels().moments(Tensor(np.ones((2, 3, 4), np.float32)))[0].asnumpy()


def test_layer_uses_the_kernels_on_cpu():
    """One process: the whole-layer kernels, in every choice of statistics (the parity grid then
    runs on them); a communication group: the passes, with the AllReduce between them."""
    for centering, scaling, scaling_on, training in itertools.product(CHANNEL_STATISTICS, CHANNEL_STATISTICS,
                                                                      (True, False), (True, False)):
        kernel = functional._channel_statistics_kernel(1e-5, centering, scaling, scaling_on, training)
        assert isinstance(kernel, functional._LayerKernel)
    assert isinstance(functional._channel_statistics_kernel(1e-5, "mu_c", "mu_c", True, True, "a group"),
                      functional._FusedChannelKernel)


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("statistic", CHANNEL_STATISTICS)
def test_layer_kernels_take_eps_where_it_matters(statistic, dtype, mode):
    """eps travels to the whole-layer kernels as a tensor in the input's dtype: with eps 0.5 against
    instance variances ~0.01, a misread eps is far outside the tolerance (the grid's 1e-5 is not)."""
    case = parity.Case(f"2d-{statistic}-{statistic}-eps", (3, 4, 5, 4), statistic, statistic, eps=0.5,
                       scale_factor=0.2)
    parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))


# ----------------------------------------------------------------------------- building


def test_build_caches_the_library_and_leaves_no_temporaries(tmp_path, monkeypatch):
    monkeypatch.setenv("RBN_CACHE_DIR", str(tmp_path / "cache"))
    library = cpu_kernels.build()
    assert library.parent == tmp_path / "cache" and library.suffix == ".so"
    built = library.stat().st_mtime_ns
    assert cpu_kernels.build() == library
    assert library.stat().st_mtime_ns == built, "a cached library must not be rebuilt"
    assert os.listdir(library.parent) == [library.name]


def fake_compiler(directory, compile_output):
    """A 'compiler' that answers --version and fails every compile with ``compile_output``."""
    path = directory / "fake-cxx"
    path.write_text("#!/bin/sh\n"
                    'if [ "$1" = "--version" ]; then echo "fake 1.0"; exit 0; fi\n'
                    f'echo "{compile_output}" >&2\nexit 1\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_failed_compile_raises_with_compiler_output_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RBN_CACHE_DIR", str(tmp_path / "cache"))
    compiler = fake_compiler(tmp_path, "cpu_kernels.cc:1: error: no omp.h")
    with pytest.raises(RuntimeError, match=r"compiling cpu_kernels.cc with .*fake-cxx failed:\n.*no omp.h"):
        cpu_kernels.build(str(compiler))
    assert os.listdir(tmp_path / "cache") == []


def test_missing_compiler_is_named():
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler 'no-such-c\+\+' on PATH \(set CXX\)"):
        cpu_kernels.build("no-such-c++")


def test_without_compiler_the_layer_warns_once_and_falls_back(fresh_kernel_choice, tmp_path, monkeypatch):
    monkeypatch.setenv("RBN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.warns(RuntimeWarning, match="CPU kernels unavailable, using MindSpore's BatchNorm primitive"):
        assert cpu_kernels.instance_kernels() is None
    assert isinstance(functional._channel_statistics_kernel(1e-5, "mu_c", "mu_c", True, True),
                      functional._PrimitiveChannelKernel)


def test_environment_switch_turns_the_kernels_off(primitive_path):
    assert cpu_kernels.instance_kernels() is None
    assert isinstance(functional._channel_statistics_kernel(1e-5, "mu_c", "mu_c", True, True),
                      functional._PrimitiveChannelKernel)


# ----------------------------------------------------------------------------- the fallback's parity


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("case", CHANNEL_CASES, ids=str)
def test_primitive_path_parity(case, dtype, mode, primitive_path):
    parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("case", [case for case in CHANNEL_CASES if case.id in ("2d-mu_c-mu_c", "3d-mu_c-mu_c")],
                         ids=str)
def test_primitive_path_parity_graph_mode(case, mode, primitive_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        parity.assert_checks(parity.check_case(run_module, case, "float32", mode == "train"))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
