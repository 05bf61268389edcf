"""Test-session set-up shared by every framework's tests."""

import os

from rbn import frameworks

# Under pytest-xdist (`make test PYTEST_WORKERS=2`) every worker but the first (and the processes
# its tests start) compiles Jittor's kernels into a cache of its own: two processes compiling into
# one can get wrong kernels (docs/jittor.md). The first keeps Jittor's own cache, the one `make demo`
# warms.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if _WORKER != "gw0":
    os.environ["cache_name"] = f"{os.environ.get('cache_name', 'rbn-test')}-{_WORKER}"

# Jittor's import-time settings (offline, no GPU) and the safe import order: MindSpore's CPU
# ops segfault when Jittor was imported first, so MindSpore comes in before any test module
# can import Jittor.
frameworks.prepare_import("jittor")

try:
    from hypothesis import settings
except ImportError:  # the property tests skip themselves
    pass
else:
    # ci: reproducible in CI (seeded by the test's name); long: a deep search on demand
    # (--hypothesis-profile=long). tests/test_property.py scales max_examples per framework.
    settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
    settings.load_profile("ci")
