"""rbn_torch: parity with the NumPy oracle, BatchNorm equivalence, conversion, checkpoints, bad input."""

import copy
import pickle
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rbn_reference  # noqa: E402
from rbn_reference import parity  # noqa: E402
from tolerances import tolerance  # noqa: E402
from torch import nn  # noqa: E402

import rbn_torch  # noqa: E402
from rbn_torch import (RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d,  # noqa: E402
                       convert_bn_to_rbn, load_numpy_state_dict, state_dict_to_numpy)
from rbn_torch.functional import representative_batch_norm  # noqa: E402
from rbn_torch.parity import run_module  # noqa: E402


def assert_close(got, want, dtype="float64"):
    """``got`` against ``want`` with the project's tolerance for ``dtype``."""
    check = parity.compare("value", "value", np.asarray(got.detach(), dtype=dtype), np.asarray(want.detach()),
                           dtype, tolerance(dtype))
    assert check.passed, str(check)


def random_layer(layer, seed=0):
    """Move every parameter away from its init so that each term of Eq. 12 matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.copy_(torch.rand(param.shape, generator=generator, dtype=param.dtype) - 0.5
                        + (1.0 if name in ("weight", "scale_bias") else 0.0))
    return layer


def oracle_parameters(layer):
    """The layer's parameters as the oracle takes them: canonical names, float64 arrays."""
    return {name: value.astype(np.float64) for name, value in state_dict_to_numpy(layer).items()
            if name in dict(layer.named_parameters())}


