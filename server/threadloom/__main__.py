"""``python -m threadloom``: the same as the ``threadloom`` command."""

import sys

from .entry import main

sys.exit(main())
