"""Test-session set-up shared by every framework's tests."""

import importlib.util
import os
import shutil
import subprocess


def _gpu_visible():
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


# Jittor reads these at import time: offline it must not try to download oneDNN, and with
# nvcc installed but no GPU it must not look for CUDA. A user's own settings win.
os.environ.setdefault("use_mkl", "0")
if not _gpu_visible():
    os.environ.setdefault("nvcc_path", "")

# MindSpore's CPU ops segfault (in std::regex) when Jittor was imported first in the process:
# import MindSpore before any test module can import Jittor.
if importlib.util.find_spec("mindspore") and importlib.util.find_spec("jittor"):
    import mindspore  # noqa: F401, E402