# ----------------------------------------------------------------------------- parity with the oracle


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("dtype", parity.DTYPES + parity.MIXED_DTYPES)
@pytest.mark.parametrize("case", parity.CASES, ids=str)
def test_parity(case, dtype, mode):
    parity.assert_checks(parity.check_case(run_module, case, dtype, mode == "train"))


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("case", parity.CASES, ids=str)
def test_parity_of_the_traced_path(case, mode, monkeypatch):
    """Under torch.compile/export the channel path is plain ops differentiated by autograd."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    parity.assert_checks(parity.check_case(run_module, case, "float64", mode == "train"))


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("case", parity.CASES, ids=str)
def test_forward_without_autograd_matches_oracle(case, mode):
    """Without autograd the channel path runs as plain ops (the path torch.compile traces)."""
    x, params, state, _ = case.arrays("float64")
    training = mode == "train"
    want, want_state, _ = rbn_reference.forward(x, params, state, training=training, momentum=case.momentum or 0.5,
                                                eps=case.eps, centering_stat=case.centering_stat,
                                                scaling_stat=case.scaling_stat)
    tensors = {name: torch.from_numpy(value) for name, value in {**params, **(state or {})}.items()}
    with torch.no_grad():
        y = representative_batch_norm(
            torch.from_numpy(x), tensors.get("running_mean"), tensors.get("running_var"),
            **{name: tensors.get(name) for name in rbn_reference.PARAM_NAMES}, training=training, momentum=case.momentum or 0.5, eps=case.eps, centering_stat=case.centering_stat,
            scaling_stat=case.scaling_stat)
    assert_close(y, torch.from_numpy(want))
    if state is not None:
        assert_close(tensors["running_var"], torch.from_numpy(want_state["running_var"]))


@pytest.mark.parametrize("centering_stat, scaling_stat", [("mu_c", "mu_c"), ("sigma_c", "sigma_c"),
                                                          ("mu_s", "sigma_s")])
@pytest.mark.parametrize("mode", parity.MODES)
def test_gradcheck_and_gradgradcheck(centering_stat, scaling_stat, mode):
    layer = random_layer(RepresentativeBatchNorm2d(3, dtype=torch.float64, centering_stat=centering_stat,
                                                   scaling_stat=scaling_stat))
    layer.train(mode == "train")
    x = (torch.randn(2, 3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 3)
    params = list(layer.parameters())
    x.requires_grad_()

    def fn(x, *values):
        return torch.func.functional_call(layer, dict(zip(dict(layer.named_parameters()), values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


def test_large_mean_float32_input_matches_float64_oracle():
    """mean 1e4, std 1: stable moments keep float32 within the offset-widened tolerance."""
    generator = np.random.default_rng(3)
    x = 1e4 + generator.standard_normal((4, 3, 5, 5))
    layer = random_layer(RepresentativeBatchNorm2d(3))
    params = oracle_parameters(layer)
    want, _, _ = rbn_reference.forward(x, params, None, training=True)
    y = layer(torch.from_numpy(x.astype(np.float32)))
    check = parity.compare("y", "y", y.detach().numpy(), want, "float32", tolerance("float32", offset_ratio=1e4))
    assert check.passed, str(check)
    assert check.max_abs < 0.1


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("ratio", [0.0, 3.9, 4.1, 1000.0])
def test_instances_on_either_side_of_the_one_pass_variance_match_the_oracle(ratio, grad):
    """Forward moments: the one-reduction variance up to |mean| / std = 4, the exact form beyond.

    Every instance of the float32 input has the same mean and std, so all take the same side of
    ``_ONE_PASS_RATIO`` and the batch variance is theirs (``sigma_c`` reads it too); the output
    and the input gradient meet the float64 oracle. At 1000 the one-reduction variance would be
    ~10% off (eps * 1000**2).
    """
    from rbn_torch import functional

    generator = np.random.default_rng(4)
    x = generator.standard_normal((4, 3, 6, 6))
    x = (x - x.mean((2, 3), keepdims=True)) / x.std((2, 3), keepdims=True)
    x = (x + ratio).astype(np.float32).astype(np.float64)
    assert (ratio > functional._ONE_PASS_RATIO) == (ratio > 4)
    dy = generator.standard_normal(x.shape)
    layer = random_layer(RepresentativeBatchNorm2d(3, scaling_stat="sigma_c"))
    params = oracle_parameters(layer)
    want, _, cache = rbn_reference.forward(x, params, None, training=True, scaling_stat="sigma_c")
    bound = tolerance("float32", offset_ratio=ratio)
    x32 = torch.from_numpy(x.astype(np.float32)).requires_grad_(grad)
    y = layer(x32)
    check = parity.compare("y", "y", y.detach().numpy(), want, "float32", bound)
    assert check.passed, str(check)
    if grad:
        y.backward(torch.from_numpy(dy.astype(np.float32)))
        want_dx = rbn_reference.backward(dy, cache)["x"]
        check = parity.compare("x", "x", x32.grad.numpy(), want_dx, "float32", bound)
        assert check.passed, str(check)


@pytest.mark.parametrize("two_pass_values", [0, None], ids=["batchnorm_kernel", "two_passes"])
def test_either_form_of_the_affine_pass_matches_the_oracle(two_pass_values, monkeypatch):
    """The output pass and the input gradient's pass (``_affine``) in both forms: BatchNorm's
    inference kernel beyond ``_TWO_PASS_VALUES`` values, two vectorised passes up to it."""
    from rbn_torch import functional

    if two_pass_values is not None:
        monkeypatch.setattr(functional, "_TWO_PASS_VALUES", two_pass_values)
    generator = np.random.default_rng(5)
    x = (generator.standard_normal((4, 3, 6, 6)) + 3).astype(np.float32).astype(np.float64)
    assert (x.size <= functional._TWO_PASS_VALUES) == (two_pass_values is None)
    dy = generator.standard_normal(x.shape)
    layer = random_layer(RepresentativeBatchNorm2d(3))
    params = oracle_parameters(layer)
    want, _, cache = rbn_reference.forward(x, params, None, training=True)
    bound = tolerance("float32", offset_ratio=(np.abs(x.mean((2, 3))) / x.std((2, 3))).max())
    x32 = torch.from_numpy(x.astype(np.float32)).requires_grad_()
    y = layer(x32)
    y.backward(torch.from_numpy(dy.astype(np.float32)))
    for name, got, expected in (("y", y.detach().numpy(), want), ("x", x32.grad.numpy(),
                                                                   rbn_reference.backward(dy, cache)["x"])):
        check = parity.compare(name, name, got, expected, "float32", bound)
        assert check.passed, str(check)


# ----------------------------------------------------------------------------- nn.BatchNorm equivalence


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("bn_class, rbn_class, shape", [
    (nn.BatchNorm1d, RepresentativeBatchNorm1d, (6, 3)),
    (nn.BatchNorm1d, RepresentativeBatchNorm1d, (4, 3, 5)),
    (nn.BatchNorm2d, RepresentativeBatchNorm2d, (3, 3, 4, 5)),
    (nn.BatchNorm3d, RepresentativeBatchNorm3d, (2, 3, 2, 3, 4)),
], ids=["1d", "1d-len", "2d", "3d"])
def test_equals_batchnorm_with_calibrations_off(bn_class, rbn_class, shape, momentum):
    bn = random_layer(bn_class(3, momentum=momentum, dtype=torch.float64))
    rbn = rbn_class(3, momentum=momentum, dtype=torch.float64, centering=False, scaling=False)
    rbn.load_state_dict(bn.state_dict())
    x = 2 + torch.randn(shape, dtype=torch.float64)
    dy = torch.randn(shape, dtype=torch.float64)
    for _ in range(3):  # running statistics over several steps, then eval
        outputs = []
        for layer in (bn, rbn):
            inputs = x.clone().requires_grad_()
            y = layer(inputs)
            outputs.append((y, *torch.autograd.grad(y, [inputs, layer.weight, layer.bias], dy)))
        for got, want in zip(outputs[1], outputs[0]):
            assert_close(got, want)
    for name, value in bn.state_dict().items():
        assert torch.allclose(rbn.state_dict()[name], value, rtol=1e-12, atol=1e-12), name
    bn.eval(), rbn.eval()
    assert_close(rbn(x), bn(x))


def test_untracked_eval_uses_batch_statistics_like_batchnorm():
    bn = nn.BatchNorm2d(3, track_running_stats=False).eval()
    rbn = RepresentativeBatchNorm2d(3, track_running_stats=False, centering=False, scaling=False).eval()
    x = torch.randn(2, 3, 4, 4)
    assert rbn.running_mean is None and rbn.num_batches_tracked is None
    assert_close(rbn(x), bn(x), "float32")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_uses_float32_statistics(dtype):
    layer = random_layer(RepresentativeBatchNorm2d(3))
    x = 5 + torch.randn(4, 3, 4, 4)
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    want = copy.deepcopy(layer)(x.to(dtype).float())
    torch.testing.assert_close(y.float(), want.to(dtype).float())


# ----------------------------------------------------------------------------- module behaviour


def test_init_names_shapes_and_repr():
    layer = RepresentativeBatchNorm2d(4, momentum=None, scaling_stat="sigma_s")
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias", "center_weight", "scale_weight",
                                                               "scale_bias"]
    assert [name for name, _ in layer.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    values = {name: param.tolist() for name, param in layer.named_parameters()}
    assert values == {"weight": [1.0] * 4, "bias": [0.0] * 4, "center_weight": [0.0] * 4,
                      "scale_weight": [0.0] * 4, "scale_bias": [1.0] * 4}
    assert repr(layer) == ("RepresentativeBatchNorm2d(4, eps=1e-05, momentum=None, affine=True, bias=True, "
                           "track_running_stats=True, centering_stat='mu_c', scaling_stat='sigma_s')")
    off = RepresentativeBatchNorm1d(2, affine=False, centering=False, scaling=False)
    assert list(off.named_parameters()) == []
    assert repr(off).endswith("centering=False, scaling=False)")


def test_reset_parameters_and_running_stats():
    layer = random_layer(RepresentativeBatchNorm2d(3))
    layer(torch.randn(2, 3, 2, 2))
    layer.reset_running_stats()
    assert layer.running_mean.tolist() == [0.0] * 3 and layer.running_var.tolist() == [1.0] * 3
    assert layer.num_batches_tracked.item() == 0
    layer.reset_parameters()
    assert layer.scale_bias.tolist() == [1.0] * 3 and layer.center_weight.tolist() == [0.0] * 3
    assert layer.weight.tolist() == [1.0] * 3


@pytest.mark.parametrize("stats", [("mu_c", "mu_c"), ("mu_s", "sigma_s")], ids="-".join)
def test_input_not_modified(stats):
    layer = random_layer(RepresentativeBatchNorm2d(3, centering_stat=stats[0], scaling_stat=stats[1]))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    before = x.detach().clone()
    layer(x).sum().backward()
    with torch.no_grad():
        layer(x)
    assert torch.equal(x.detach(), before)


def test_fast_path_saves_only_the_input_and_per_instance_vectors():
    layer = RepresentativeBatchNorm2d(4)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        layer(x)
    others = [tensor for tensor in saved if tensor.data_ptr() != x.data_ptr()]
    assert len(others) < len(saved), "the input itself is saved"
    assert max(tensor.numel() for tensor in others) <= 2 * 4  # (N, C) vectors at most


def test_no_grad_inference_mode_deepcopy_and_pickle():
    layer = random_layer(RepresentativeBatchNorm2d(3)).eval()
    x = torch.randn(2, 3, 4, 4)
    want = layer(x)  # the differentiable plain-op path; without autograd the ATen moments kernel
    with torch.no_grad():
        assert_close(layer(x), want, "float32")
    with torch.inference_mode():
        assert_close(layer(x), want, "float32")
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(clone(x), want)
        assert clone.scaling_stat == "mu_c"


def test_torch_compile_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    eager = random_layer(RepresentativeBatchNorm2d(3))
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer)
    x = 3 + torch.randn(2, 3, 4, 4)
    dy = torch.randn(2, 3, 4, 4)
    results = []
    for layer, module in ((eager, eager), (compiled_layer, compiled)):
        inputs = x.clone().requires_grad_()
        y = module(inputs)
        results.append((y, *torch.autograd.grad(y, [inputs, *layer.parameters()], dy), layer.running_var))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "error::torch.jit.TracerWarning")
def test_torch_export_and_jit_trace():
    """Tracers record the plain-op form; torch.jit.script is not supported (docs/torch.md)."""
    layer = random_layer(RepresentativeBatchNorm2d(3))
    x = 3 + torch.randn(2, 3, 4, 4)
    exported = torch.export.export(copy.deepcopy(layer), (x,)).module()
    assert_close(exported(x), copy.deepcopy(layer)(x), "float32")
    layer.eval()
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    assert_close(traced(x), layer(x), "float32")


def test_sync_batchnorm_conversion_leaves_rbn_alone():
    """The trap of subclassing _BatchNorm: convert_sync_batchnorm would drop the calibrations."""
    net = nn.Sequential(RepresentativeBatchNorm2d(3))
    assert isinstance(nn.SyncBatchNorm.convert_sync_batchnorm(net)[0], RepresentativeBatchNorm2d)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("layer_class, shape, message", [
    (RepresentativeBatchNorm1d, (2, 3, 4, 4),
     "expected 2D or 3D input (got 4D input): use RepresentativeBatchNorm2d for (N, C, H, W) input"),
    (RepresentativeBatchNorm2d, (2, 3, 4), "expected 4D input (got 3D input): use RepresentativeBatchNorm1d for "
                                           "(N, C, L) input"),
    (RepresentativeBatchNorm3d, (2, 3, 4, 4), "expected 5D input (got 4D input): use RepresentativeBatchNorm2d for "
                                              "(N, C, H, W) input"),
    (RepresentativeBatchNorm2d, (2, 3, 4, 4, 4, 4), "expected 4D input (got 6D input): RBN takes (N, C, *) input "
                                                    "with 0 to 3 spatial dims"),
    (RepresentativeBatchNorm2d, (2, 5, 4, 4), "expected 3 channels (got 5): the layer was built with "
                                              "num_features=3; match it to the previous layer's output channels"),
])
def test_bad_input_shape(layer_class, shape, message):
    """nn.BatchNorm's wording (and ValueError, as its Python-side checks), then what to do."""
    with pytest.raises(ValueError) as error:
        layer_class(3)(torch.randn(shape))
    assert str(error.value) == message


