"""Named streams: one server, one stream per URL path.

eirtrain connects to the URL in its configs, unchanged, so the URL's path
names the stream a connection reads: `<base>` (the `--path`, `/ws` by
default) is the stream named `default`, and `<base>/<name>` the stream
`<name>`. Every named stream is a `SampleStream` of its own (its cursor,
epochs, order, validation ids, connections and level end), so runs that
name different streams never touch each other's state; they share the
source and the engine. The rules:

1. A name is 1 to 64 characters of `[A-Za-z0-9._-]`. `<base>/default` and
   `<base>` are the same stream.
2. A stream is made by the first connection that names it, and kept, with
   its position and validation ids, until the server stops, also while no
   connection is open on it (a run between its setup and its training, or
   reconnecting).
3. At most `max_streams` streams are kept; a connection that names one
   more is refused before the upgrade, and nothing is made for it.

This module does no I/O: `stream_name` reads a request's path, `Streams`
keeps the streams and what each one served (`Counts`).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus

from eirstream.stream import SampleStream

DEFAULT_STREAM = "default"
NAME_RULE = "1 to 64 characters of A-Z a-z 0-9 . _ -"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Upper bounds (seconds) of the buckets of a getData's wait. 0.1 is one of
# them, so "waited more than 100 ms" is one bucket's complement.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Refused(Exception):
    """A request for a stream the server will not open: the HTTP status and
    the line to answer with."""

    def __init__(self, status: HTTPStatus, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def stream_name(path: str, base: str) -> str | None:
    """The stream a request path names under `base`; None when the path is
    not under `base` at all (not ours: 404). Refused (400) for a name that
    breaks rule 1."""
    root = base.rstrip("/")  # "/" serves its names as "/<name>"
    if path in (base, root or "/"):  # a --path ending in "/" is its own URL
        return DEFAULT_STREAM
    if not path.startswith(root + "/"):
        return None
    name = path[len(root) + 1 :]
    if not _NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:79] + "…"
        raise Refused(
            HTTPStatus.BAD_REQUEST,
            f"bad stream name {shown!r} in path {root}/<name>: a name is {NAME_RULE}",
        )
    return name


@dataclass
class WaitHistogram:
    """How long getData requests waited between arrival and reply, in
    WAIT_BUCKETS (cumulative counts are worked out when read)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    total: float = 0.0  # seconds, summed

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, requests that waited at most that long), the last
        bound "+Inf", as Prometheus' histogram buckets are."""
        out, running = [], 0
        bounds = [*map(str, WAIT_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def over(self, seconds: float) -> int:
        """Requests that waited longer than `seconds`, a bucket bound."""
        return sum(self.counts[WAIT_BUCKETS.index(seconds) + 1 :])


@dataclass
class Counts:
    """What one stream's connections asked for and were sent: the counters
    that `SampleStream` does not keep (it knows indices, not messages)."""

    requests: int = 0
    errors: int = 0  # error replies
    bytes_served: int = 0  # of data replies
    waits: WaitHistogram = field(default_factory=WaitHistogram)


@dataclass
class NamedStream:
    name: str
    stream: SampleStream
    counts: Counts = field(default_factory=Counts)


class Streams:
    """The server's named streams (rules 2 and 3); `make(name)` builds the
    `SampleStream` of a new one."""

    def __init__(
        self, make: Callable[[str], SampleStream], max_streams: int = 64
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        self._make = make
        self.max_streams = max_streams
        self._streams: dict[str, NamedStream] = {}

    def open(self, name: str) -> NamedStream:
        """The stream `name`, made now if it is new; Refused (503) when that
        would be one more than `max_streams`."""
        named = self._streams.get(name)
        if named is not None:
            return named
        self.check_room(name)
        named = NamedStream(name, self._make(name))
        self._streams[name] = named
        return named

    def check_room(self, name: str) -> None:
        """Refused (503) unless `name` is kept or there is room to make it."""
        if name not in self._streams and len(self._streams) >= self.max_streams:
            raise Refused(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"cannot open stream {name!r}: this server keeps at most "
                f"{self.max_streams} streams (--max-streams), the default one "
                "counted, and has that many; use one of their names, or restart "
                "the server with a larger --max-streams",
            )

    def __getitem__(self, name: str) -> NamedStream:
        return self._streams[name]

    def __contains__(self, name: object) -> bool:
        return name in self._streams

    def __iter__(self) -> Iterator[NamedStream]:
        return iter(list(self._streams.values()))

    def __len__(self) -> int:
        return len(self._streams)

    def with_connections(self) -> list[NamedStream]:
        """The streams that have a connection open now."""
        return [
            named for named in self._streams.values() if named.stream.open_connections
        ]
