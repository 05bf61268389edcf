"""``python -m rbn``: the ``rbn`` command."""

import sys

from .cli import main

sys.exit(main())
