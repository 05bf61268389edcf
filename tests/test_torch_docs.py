"""rbn_torch's docstrings: every public class and function has one with a runnable Example."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

torch = pytest.importorskip("torch")

import rbn_torch  # noqa: E402

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(rbn_torch.__path__, "rbn_torch."))


def public_objects(module):
    """The classes and functions a module defines and does not mark private."""
    names = getattr(module, "__all__", [name for name in vars(module) if not name.startswith("_")])
    return {name: getattr(module, name) for name in names
            if (inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name)))
            and getattr(module, name).__module__ == module.__name__}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_class_and_function_has_an_example(name):
    module = importlib.import_module(name)
    undocumented = [obj_name for obj_name, obj in public_objects(module).items()
                    if ">>>" not in (obj.__doc__ or "")]
    assert not undocumented, f"{name}: no Example in {undocumented}"


@pytest.mark.parametrize("name", ["RepresentativeBatchNorm1d", "RepresentativeBatchNorm2d",
                                  "RepresentativeBatchNorm3d", "convert_bn_to_rbn"])
def test_layer_docstrings_show_eq_12_args_and_shape(name):
    doc = vars(getattr(rbn_torch, name)).get("__doc__") or getattr(rbn_torch, name).__doc__
    for part in ("X_{cm} = X + w_m", "X_{cs} = X_s", "Y = X_{cs}", "Args:"):
        assert part in doc, (name, part)
    if name != "convert_bn_to_rbn":
        assert "Shape:" in doc and name in doc  # its own docstring, not the base class's
