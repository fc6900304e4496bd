"""`python -m eirstream`: the same command line as `eirstream`."""

import sys

from eirstream.cli import main

sys.exit(main(prog="python -m eirstream"))
