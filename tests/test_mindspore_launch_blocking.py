"""rbn_mindspore under ``mindspore.runtime.launch_blocking()``, the setting docs/mindspore.md
recommends for PyNative training on CPU (every op runs synchronously: RBN's layer then waits on
no asynchronous queue). The setting cannot be undone in a process, so the whole PyNative parity
grid runs in a child process, against the oracle with the same tolerances as test_mindspore.py.
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("mindspore")

from rbn_reference import parity  # noqa: E402

TIMEOUT = 600  # seconds: one MindSpore import and the PyNative grid on 2 busy cores

GRID = """
import json
import mindspore as ms
from mindspore._c_expression import RuntimeConf
ms.runtime.launch_blocking()
assert RuntimeConf.get_instance().is_launch_blocking()
ms.set_context(mode=ms.PYNATIVE_MODE)
from rbn_reference import parity
from rbn_mindspore.parity import run_module
runs = [parity.check_case(run_module, case, dtype, mode == "train")
        for dtype in parity.DTYPES + parity.MIXED_DTYPES for mode in parity.MODES for case in parity.CASES]
checks = [check for run in runs for check in run]
print(json.dumps({"runs": len(runs), "checks": len(checks), "failed": [str(c) for c in checks if not c.passed]}))
"""


def test_parity_grid_under_launch_blocking(tmp_path):
    result = subprocess.run([sys.executable, "-c", GRID], cwd=tmp_path, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == []
    assert report["runs"] == len(parity.CASES) * len(parity.DTYPES + parity.MIXED_DTYPES) * len(parity.MODES)
    assert report["checks"] >= 3 * report["runs"]  # each run compares y, grad x and more
