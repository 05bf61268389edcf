"""rbn_mindspore in GRAPH_MODE: the whole parity grid compiled, bad input at compile time.

PyNative and ``ms.jit`` on a function (inside PyNative) are in test_mindspore.py.
"""

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import Tensor, nn, ops  # noqa: E402
from rbn_reference import parity  # noqa: E402
from test_mindspore import assert_close, random_layer  # noqa: E402
from test_mindspore_cpu_kernels import kernel_choice  # noqa: E402

from rbn_mindspore import RepresentativeBatchNorm2d  # noqa: E402
from rbn_mindspore.functional import _channel_statistics_kernel, _LayerKernel  # noqa: E402
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


@pytest.mark.parametrize("kernels", ["layer", "primitive"])
def test_layers_share_the_kernel_not_their_values(kernels):
    """Three layers of one shape in one Graph-mode network keep their own parameters, outputs and
    gradients: the same as the layers run one op at a time in PyNative. On the whole-layer CPU
    kernels (two Custom nodes a layer) and on the split kernels (here the BatchNorm-primitive
    ones; the fused passes take the same route under synchronized statistics), whose two compiled
    functions are subgraphs that every layer calls (``ms.no_inline`` on their ``ms.jit`` wrappers,
    which the graph parser reads; not on the functions, which PyNative's top-level compile reads,
    see ``_ChannelStatisticsKernel._compile``)."""
    with kernel_choice(primitive=kernels == "primitive"):
        kernel = _channel_statistics_kernel(1e-5, "mu_c", "mu_c", True, True)
        if kernels == "primitive":
            assert kernel.forward.no_inline and kernel.backward.no_inline
            assert not hasattr(kernel.forward.__wrapped__, "no_inline")
        else:
            assert isinstance(kernel, _LayerKernel)
        x = Tensor(np.random.default_rng(3).standard_normal((4, 3, 5, 5)).astype(np.float32) + 4)
        results = []
        for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
            ms.set_context(mode=mode)
            net = nn.SequentialCell([random_layer(RepresentativeBatchNorm2d(3), seed) for seed in range(3)]).set_train()
            weights = net.trainable_params()

            def loss(x):
                return (net(x) * ops.arange(x.size, dtype=x.dtype).reshape(x.shape)).sum()

            step = ms.value_and_grad(loss, 0, weights)
            value, (grad_x, grads) = (ms.jit(step) if mode == ms.GRAPH_MODE else step)(x)
            results.append([value, grad_x, *grads, *[layer.moving_variance for layer in net]])
    for graph, pynative in zip(*results):
        assert_close(graph.asnumpy(), pynative.asnumpy().astype(np.float64), "float32")