@pytest.mark.parametrize("layer_class, shape", [(RepresentativeBatchNorm1d, (1, 3)),
                                                (RepresentativeBatchNorm2d, (1, 3, 1, 1)),
                                                (RepresentativeBatchNorm3d, (1, 3, 1, 1, 1))])
def test_single_value_per_channel_in_training_is_refused_like_batchnorm(layer_class, shape):
    """nn.BatchNorm's exception type and wording (torch prints the size as torch.Size)."""
    bn_class = {RepresentativeBatchNorm1d: nn.BatchNorm1d, RepresentativeBatchNorm2d: nn.BatchNorm2d,
                RepresentativeBatchNorm3d: nn.BatchNorm3d}[layer_class]
    with pytest.raises(ValueError, match=r"^Expected more than 1 value per channel when training, got input size"):
        bn_class(3)(torch.randn(shape))
    with pytest.raises(ValueError, match=r"^Expected more than 1 value per channel when training, got input size "
                                         + re.escape(str(shape))):
        layer_class(3)(torch.randn(shape))


def test_single_value_per_channel_is_fine_in_eval():
    layer = RepresentativeBatchNorm1d(3).eval()
    assert layer(torch.ones(1, 3)).shape == (1, 3)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_input(dtype):
    """A TypeError (nn.BatchNorm's kernel raises NotImplementedError "not implemented for 'Long'")."""
    with pytest.raises(TypeError, match=rf"^expected a floating-point input \(got {dtype}\)"):
        RepresentativeBatchNorm2d(3)(torch.ones(2, 3, 2, 2, dtype=dtype))


