"""The model zoo: one architecture, the same canonical names and shapes in every framework.

torchvision is not importable here (its wheel is a CUDA build), so torchvision compatibility
is checked against its published parameter counts and against ``jittor.models``, a port
with exactly torchvision's names and shapes.
"""

import importlib.util

import numpy as np
import pytest

from rbn import checkpoint
from rbn_reference.parity import assert_checks, compare
from tolerances import tolerance

torch = pytest.importorskip("torch")
import rbn_torch.models  # noqa: E402  (after the importorskip)
from rbn_torch import RepresentativeBatchNorm2d, convert_bn_to_rbn  # noqa: E402
from rbn_torch.models import porting as torch_porting  # noqa: E402

ARCHITECTURES = checkpoint.ARCHITECTURES
# torchvision's parameter counts at 1000 classes (its model docs), BatchNorm variant.
TORCHVISION_PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                          "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
                          "mobilenet_v2": 3_504_872}
SMALL = ("resnet18", "mobilenet_v2", "resnet20")  # run on inputs everywhere (res2net's logits too); the rest only built
BATCH = (2, 3, 64, 64)
OTHER_FRAMEWORKS = [pytest.param(name, marks=pytest.mark.skipif(importlib.util.find_spec(name) is None,
                                                                 reason=f"{name} is not installed"))
                    for name in ("mindspore", "jittor")]


def shapes(arrays):
    return {name: array.shape for name, array in arrays.items()}


