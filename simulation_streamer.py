"""Stream the tutorial's simulated health data to EIR's `eirtrain`.

Run `python simulation_streamer.py` (add `--help` for the options), then
point `input_source`/`output_source` in the configs at the URL it prints.
The server itself is the `eirstream` package beside this file; this file
only starts it, with the same command line as the installed `eirstream`.
"""

import sys

from eirstream.cli import main

if __name__ == "__main__":
    sys.exit(main())