@pytest.mark.parametrize("argname", ["centering_stat", "scaling_stat"])
def test_unknown_statistic(argname):
    message = f"{argname} must be one of mu_c, sigma_c, mu_s, sigma_s (got 'mean')"
    with pytest.raises(ValueError) as error:
        RepresentativeBatchNorm2d(3, **{argname: "mean"})
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        representative_batch_norm(torch.randn(2, 3), None, None, training=True, **{argname: "mean"})
    assert str(error.value) == message


def test_functional_needs_both_scaling_parameters():
    with pytest.raises(ValueError, match="'scale_weight' and 'scale_bias' must be given together"):
        representative_batch_norm(torch.randn(2, 3), None, None, scale_weight=torch.zeros(3), training=True)


# ----------------------------------------------------------------------------- conversion


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv3d(4, 3, 1), nn.BatchNorm3d(3))
        self.head = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        x = self.stem(x)
        x = self.stage(x.unsqueeze(2)).mean((2, 3, 4))
        return self.head(x)


def trained_net():
    torch.manual_seed(0)
    net = Net().double()
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            random_layer(module)
    net(torch.randn(4, 2, 5, 5, dtype=torch.float64))  # running statistics away from their init
    return net


@pytest.mark.parametrize("mode", parity.MODES)
@pytest.mark.parametrize("stats", [("mu_c", "mu_c"), ("sigma_c", "sigma_s")], ids="-".join)
def test_convert_preserves_output(mode, stats):
    net = trained_net().train(mode == "train")
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    want = copy.deepcopy(net)(x)
    converted = convert_bn_to_rbn(net, centering_stat=stats[0], scaling_stat=stats[1])
    kinds = [type(module) for module in converted.modules()]
    assert {RepresentativeBatchNorm1d, RepresentativeBatchNorm2d, RepresentativeBatchNorm3d} <= set(kinds)
    assert not any(issubclass(kind, nn.modules.batchnorm._BatchNorm) for kind in kinds)
    assert converted.stem[1].training == (mode == "train")
    assert converted.stem[1].weight.dtype == torch.float64
    assert converted.stem[1].num_batches_tracked.item() == 1
    assert converted.stem[1].scaling_stat == stats[1]
    assert_close(converted(x), want)


