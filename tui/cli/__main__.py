"""`python -m mldeck.tui.cli` is `mldeck`."""

import sys

from mldeck.tui.cli import main

sys.exit(main())
