"""The data stream: which sample comes next, for every connection of the server.

Two pieces live here:

* `SimulatedHealthData` is the *sample source*: it knows what the data looks
  like (`dataset_info`) and makes sample number k (`sample`, `samples`). Sample
  k is generated from an RNG seeded by (seed, k) alone, so it is the same every
  time it is produced: after a reset, after a restart, whatever the batch sizes
  or the process that makes it. Replace this class to stream your own data;
  the server only needs the small interface of `SampleSource`.

* `SampleStream` is the *shared state* of one server: the cursor over sample
  indices, the indices handed back to the front of the stream, the validation
  ids to skip, and the bookkeeping of who is in the middle of a pass. Every
  connection takes its batches from the one stream, so no index is served
  twice between two rewinds. It does no I/O and holds no samples, only
  integers, so it could live in a shared store serving several processes.
"""

import random
import re
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from single_sample_simulation import simulate_sample

SAMPLE_ID_PREFIX = "sample_"
_SAMPLE_ID = re.compile(r"sample_(0|[1-9][0-9]*)")


@runtime_checkable
class SampleSource(Protocol):
    """What the server needs from a source of samples.

    * `dataset_info()`: the `getInfo` payload, {"inputs": {...}, "outputs": {...}}.
    * `sample(index)`: sample number `index` as EIR expects it (a dict with
      "inputs", "target_labels" and "sample_id"); the same dict every time.
    * `samples(indices)`: several at once (loop over `sample` if nothing faster).
    * `num_samples`: how many samples the stream has, or None for unbounded.
    * `index_of(sample_id)`: the index that produces `sample_id`, or None if
      this source never produces it (used to skip validation ids).
    """

    num_samples: int | None

    def dataset_info(self) -> dict[str, Any]: ...

    def sample(self, index: int) -> dict[str, Any]: ...

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...

    def index_of(self, sample_id: str) -> int | None: ...


def sample_id(index: int) -> str:
    """The id of sample `index`: `sample_<index>`."""
    return f"{SAMPLE_ID_PREFIX}{index}"


def index_of_sample_id(sample_id: str, num_samples: int | None) -> int | None:
    """Parse `sample_<k>` back to k; None for anything else or k out of range."""
    if not isinstance(sample_id, str) or not _SAMPLE_ID.fullmatch(sample_id):
        return None
    index = int(sample_id[len(SAMPLE_ID_PREFIX) :])
    if num_samples is not None and index >= num_samples:
        return None
    return index


class SimulatedHealthData:
    """The tutorial's data: a prompt describing a person -> their HR trace."""

    def __init__(
        self,
        seed: int = 0,
        sequence_length: int = 64,
        max_iterations: int | None = None,
    ) -> None:
        if sequence_length < 1:
            raise ValueError(
                f"sequence_length must be at least 1, got {sequence_length}"
            )
        if max_iterations is not None and max_iterations < 0:
            raise ValueError(
                f"max_iterations must be 0 or more (or None), got {max_iterations}"
            )
        self.seed = seed
        self.sequence_length = sequence_length
        self.num_samples = max_iterations

    def dataset_info(self) -> dict[str, Any]:
        return {
            "inputs": {"text_input": {"type": "sequence"}},
            "outputs": {"text_output": {"type": "sequence"}},
        }

    def sample(self, index: int) -> dict[str, Any]:
        # A string seed is hashed with SHA-512 by `random`: stable across runs,
        # platforms and PYTHONHASHSEED, and no two (seed, index) pairs collide.
        rng = random.Random(f"{self.seed}:{index}")
        prompt, trace = simulate_sample(rng, self.sequence_length)
        return {
            "inputs": {"text_input": prompt, "text_output": trace},
            "target_labels": {"text_output": {"text_output": trace}},
            "sample_id": sample_id(index),
        }

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.sample(i) for i in indices]

    def index_of(self, sample_id: str) -> int | None:
        return index_of_sample_id(sample_id, self.num_samples)


@dataclass(frozen=True)
class ResetOutcome:
    """What a `reset` did: rewound the stream, or joined the pass in progress."""

    rewound: bool
    position: int
    returned: int  # indices this connection had taken that went back to the front


