"""EIR's moves on a `SampleStream`, for the unit tests of the stream's rules.

Connections are plain strings. EIR's validation probe is `take(conn, 1)`
followed by `reset(conn)`; its training connection is the probe, then takes
until `take` returns None (the server's "terminate"). `Trainer` is one
training connection of a rank under DDP, `run_training` steps many of them
in a random interleaving, and the last helpers read what the stream logs
when a pass ends (rule 7).
"""

import itertools
import logging
import random
import re
from dataclasses import dataclass, field

from eirstream.stream import ResetOutcome, SampleStream


def ids(*indices: int) -> list[str]:
    return [f"sample_{i}" for i in indices]


def drain(stream: SampleStream, conn: str, batch: int = 7) -> list[int]:
    """Everything `conn` gets until the stream says it is exhausted."""
    out: list[int] = []
    while (got := stream.take(conn, batch)) is not None:
        out += got
    return out


def probe(stream: SampleStream, conn: str) -> tuple[list[int] | None, ResetOutcome]:
    """EIR's validation probe: one sample (thrown away), then a reset."""
    stream.connect(conn)
    return stream.take(conn, 1), stream.reset(conn)


def eir_probe(stream: SampleStream, conn: str) -> ResetOutcome:
    """EIR's probe at the start of a training connection."""
    stream.connect(conn)
    stream.take(conn, 1)
    return stream.reset(conn)


def one_connection(num_samples: int | None) -> SampleStream:
    """A stream with one connection, "a", open."""
    stream = SampleStream(num_samples)
    stream.connect("a")
    return stream


STEPS = itertools.count()  # orders the trainers' probes and resets


@dataclass
class Trainer:
    """One EIR training connection of a rank, driven step by step by a test."""

    name: str
    batch: int
    start_at: int = 0  # starts once some connection has this many batches
    leave_after: int | None = None  # closes after this many batches
    state: str = "waiting"  # -> probed -> training -> over | left | late
    batches: list[list[int]] = field(default_factory=list)
    behind_at_join: bool = False  # others had more batches when it joined
    probed_at: int = -1  # when it probed (a tick of STEPS)
    joined_at: int = -1  # when it reset
    in_pass: bool = False  # rule 3, as the tests expect it

    def step(self, stream: SampleStream, trainers: list["Trainer"]) -> None:
        """Its next message: start and probe, reset, or take one batch."""
        if self.state == "waiting":
            stream.connect(self.name)
            self.probed_at = next(STEPS)
            # None if the pass is already over for newcomers
            self.in_pass = stream.take(self.name, 1) is not None
            self.state = "probed"
        elif self.state == "probed":
            in_pass = [t for t in trainers if t.in_pass and t is not self]
            rewound = stream.reset(self.name).rewound
            self.joined_at = next(STEPS)
            assert rewound == (not in_pass)  # rule 4
            self.in_pass = True  # joined, or rewound for itself (rule 3)
            self.behind_at_join = any(t.batches for t in trainers)
            self.state = "training"
            others_over = any(t.batches or t.state == "over" for t in trainers)
            if (rewound and others_over) or any(t.state == "late" for t in trainers):
                # Everyone else was over: a new pass, not the one tested (and
                # whoever joins after that rewind is in the new pass too).
                stream.disconnect(self.name)
                self.state = "late"
                self.in_pass = False
        elif (
            self.leave_after is not None
            and len(self.batches) >= self.leave_after
            and any(t.in_pass for t in trainers if t is not self)  # not the last
        ):
            stream.disconnect(self.name)
            self.state = "left"
            self.in_pass = False
        else:
            got = stream.take(self.name, self.batch)
            self.in_pass = got is not None
            if got is None:
                self.state = "over"
            else:
                self.batches.append(got)


def run_training(
    stream: SampleStream,
    trainers: list[Trainer],
    rng: random.Random,
    window: int | None = None,
) -> None:
    """Step the trainers in a random interleaving until none has more to do.

    A trainer waits until some training connection has `start_at` batches
    (and never starts once none is left training). With `window`, no
    connection gets more than that many batches ahead of the slowest one
    still training, as DDP's collectives keep ranks close (each connection
    also has a request or two in flight)."""
    for _ in range(10**6):
        training = [len(t.batches) for t in trainers if t.state == "training"]
        leaders = max(training, default=0)
        slowest = min(training, default=0)
        ready = [
            t
            for t in trainers
            if (
                t.state in ("probed", "training")
                and (window is None or len(t.batches) < slowest + window)
            )
            or (
                t.state == "waiting"
                and t.start_at <= leaders
                and (training or not t.start_at)
            )
        ]
        if not ready:
            assert all(t.state in ("over", "left", "waiting", "late") for t in trainers)
            return
        rng.choice(ready).step(stream, trainers)
    raise AssertionError("the pass never ended")


def sat_out_of(records: list[logging.LogRecord]) -> set[str]:
    """The connections the stream's log says sit the pass out."""
    pattern = re.compile(r"conn#(\S+) .*(cannot be brought up|gets no data)")
    return {m.group(1) for r in records if (m := pattern.search(r.getMessage()))}


def pass_over_lines(records: list[logging.LogRecord]) -> list[str]:
    """The stream's "pass over ..." log lines (rule 7's end of a pass)."""
    return [r.getMessage() for r in records if r.getMessage().startswith("pass over")]


def two_ranks_a_batch_apart(stream: SampleStream, rounds: int) -> dict[str, list]:
    """Two ranks probe, then take batches of 32, rank 0 a batch ahead (its
    request in flight), for `rounds` rounds and 5 more tries of rank 1; the
    batches each got."""
    eir_probe(stream, "rank0")
    eir_probe(stream, "rank1")
    got: dict[str, list[list[int]]] = {"rank0": [], "rank1": []}
    for conn in ["rank0", "rank0", *["rank1", "rank0"] * rounds, *["rank1"] * 5]:
        batch = stream.take(conn, 32)
        if batch is not None:
            got[conn].append(batch)
    return got