def random_state(arch, batchnorm=False, seed=0):
    """Canonical arrays of ``arch`` with every norm parameter and statistic away from its init."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arrays = torch_porting.state_dict_to_numpy(checkpoint.build("torch", arch, 10, batchnorm=batchnorm))
    draws = {"weight": lambda n: rng.uniform(0.5, 1.5, n), "bias": lambda n: rng.normal(0.0, 0.2, n),
             "center_weight": lambda n: rng.uniform(-0.5, 0.5, n), "scale_weight": lambda n: rng.normal(0.0, 1.0, n),
             "scale_bias": lambda n: rng.normal(1.0, 0.5, n), "running_mean": lambda n: rng.normal(0.0, 0.5, n),
             "running_var": lambda n: rng.uniform(0.5, 2.0, n)}
    for name, array in arrays.items():
        leaf = name.rpartition(".")[2]
        if array.ndim == 1 and leaf in draws and not name.startswith(("fc.", "classifier.")):
            arrays[name] = draws[leaf](array.shape[0]).astype(np.float32)
        elif leaf == "num_batches_tracked":
            arrays[name] = np.array(5, dtype=np.int64)
    return arrays


@pytest.mark.parametrize("arch", [arch for arch in ARCHITECTURES if arch in TORCHVISION_PARAMETERS])
def test_torch_parameter_counts_match_torchvision(arch):
    model = getattr(rbn_torch.models, arch)(norm_layer=torch.nn.BatchNorm2d)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[arch]
    rbn = getattr(rbn_torch.models, arch)()
    norm_channels = sum(m.num_features for m in rbn.modules() if isinstance(m, RepresentativeBatchNorm2d))
    # RBN adds center_weight, scale_weight and scale_bias per channel of every norm layer.
    assert sum(p.numel() for p in rbn.parameters()) == TORCHVISION_PARAMETERS[arch] + 3 * norm_channels


# ResNet-20 of He et al. (2016, Sec. 4.2) at 10 classes with option-A (parameter-free) shortcuts:
# the paper's "0.27M". Ours projects (option B) where the shape changes: two 1x1 convolutions
# (16->32, 32->64) and their BatchNorms (weight and bias) on top.
RESNET20_OPTION_A_PARAMETERS = 269_722
RESNET20_PROJECTIONS = 16 * 32 + 32 * 64 + 2 * (32 + 64)


def test_resnet20_parameter_count_is_the_papers_plus_projections():
    model = rbn_torch.models.resnet20(num_classes=10, norm_layer=torch.nn.BatchNorm2d)
    assert sum(p.numel() for p in model.parameters()) == RESNET20_OPTION_A_PARAMETERS + RESNET20_PROJECTIONS
    grey = rbn_torch.models.resnet20(num_classes=10, in_channels=1, norm_layer=torch.nn.BatchNorm2d)
    assert sum(p.numel() for p in grey.parameters()) == RESNET20_OPTION_A_PARAMETERS + RESNET20_PROJECTIONS - 2 * 16 * 9


def test_res2net_parameter_count_matches_the_paper():
    model = rbn_torch.models.res2net50_26w_4s(norm_layer=torch.nn.BatchNorm2d)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 25.70  # Res2Net paper, Table 2


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_torch_names_match_jittor_models_torchvision_port(arch):
    if importlib.util.find_spec("jittor") is None:
        pytest.skip("jittor is not installed")
    checkpoint.adapter("jittor")  # imports MindSpore before Jittor (see there)
    import jittor.models as jittor_models
    port = getattr(jittor_models, arch)(num_classes=10)
    ours = torch_porting.state_dict_to_numpy(checkpoint.build("torch", arch, 10, batchnorm=True))
    ours = {name: shape for name, shape in shapes(ours).items() if not name.endswith("num_batches_tracked")}
    assert ours == {name: tuple(var.shape) for name, var in port.state_dict().items()}


@pytest.mark.parametrize("batchnorm", [False, True], ids=["rbn", "batchnorm"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("framework", OTHER_FRAMEWORKS)
def test_same_canonical_names_and_shapes_as_torch(framework, arch, batchnorm):
    porting = checkpoint.adapter(framework)
    model = checkpoint.build(framework, arch, 10, batchnorm=batchnorm)
    want = shapes(torch_porting.state_dict_to_numpy(checkpoint.build("torch", arch, 10, batchnorm=batchnorm)))
    got = shapes(porting.state_dict_to_numpy(model))
    if batchnorm:  # Jittor's and MindSpore's BatchNorm keep no batch count
        want = {name: shape for name, shape in want.items() if not name.endswith("num_batches_tracked")}
    assert got == want


def test_mindspore_checkpoint_names_are_the_cell_paths():
    """save_checkpoint writes Parameter.name: it must be the dotted path the mapping assumes."""
    pytest.importorskip("mindspore")
    model = checkpoint.build("mindspore", "mobilenet_v2", 10)
    assert all(parameter.name == path for path, parameter in model.parameters_and_names())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_norm_layer_is_rbn_and_batchnorm_is_the_baseline(arch):
    rbn = getattr(rbn_torch.models, arch)(num_classes=10)
    assert {type(m) for m in rbn.modules()} & {RepresentativeBatchNorm2d, torch.nn.BatchNorm2d} == \
        {RepresentativeBatchNorm2d}
    baseline = getattr(rbn_torch.models, arch)(num_classes=10, norm_layer=torch.nn.BatchNorm2d)
    assert not any(isinstance(m, RepresentativeBatchNorm2d) for m in baseline.modules())


@pytest.mark.parametrize("arch", SMALL)
def test_convert_bn_to_rbn_keeps_logits(arch):
    model = checkpoint.build("torch", arch, 10, batchnorm=True)
    torch_porting.load_numpy_state_dict(model, random_state(arch, batchnorm=True))
    x = np.random.default_rng(1).standard_normal(BATCH).astype(np.float32)
    want = {mode: torch_porting.logits(model, x, mode == "train") for mode in ("eval", "train")}
    torch_porting.load_numpy_state_dict(model, random_state(arch, batchnorm=True))  # the train call updated them
    converted = convert_bn_to_rbn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in converted.modules())
    assert_checks([compare(mode, f"{arch} {mode} logits", torch_porting.logits(converted, x, mode == "train"),
                           want[mode], "float32", tolerance("float32")) for mode in ("eval", "train")])


@pytest.mark.parametrize("arch", SMALL)
def test_neutral_batchnorm_to_rbn_equals_convert_bn_to_rbn(arch):
    """The framework-free array conversion and the layer conversion give the same arrays."""
    arrays = random_state(arch, batchnorm=True)
    model = checkpoint.build("torch", arch, 10, batchnorm=True)
    torch_porting.load_numpy_state_dict(model, arrays)
    want = torch_porting.state_dict_to_numpy(convert_bn_to_rbn(model))
    got = checkpoint.batchnorm_to_rbn(arrays)
    assert shapes(got) == shapes(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
