"""``python -m goblet.cli``: the ``goblet`` console script without installing it."""

import sys

from goblet.cli import main

sys.exit(main())
