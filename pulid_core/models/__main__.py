"""``python -m pulid_core.models``: see :mod:`pulid_core.models.cli`."""

import sys

from .cli import main

sys.exit(main())
