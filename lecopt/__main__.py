"""``python -m lecopt``: the same as the ``lecopt`` command."""

import sys

from lecopt.cli import main

sys.exit(main())
