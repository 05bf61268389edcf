"""The Examples in rbn_mindspore's docstrings run and print what they show."""

import doctest
import importlib

import pytest

ms = pytest.importorskip("mindspore")

MODULES = ["rbn_mindspore.functional", "rbn_mindspore.modules", "rbn_mindspore.convert", "rbn_mindspore.distributed",
           "rbn_mindspore.state_dict", "rbn_mindspore.cpu_kernels", "rbn_mindspore.models.resnet",
           "rbn_mindspore.models.mobilenetv2", "rbn_mindspore.models.res2net",
           "rbn_mindspore.models.porting", "rbn_mindspore.parity"]


@pytest.fixture(autouse=True)
def pynative_in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_every_public_name_has_an_example():
    import rbn_mindspore
    for name in rbn_mindspore.__all__:
        if name in ("functional", "models"):
            continue
        assert ">>>" in getattr(rbn_mindspore, name).__doc__, name
    assert ">>>" in rbn_mindspore.functional.representative_batch_norm.__doc__
