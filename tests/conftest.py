"""Test-session set-up shared by every framework's tests."""

from rbn import frameworks

# Jittor's import-time settings (offline, no GPU) and the safe import order: MindSpore's CPU
# ops segfault when Jittor was imported first, so MindSpore comes in before any test module
# can import Jittor.
frameworks.prepare_import("jittor")
