"""Sample making: stream indices -> `data` replies, made ahead of need.

A sample is a pure function of its index, so making samples is the one job
that can run anywhere: the stream (cursor, validation ids) stays in the
server, and only "make these indices" goes out, a chunk of indices per task,
to an *engine*. Every engine implements `Engine` below:

  `ProcessEngine`  local worker processes (ProcessPoolExecutor, spawned);
  `ThreadEngine`   one thread of the server process (`--workers 0`);
  `DefaultEngine`  the default `--workers`: processes, until the samples turn
                   out quicker to make than to receive from a process;
  `DaskEngine`     a Dask cluster (dask_engine.py, imported for `--cluster`).

`SampleProducer` keeps the stream's next indices made or in the making (the
read-ahead, `HeldChunks`), hands chunks to the engine, a request's own chunks
first, and answers each request with slices of made chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import (
    BrokenExecutor,
)
from functools import partial
from itertools import filterfalse, islice, pairwise
from typing import Any

from eirstream.engines import Engine
from eirstream.tasks import MadeChunk

logger = logging.getLogger("eirstream.readahead")


# =============================================================================
# Chunks and the read-ahead that holds them.
# =============================================================================
DATA_HEAD, DATA_TAIL = b'{"type":"data","payload":[', b"]}"


class Chunk:
    """Indices made in one task and, once made, their samples in the same
    order: sample k is `blob[offsets[k]:offsets[k + 1]]`, with its comma,
    empty where the source raised (see sample_sources.MadeChunk)."""

    __slots__ = (
        "asked",
        "attempts",
        "blob",
        "done",
        "failed",
        "first",
        "indices",
        "made",
        "offsets",
        "positions",
        "served",
        "started",
        "urgent",
    )

    def __init__(self, indices: list[int], urgent: bool = False) -> None:
        self.indices = indices
        self.first = indices[0]
        # Where an index sits in the chunk: index - first, for a range.
        ranged = indices == list(range(self.first, self.first + len(indices)))
        self.positions = None if ranged else {i: at for at, i in enumerate(indices)}
        self.urgent = urgent  # made for a request that missed, not read ahead
        self.asked = urgent  # a request waits for it: never dropped as stale
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.attempts = self.served = 0
        self.made = self.failed = self.started = False
        self.blob = memoryview(b"")
        self.offsets: list[int] = []

    def position(self, index: int) -> int:
        return index - self.first if self.positions is None else self.positions[index]

    def made_from(self, made: MadeChunk) -> None:
        self.blob, self.offsets = memoryview(made.blob), made.offsets
        self.failed = bool(made.failures)
        self.made = True

    def samples(self, start: int, stop: int) -> tuple[memoryview, int]:
        """The samples at positions start..stop-1 that were made, as one slice
        of the blob, and how many they are."""
        offsets = self.offsets
        piece = self.blob[offsets[start] : offsets[stop]]
        if not self.failed:
            return piece, stop - start
        return piece, sum(
            1 for at in range(start, stop) if offsets[at + 1] > offsets[at]
        )


Span = tuple[Chunk, int, int]  # positions start..stop-1 of a made chunk


class HeldChunks:
    """The chunks the producer holds, made or in the making, and which chunk
    makes each index. Each index is in one held chunk at most."""

    def __init__(self) -> None:
        self.where: dict[int, Chunk] = {}  # index -> the chunk that makes it
        self.chunks: dict[Chunk, None] = {}  # the chunks in `where`, oldest first
        self.samples = 0  # in those chunks
        self.unserved = 0  # of those, the ones not served yet

    def hold(self, chunk: Chunk) -> None:
        self.where.update(dict.fromkeys(chunk.indices, chunk))
        self.chunks[chunk] = None
        self.samples += len(chunk.indices)
        self.unserved += len(chunk.indices)

    def served(self, chunk: Chunk, count: int) -> None:
        """`count` samples of `chunk` went out; a chunk served in full goes."""
        if chunk not in self.chunks:  # let go of while its request waited
            return
        left = len(chunk.indices) - chunk.served
        chunk.served += count
        self.unserved -= min(count, max(left, 0))
        if chunk.served >= len(chunk.indices):
            self.let_go(chunk)

    def let_go(self, chunk: Chunk) -> None:
        if self.chunks.pop(chunk, False) is False:
            return
        # map: no Python loop per index
        deque(map(self.where.__delitem__, chunk.indices), maxlen=0)
        self.samples -= len(chunk.indices)
        self.unserved -= max(len(chunk.indices) - chunk.served, 0)

    def trim(self, limit: int) -> None:
        """Let go of the oldest made chunks until at most `limit` samples are
        held (samples made ahead and never asked for must not pin memory)."""
        if self.samples <= limit:
            return
        for chunk in list(self.chunks):
            if self.samples <= limit:
                return
            if chunk.made:
                self.let_go(chunk)


def spans_of(
    indices: list[int], chunk_of: Callable[[int], Chunk | None]
) -> list[Span] | None:
    """`indices` as spans of consecutive samples of made chunks; None if one
    of them is not made (or not even asked for) yet."""
    spans: list[Span] = []
    at, wanted = 0, len(indices)
    while at < wanted:
        chunk = chunk_of(indices[at])
        if chunk is None or not chunk.made:
            return None
        start = chunk.position(indices[at])
        stop = min(len(chunk.indices), start + wanted - at)
        if chunk.indices[start:stop] != indices[at : at + stop - start]:
            stop = start + 1  # not in the chunk's order (after a rewind)
        spans.append((chunk, start, stop))
        at += stop - start
    return spans


class FailureLog:
    """Samples the source raised for: each logged once and counted.
    FAILURES_IN_A_ROW failures in a row mean the source is broken; `broken` then
    says why, and the server answers `getData` with it."""

    FAILURES_IN_A_ROW = 64
    LOGGED = 10_000  # distinct indices logged at most

    def __init__(self) -> None:
        self.count = 0
        self.last = ""
        self.broken: str | None = None
        self._in_a_row = 0
        self._logged: set[int] = set()

    def record(self, chunk: Chunk, failures: dict[int, str]) -> None:
        if not failures:
            self._in_a_row = 0
            return
        self.count += len(failures)
        for index, text in failures.items():
            self.last = f"index {index}: {text}"
            if index not in self._logged and len(self._logged) < self.LOGGED:
                self._logged.add(index)
                logger.error("the source raised for sample index %d: %s", index, text)
        for start, end in pairwise(chunk.offsets):  # in order: failures in a row
            self._in_a_row = 0 if end > start else self._in_a_row + 1
        if self._in_a_row >= self.FAILURES_IN_A_ROW and self.broken is None:
            self.broken = (
                f"the source raised for each of the last {self._in_a_row} "
                f"samples (last: {self.last}); it is not asked for "
                "more: fix --source and restart the server"
            )
            logger.error("%s", self.broken)


# =============================================================================
# The producer.
# =============================================================================
class SampleProducer:
    """The `data` replies for stream indices, made by an engine.

    `prefetch` keeps the stream's next `read_ahead` indices made or in the
    making, in chunks. A request is usually a span of consecutive samples of
    one or two made chunks, so its reply is a slice of each and no work per
    sample. A sample depends on its index alone, so a sample made ahead stays
    right whatever the stream does: after a rewind it is served when its
    index comes round again. A chunk is let go once all its samples were
    served; the chunks held have at most 2 x read_ahead + chunk_size samples
    (the oldest made ones go first).

    Order of work: at most `max_in_flight` tasks are at the engine at a time;
    the rest wait in a queue here. A request's own chunks go to the front of
    that queue, and read-ahead the stream no longer wants (it rewound) is
    dropped from it, so a request waits at most for the tasks in flight.

    Sizes: a task makes `chunk_size` samples, sized from the measured time a
    sample takes so that a task takes about the engine's `task_seconds`: a
    cheap source gets big tasks (each task costs the engine some fixed
    work), a heavy one small tasks that spread over every worker; large
    samples get fewer per task (at most MAX_CHUNK_BYTES of them).

    Faults: a chunk whose task was lost (its worker died, the pool broke) is
    made again, the same bytes since they depend on the index alone, up to
    MAX_ATTEMPTS times; a broken local pool is replaced, up to MAX_RESTARTS a
    minute. A sample whose source raised is left out of its reply (see
    `FailureLog`).
    """

    # Near-free samples want big chunks (a task costs a fixed amount of
    # shipping); much larger ones would hold the GIL for long in a thread.
    # Until a sample is measured, chunks are as small as they get: the first
    # tasks of a slow source must not hold up the requests behind them.
    MIN_CHUNK, MAX_CHUNK = 8, 16384
    MAX_CHUNK_BYTES = 16 * 2**20  # large samples get smaller chunks
    MAX_READ_AHEAD = 2 * MAX_CHUNK
    # The read-ahead holds at most this many bytes of samples, or one batch
    # if a batch is larger: large samples (images) must not fill the memory.
    MAX_AHEAD_BYTES = 64 * 2**20
    MAX_ATTEMPTS = 3
    MAX_RESTARTS = 5
    WAIT_WARNING = 10.0  # seconds a request waits before the log says why
    HEAL_AFTER = 1.0  # seconds a request waits before the engine is checked

    def __init__(self, engine: Engine, read_ahead: int = 1024) -> None:
        self.engine = engine
        self.read_ahead = read_ahead
        self.chunk_size = self.MIN_CHUNK  # samples per task, until measured
        self.held = HeldChunks()
        self.failures = FailureLog()
        self._sample_seconds = 0.0  # a moving average, once measured
        self._sample_bytes = 0.0  # the largest average of a chunk so far
        self._largest_request = 0
        self._queue: deque[Chunk] = deque()  # chunks not yet at the engine
        self._in_flight = 0
        self._missed = True  # the last request asked for samples nobody made
        self._closed = False
        self._restarts: deque[float] = deque()
        self._pool_broken: str | None = None
        self.samples_made = self.chunks_remade = self.pool_restarts = 0
        self.served_from_read_ahead = 0

    @property
    def broken(self) -> str | None:
        """Why no samples can be made any more, or None."""
        return self._pool_broken or self.failures.broken

    @property
    def max_in_flight(self) -> int:
        """Tasks at the engine at once: two per worker, one to run, one to
        start right after it."""
        return 2 * max(1, self.engine.live_workers())

    # -- requests ------------------------------------------------------------
    async def message(self, indices: list[int]) -> tuple[bytes, int]:
        """The `data` reply for these indices, as UTF-8 JSON, and how many
        samples it holds (samples whose source raised are left out)."""
        if self._closed:
            raise RuntimeError("server shutting down")
        if len(indices) > self._largest_request:
            self._largest_request = len(indices)
        if len(indices) * 2 > self.read_ahead:
            wanted = min(self.MAX_READ_AHEAD, len(indices) * 2)
            self.read_ahead = min(wanted, self._ahead_limit())
        spans = spans_of(indices, self.held.where.get)
        if spans is None:  # some of them are not made yet
            spans = await self._make_missing(indices)
        pieces: list[bytes | memoryview] = [DATA_HEAD]
        served = 0
        for chunk, start, stop in spans:
            piece, made = chunk.samples(start, stop)
            if made:
                pieces.append(piece)
                served += made
            if not chunk.urgent:
                self.served_from_read_ahead += stop - start
            self.held.served(chunk, stop - start)
        if not served:
            raise RuntimeError(
                f"the source raised for all {len(indices)} samples of this batch "
                f"(last: {self.failures.last}); see the server log"
            )
        pieces[-1] = pieces[-1][:-1]  # the last sample's comma
        pieces.append(DATA_TAIL)
        return b"".join(pieces), served  # the one copy of the samples

    async def _make_missing(self, indices: list[int]) -> list[Span]:
        """Wait for the chunks of `indices`: those queued move to the front
        of the queue, and those no chunk makes yet are asked for there (split
        so that every worker takes a share)."""
        where = self.held.where
        # Kept here: the read-ahead may let go of a chunk while we wait.
        owners = {index: where.get(index) for index in indices}
        unasked = [index for index, chunk in owners.items() if chunk is None]
        # Only then has the stream left the read-ahead (a rewind, say), for
        # the next prefetch to look at anew; a request that waits for chunks
        # in the making just found the workers behind.
        self._missed = self._missed or bool(unasked)
        ours = list({id(c): c for c in owners.values() if c is not None}.values())
        if unasked:
            workers = max(1, self.engine.live_workers())
            size = min(
                self.chunk_size, max(self.MIN_CHUNK, -(-len(unasked) // workers))
            )
            for at in range(0, len(unasked), size):
                chunk = Chunk(unasked[at : at + size], urgent=True)
                self.held.hold(chunk)
                owners.update(dict.fromkeys(chunk.indices, chunk))
                ours.append(chunk)
        for chunk in ours:  # (one at work now may come back to the queue)
            chunk.asked = True
        waiting = [c for c in ours if not c.started and not c.done.done()]
        if waiting:
            self._to_front(waiting)
        await self._wait_for(ours)
        spans = spans_of(indices, owners.get)
        if spans is None:  # _wait_for raises for a chunk that failed
            raise RuntimeError("a chunk was done but not made")
        return spans

    def _to_front(self, chunks: list[Chunk]) -> None:
        """Put `chunks` first in the queue, in order, and start them."""
        first = set(map(id, chunks))
        rest = [chunk for chunk in self._queue if id(chunk) not in first]
        self._queue = deque(chunks)
        self._queue.extend(rest)
        self._pump()

    async def _wait_for(self, chunks: list[Chunk]) -> None:
        pending = [c.done for c in chunks if not c.done.done()]
        waited = 0.0
        while pending:
            _, still = await asyncio.wait(pending, timeout=self.HEAL_AFTER)
            waited += self.HEAL_AFTER
            if still:
                self.engine.heal()
            if still and waited >= self.WAIT_WARNING:
                waited = 0.0
                logger.warning(
                    "a request has waited %.0f s for samples: %s (%d tasks queued "
                    "here, %d at the engine)",
                    self.WAIT_WARNING,
                    self.engine.why_waiting(),
                    len(self._queue),
                    self._in_flight,
                )
            pending = list(still)
        for chunk in chunks:
            chunk.done.result()  # raises if the chunk could not be made

    def prefetch(self, peek: Callable[[int], Sequence[int]]) -> None:
        """Top up the read-ahead from `peek(n)`, the stream's next n indices,
        and drop queued read-ahead that is no longer among them.

        Cheap when there is nothing to do: `peek` is called only when fewer
        than half the read-ahead is left or the last request missed.
        """
        held = self.held
        if self._closed or (not self._missed and held.unserved >= self.read_ahead // 2):
            return
        missed, self._missed = self._missed, False
        upcoming = peek(self.read_ahead)
        if missed and self._queue:
            self._drop_stale(upcoming)
        # What is held is usually what comes first: look at the rest only
        # (had it been otherwise, a request misses and the next call looks
        # at everything).
        known = 0 if missed else min(held.unserved, len(upcoming))
        fresh = filterfalse(held.where.__contains__, islice(upcoming, known, None))
        # An index comes again in the next epoch: read ahead up to its first
        # coming only, since a chunk holds each index once (dict keeps order).
        new = list(dict.fromkeys(fresh))
        size = self.chunk_size
        for start in range(0, len(new), size):
            chunk = Chunk(new[start : start + size])
            held.hold(chunk)
            self._queue.append(chunk)
        held.trim(2 * self.read_ahead + size)
        self._pump()

    def _drop_stale(self, upcoming: Sequence[int]) -> None:
        """Let go of queued read-ahead chunks with none of the upcoming
        indices: the stream moved away from them (a rewind)."""
        wanted = set(upcoming)
        self._drop_queued(
            lambda chunk: not wanted.isdisjoint(chunk.indices),
            "read ahead for indices the stream left",
        )

    def _drop_queued(self, wanted: Callable[[Chunk], bool], why: str) -> None:
        """Let go of the queued read-ahead chunks that `wanted` refuses, in
        queue order; a chunk a request waits for always stays."""
        keep: deque[Chunk] = deque()
        for chunk in self._queue:
            if chunk.asked or wanted(chunk):
                keep.append(chunk)
            else:
                self._fail(chunk, why)
        self._queue = keep

    # -- tasks ---------------------------------------------------------------
    def _pump(self) -> None:
        """Hand queued chunks to the engine, up to max_in_flight."""
        queue = self._queue
        while queue and self._in_flight < self.max_in_flight and not self._closed:
            chunk = queue.popleft()
            if self.broken:
                self._fail(chunk, self.broken)
                continue
            if chunk.done.done():
                continue
            generation = self.engine.generation
            try:
                task = self.engine.submit(chunk.indices)
            except BrokenExecutor:  # found broken before a task told us
                queue.appendleft(chunk)
                self._restart(generation, "the local worker pool broke")
                continue
            chunk.started = True
            self._in_flight += 1
            asyncio.wrap_future(task).add_done_callback(
                partial(self._task_done, chunk, generation)
            )

    def _task_done(
        self, chunk: Chunk, generation: int, task: asyncio.Future[MadeChunk]
    ) -> None:
        self._in_flight -= 1
        problem = None if task.cancelled() else task.exception()  # (retrieved)
        if self._closed or task.cancelled():  # cancelled: only at shutdown
            self._fail(chunk, "server shutting down")
            return
        if problem is None:
            try:
                self._finish(chunk, task.result())
            except Exception as exc:  # a malformed result must not strand requests
                logger.exception(
                    "the result of a task for %d samples", len(chunk.indices)
                )
                self._fail(chunk, f"a task's result was unusable: {exc!r}")
        else:
            chunk.attempts += 1
            chunk.started = False
            if isinstance(problem, BrokenExecutor):
                self._restart(generation, f"a local worker process died ({problem})")
            if self.broken or chunk.attempts >= self.MAX_ATTEMPTS:
                self._fail(chunk, self.broken or f"{type(problem).__name__}: {problem}")
            else:
                self.chunks_remade += 1
                self._queue.appendleft(chunk)
        self._pump()

    def _restart(self, generation: int, why: str) -> None:
        """Once per broken executor: a new one, unless they keep breaking."""
        if generation != self.engine.generation:
            return  # the executor this task ran on has been replaced already
        now = time.monotonic()
        self._restarts.append(now)
        while now - self._restarts[0] > 60:
            self._restarts.popleft()
        if len(self._restarts) > self.MAX_RESTARTS:
            self._pool_broken = (
                f"sample workers keep dying ({len(self._restarts)} times in a "
                f"minute; last: {why}); restart the server after fixing the cause"
            )
            logger.error("%s", self._pool_broken)
            return
        self.pool_restarts += 1
        logger.warning(
            "%s; starting new worker processes and making its unfinished chunks again",
            why,
        )
        self.engine.restart()

    def _finish(self, chunk: Chunk, made: MadeChunk) -> None:
        wanted, size = len(chunk.indices), len(made.blob)
        if len(made.offsets) != wanted + 1 or made.offsets[-1] != size:
            ends = made.offsets[-1] if made.offsets else None
            raise ValueError(
                f"{len(made.offsets) - 1} samples ({size} bytes, offsets up to "
                f"{ends}) for {wanted} indices"
            )
        self._resize(made.seconds / wanted, size / wanted)
        chunk.made_from(made)
        self.samples_made += wanted - len(made.failures)
        self.failures.record(chunk, made.failures)
        self.engine.observe(made)
        if not chunk.done.done():
            chunk.done.set_result(None)

    def _resize(self, sample_seconds: float, sample_bytes: float) -> None:
        """Chunks of about the engine's task_seconds of work and at most
        MAX_CHUNK_BYTES, and a read-ahead of at least two chunks per worker."""
        average = self._sample_seconds
        average = 0.8 * average + 0.2 * sample_seconds if average else sample_seconds
        self._sample_seconds = average
        size = int(self.engine.task_seconds / max(average, 1e-9))
        size = min(size, int(self.MAX_CHUNK_BYTES / max(sample_bytes, 1.0)))
        self.chunk_size = max(self.MIN_CHUNK, min(self.MAX_CHUNK, size))
        self._sample_bytes = max(self._sample_bytes, sample_bytes)
        wanted = 2 * self.chunk_size * max(1, self.engine.live_workers())
        before = self.read_ahead
        self.read_ahead = max(self.read_ahead, min(self.MAX_READ_AHEAD, wanted))
        self.read_ahead = min(self.read_ahead, self._ahead_limit())
        if self.read_ahead < before:
            self._trim_queue()

    def _ahead_limit(self) -> int:
        """The most samples the read-ahead may hold: MAX_AHEAD_BYTES of them
        (once their size is known), or the largest request if that is more."""
        if not self._sample_bytes:
            return self.MAX_READ_AHEAD
        by_bytes = int(self.MAX_AHEAD_BYTES / self._sample_bytes)
        return max(
            self.MIN_CHUNK, self._largest_request, min(by_bytes, self.MAX_READ_AHEAD)
        )

    def _trim_queue(self) -> None:
        """Let go of queued read-ahead past the read-ahead's (new) size."""
        room = self.read_ahead

        def within(chunk: Chunk) -> bool:
            nonlocal room
            fits, room = room > 0, room - len(chunk.indices)
            return fits

        self._drop_queued(within, "read ahead past the read-ahead's size")

    def _fail(self, chunk: Chunk, message: str) -> None:
        self.held.let_go(chunk)
        if not chunk.done.done():
            chunk.done.set_exception(RuntimeError(message))
            chunk.done.add_done_callback(_consume_exception)

    # -- reporting and shutdown -----------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters for the server's `status` reply."""
        return {
            "engine": self.engine.kind,
            "workers": self.engine.live_workers(),
            "chunks_in_flight": self._in_flight,
            "chunks_queued": len(self._queue),
            "read_ahead": self.read_ahead,
            "chunk": self.chunk_size,
            "samples_ahead": self.held.unserved,  # made or in the making
            "samples_held": self.held.samples,  # in memory here, served or not
            "samples_made": self.samples_made,
            "samples_failed": self.failures.count,
            "samples_served_from_read_ahead": self.served_from_read_ahead,
            "chunks_remade": self.chunks_remade,
            "pool_restarts": self.pool_restarts,
            "worker_pids": self.engine.pids(),
        }

    def close(self) -> None:
        """Stop making samples; requests still waiting get an error."""
        self._closed = True
        for chunk in [*self._queue, *self.held.chunks]:
            self._fail(chunk, "server shutting down")
        self._queue.clear()
        self.engine.close()


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A chunk made ahead may fail with nobody awaiting it; don't warn about that.
    if not future.cancelled():
        future.exception()
