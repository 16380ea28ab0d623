"""`python -m tui.cli` is `mldeck`."""

import sys

from tui.cli import main

sys.exit(main())
