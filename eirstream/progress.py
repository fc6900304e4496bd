"""What a stream has served, as plain values: what `--state` keeps.

A `Progress` is where a stream's training stands: the epoch and position
of its cursor, the indices given back to its front, and the takes whose
bytes have not left yet (*unsent*: taken from the cursor, reply not sent).
Every index before the position in the epoch's order has been sent, except
the skipped ones (validation ids), the front and the unsent takes, which
all come again first when the stream resumes (stream.py). A `StreamState`
adds the validation ids; state.py writes both to a file and reads them
back. Integers only; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Take:
    """A take whose reply is not sent yet: `front` (indices it took from the
    front) and the positions it took fresh, from `start` to `stop`, each an
    (epoch, position) of the pass."""

    front: tuple[int, ...]
    start: tuple[int, int]
    stop: tuple[int, int]


@dataclass(frozen=True)
class Progress:
    """Where a stream's training stands (see the module docstring)."""

    epoch: int = 0
    position: int = 0
    front: tuple[int, ...] = ()
    unsent: tuple[Take, ...] = ()
    served_total: int = 0  # samples sent since the stream was first made
    served_in_pass: int = 0
    rewinds: int = 0
    # Rule 7 ended the pass (its final level is fixed): what it left over
    # is not served in it, so a resumed stream starts a new pass.
    over: bool = False


@dataclass(frozen=True)
class StreamState:
    """A stream as `--state` keeps it: its progress and every validation id
    (as indices) any run on it sent."""

    progress: Progress = Progress()
    validation: tuple[int, ...] = ()  # sorted


@dataclass(frozen=True)
class Resumed:
    """Where a stream resumed from a state file: `served` of the
    `per_epoch` samples of `epoch` were sent before."""

    epoch: int
    served: int
    per_epoch: int | None  # None: an unbounded stream
    pass_over: bool = False  # all was sent: training starts a new pass
