"""The Examples in rbn_mindspore's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

ms = pytest.importorskip("mindspore")

import rbn_mindspore  # noqa: E402

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(rbn_mindspore.__path__, "rbn_mindspore."))


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name} (output above)"


def test_every_public_name_has_an_example():
    import rbn_mindspore
    for name in rbn_mindspore.__all__:
        if name in ("functional", "models"):
            continue
        assert ">>>" in getattr(rbn_mindspore, name).__doc__, name
    assert ">>>" in rbn_mindspore.functional.representative_batch_norm.__doc__
