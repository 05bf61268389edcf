"""The one registry of the frameworks rbn supports: names, modules, import order, environment.

Everything that must know which frameworks exist asks here: the ``rbn`` command, checkpoint
conversion, the test session and ``rbn_jittor`` itself. The oracle (``rbn_reference``) names
no framework.
"""

import glob
import importlib
import importlib.util
import os
import sys
from typing import NamedTuple


class Framework(NamedTuple):
    """One supported framework and the modules of its ``rbn_<name>`` package."""

    name: str  # the framework's import name, also its name on the command line
    package: str  # the RBN package for it
    parity: str  # its adapter to the shared parity harness (``rbn_reference.parity``)
    porting: str  # its checkpoint and whole-model glue (``rbn.checkpoint``)

    def installed(self):
        return importlib.util.find_spec(self.name) is not None


def _framework(name):
    package = f"rbn_{name}"
    return Framework(name, package, f"{package}.parity", f"{package}.models.porting")


# In the safe import order: Jittor imported before MindSpore makes MindSpore's CPU ops segfault
# later (std::regex in libmindspore_tools), and torch before MindSpore avoids a Cell.__del__
# message at exit (docs/porting.md, "Traps met on the way").
FRAMEWORKS = tuple(_framework(name) for name in ("torch", "mindspore", "jittor"))


def names():
    """The frameworks' names, in the safe import order."""
    return tuple(framework.name for framework in FRAMEWORKS)


def get(name):
    """The :class:`Framework` called ``name``; ``KeyError`` naming the known ones otherwise."""
    for framework in FRAMEWORKS:
        if framework.name == name:
            return framework
    raise KeyError(f"unknown framework {name!r}; expected one of {', '.join(names())}")


def set_jittor_environment():
    """Jittor's import-time settings for this machine, unless the user set them.

    Offline Jittor must not download oneDNN (``use_mkl=0``), and with ``nvcc`` installed but no
    GPU it fails to load libcudart unless ``nvcc_path`` is empty.
    """
    os.environ.setdefault("use_mkl", "0")
    if not glob.glob("/dev/nvidia[0-9]*"):
        os.environ.setdefault("nvcc_path", "")


def prepare_import(name):
    """Import what must come before framework ``name`` in this process (see ``FRAMEWORKS``)."""
    if name == "jittor":
        set_jittor_environment()
        if "jittor" not in sys.modules and importlib.util.find_spec("mindspore") is not None:
            importlib.import_module("mindspore")


def import_module(name, module):
    """``module`` of framework ``name`` (e.g. its parity adapter), imported in the safe order."""
    prepare_import(name)
    return importlib.import_module(module)


def lazy_submodules(package, *submodules):
    """A module ``__getattr__`` for ``package`` that imports ``submodules`` on first access."""

    def __getattr__(name):
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