class SampleStream:
    """One cursor over sample indices, shared by every connection of a server.

    Rules it keeps:

    * Between two rewinds no index is handed out twice, whatever the number of
      connections, except indices explicitly given back (see `reset`).
    * Indices of validation ids are never handed out once set, across resets,
      until the next `set_validation_ids` replaces them.
    * A `reset` rewinds to index 0 only when no *other* connection is in the
      middle of a pass (has taken data since the last rewind and has not been
      told the stream is exhausted). Otherwise the requester joins the pass in
      progress; on its first reset, the indices of its last batch before that
      reset (EIR's probe takes one) go back to the front of the stream.
    * Opening or closing a connection never moves the cursor.

    Connections are any hashable keys. Every method is synchronous and cheap;
    under asyncio that makes each call atomic.
    """

    def __init__(self, num_samples: int | None) -> None:
        self.num_samples = num_samples
        self._cursor = 0  # next fresh index
        self._front: deque[int] = deque()  # given back, served before fresh ones
        self._skip: frozenset[int] = frozenset()
        self._validation_ids_received = 0
        self._validation_ids_set = False
        self._open: set[Hashable] = set()
        self._in_pass: set[Hashable] = set()
        self._before_first_reset: dict[Hashable, list[int]] = {}
        self._served_in_pass = 0
        self._served_total = 0
        self._rewinds = 0

    # -- connections -------------------------------------------------------
    def connect(self, conn: Hashable) -> None:
        self._open.add(conn)
        self._before_first_reset[conn] = []

    def disconnect(self, conn: Hashable) -> None:
        self._open.discard(conn)
        self._in_pass.discard(conn)
        self._before_first_reset.pop(conn, None)

    # -- the stream --------------------------------------------------------
    def take(self, conn: Hashable, count: int) -> list[int] | None:
        """Up to `count` next indices for `conn`; None once the stream is exhausted."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        out: list[int] = []
        skip = self._skip
        while self._front and len(out) < count:
            index = self._front.popleft()
            if index not in skip:
                out.append(index)
        end = self.num_samples
        cursor = self._cursor
        if not skip:
            stop = cursor + count - len(out)
            if end is not None:
                stop = min(stop, end)
            out.extend(range(cursor, max(stop, cursor)))
            cursor = max(stop, cursor)
        else:
            while len(out) < count and (end is None or cursor < end):
                if cursor not in skip:
                    out.append(cursor)
                cursor += 1
        self._cursor = cursor
        if not out:
            self._in_pass.discard(conn)  # told "terminate": its pass is over
            return None
        self._in_pass.add(conn)
        if conn in self._before_first_reset:
            self._before_first_reset[conn] = out
        self._served_in_pass += len(out)
        self._served_total += len(out)
        return out

    def peek(self, count: int) -> list[int]:
        """The indices the next `take` calls would hand out, without taking them."""
        out = [i for i in self._front if i not in self._skip][:count]
        cursor, end = self._cursor, self.num_samples
        while len(out) < count and (end is None or cursor < end):
            if cursor not in self._skip:
                out.append(cursor)
            cursor += 1
        return out

    def reset(self, conn: Hashable) -> ResetOutcome:
        """Rewind for `conn`, or let it join the pass others are in the middle of."""
        taken = self._before_first_reset.pop(conn, [])
        others_streaming = bool(self._in_pass - {conn})
        self._in_pass.discard(conn)
        if not others_streaming:
            self._cursor = 0
            self._front.clear()
            self._in_pass.clear()
            for other in self._before_first_reset:
                self._before_first_reset[other] = []  # stale after a rewind
            self._served_in_pass = 0
            self._rewinds += 1
            return ResetOutcome(rewound=True, position=0, returned=0)
        self._front.extendleft(reversed(taken))
        self._served_in_pass -= len(taken)
        return ResetOutcome(rewound=False, position=self._cursor, returned=len(taken))

    def set_validation_ids(self, indices: Sequence[int | None]) -> tuple[int, int]:
        """Replace the set to skip. `indices` holds one entry per id received,
        None where the id is not one this stream produces. Returns
        (ids received, distinct ids this stream produces)."""
        skip = frozenset(i for i in indices if i is not None)
        self._skip = skip
        self._validation_ids_received = len(indices)
        self._validation_ids_set = True
        return len(indices), len(skip)

    # -- reporting ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        end = self.num_samples
        return {
            "phase": "training" if self._validation_ids_set else "setup",
            "current_position": self._cursor,
            "max_iterations": end,
            "remaining_iterations": None if end is None else max(end - self._cursor, 0),
            "samples_served_in_pass": self._served_in_pass,
            "samples_served_total": self._served_total,
            "rewinds": self._rewinds,
            "open_connections": len(self._open),
            "connections_in_pass": len(self._in_pass),
            "validation_ids": len(self._skip),
            "validation_ids_received": self._validation_ids_received,
            "returned_to_front": len(self._front),
        }