def test_convert_predicate_and_preserve_output_false():
    net = trained_net()
    net.stem[1].weight.requires_grad_(False)
    original_weight = net.stem[1].weight.detach().clone()
    converted = convert_bn_to_rbn(net, predicate=lambda name, layer: name.startswith("stem"), preserve_output=False)
    assert isinstance(converted.stem[1], RepresentativeBatchNorm2d)
    assert isinstance(converted.stage[1], nn.BatchNorm3d) and isinstance(converted.head[1], nn.BatchNorm1d)
    assert torch.equal(converted.stem[1].weight, original_weight)
    assert not converted.stem[1].weight.requires_grad
    single = convert_bn_to_rbn(nn.BatchNorm1d(3, bias=False), scaling=False)
    assert type(single) is RepresentativeBatchNorm1d and single.scale_weight is None and single.bias is None


def test_convert_non_affine_needs_scaling_off():
    with pytest.raises(ValueError, match="preserve_output=True needs an affine BatchNorm"):
        convert_bn_to_rbn(nn.BatchNorm2d(3, affine=False))
    layer = convert_bn_to_rbn(nn.BatchNorm2d(3, affine=False).eval(), scaling=False)
    x = torch.randn(2, 3, 2, 2)
    assert_close(layer(x), nn.BatchNorm2d(3, affine=False).eval()(x), "float32")


