"""rbn_mindspore in GRAPH_MODE: the whole parity grid compiled, bad input at compile time.

PyNative and ``ms.jit`` on a function (inside PyNative) are in test_mindspore.py.
"""

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor  # noqa: E402
from rbn_reference import parity  # noqa: E402

from rbn_mindspore import RepresentativeBatchNorm2d  # noqa: E402
from rbn_mindspore.parity import run_module  # noqa: E402


@pytest.fixture(autouse=True)
def graph_mode_in_tmp_cwd(tmp_path, monkeypatch):
    """GRAPH_MODE for the test, PyNative again after; a scratch cwd for ./rank_0 (compile errors)."""
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("case", parity.CASES, ids=str)
def test_parity_graph_mode(case, dtype, mode):
    parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))


@pytest.mark.parametrize("layer, shape, message", [
    (RepresentativeBatchNorm2d(3), (2, 3, 4), "expected 4D input (got 3D input)"),
    (RepresentativeBatchNorm2d(3), (2, 5, 4, 4), "expected 3 channels (got 5)"),
], ids=["ndim", "channels"])
def test_bad_input_raises_at_compile_time(layer, shape, message):
    with pytest.raises(ValueError) as error:
        layer(Tensor(np.ones(shape, np.float32)))
    # Graph mode quotes the message and appends its compile traceback.
    assert str(error.value).splitlines()[0] == repr(message)
