"""`python -m pymaster`: the same entry point as the `pymaster` command."""

import sys

from pymaster.cli import main

sys.exit(main())
