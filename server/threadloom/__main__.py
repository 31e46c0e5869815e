"""``python -m threadloom``: the same as the ``threadloom`` command."""

import sys

from .cli import main

sys.exit(main())
