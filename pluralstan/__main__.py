"""``python -m pluralstan``: the same command line as the ``pluralstan`` script."""

import sys

from .cli import main

sys.exit(main())
