"""eirstream: the WebSocket data server that streams training data into EIR's
`eirtrain` (its streaming protocol 1.0).

Start it with `eirstream` (or `python -m eirstream`, or the tutorial's
`python simulation_streamer.py`); `eirstream --help` lists the options, and
`eirstream --check` checks a source without serving it. docs/architecture.md
describes the layers, one module each.
"""

__version__ = "0.2.0"