# ----------------------------------------------------------------------------- state dicts


def test_loads_authors_checkpoint_shapes():
    layer = random_layer(RepresentativeBatchNorm2d(3))
    authors = {name: value.reshape(1, 3, 1, 1) if name in dict(layer.named_parameters()) else value
               for name, value in layer.state_dict().items()}
    fresh = RepresentativeBatchNorm2d(3)
    fresh.load_state_dict(authors)
    for name, value in layer.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    again = RepresentativeBatchNorm2d(3)
    load_numpy_state_dict(again, {name: value.numpy() for name, value in authors.items()})
    assert torch.equal(again.scale_bias, layer.scale_bias)


def test_numpy_state_dict_round_trip():
    net = convert_bn_to_rbn(trained_net())
    arrays = state_dict_to_numpy(net)
    assert arrays["stem.1.num_batches_tracked"].dtype == np.int64 and arrays["stem.1.scale_bias"].shape == (4,)
    fresh = convert_bn_to_rbn(Net().double())
    load_numpy_state_dict(fresh, arrays)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_numpy_state_dict_reports_every_problem():
    layer = RepresentativeBatchNorm2d(3)
    arrays = state_dict_to_numpy(layer)
    del arrays["scale_bias"], arrays["running_var"]
    arrays["extra"] = np.zeros(3)
    with pytest.raises(rbn_reference.StateDictError) as error:
        load_numpy_state_dict(layer, arrays)
    assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
    assert "missing keys ['running_var', 'scale_bias']" in str(error.value)
    assert "unexpected keys ['extra']" in str(error.value)
    arrays["weight"] = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError) as error:
        load_numpy_state_dict(layer, arrays)
    assert "weight: expected shape (3,) (got (4,))" in str(error.value) and "missing keys" in str(error.value)
    arrays["weight"] = np.full(3, 2.0, dtype=np.float32)
    load_numpy_state_dict(layer, arrays, strict=False)
    assert layer.weight.tolist() == [2.0] * 3


def test_functional_is_exported():
    assert rbn_torch.functional.representative_batch_norm is representative_batch_norm
