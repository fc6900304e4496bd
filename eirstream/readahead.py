"""The read-ahead: stream indices -> `data` replies, made ahead of need.

A sample is a pure function of its index, so making samples is the one job
that can run anywhere: the stream (cursor, validation ids) stays in the
server, and only "make these indices" goes out, a *task* of indices at a
time, to an *engine* (engines.py). `SampleProducer` keeps the stream's next
indices made or in the making (the read-ahead, `HeldTasks`), hands tasks to
the engine, a request's own tasks first, and answers each request with
slices of made tasks (replies.py). A task's life is a state table
(tasks.py); how large tasks and the read-ahead are is pure arithmetic
(sizing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor
from functools import partial
from itertools import filterfalse, islice, pairwise
from typing import Any

from eirstream.engines import Engine
from eirstream.making import MadeTask
from eirstream.replies import Span, data_reply, spans_of
from eirstream.sizing import (
    SizeBounds,
    Sizes,
    after_request,
    after_task,
    first_sizes,
    request_task_size,
)
from eirstream.tasks import QUEUED, RUNNING, HeldTasks, Task, TaskEvent

logger = logging.getLogger("eirstream.readahead")
ASKED = ", asked for by a request"  # ends the log line of a task a request waits for


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

    def record(self, task: Task, failures: dict[int, str]) -> None:
        """Count and log the failures of a made task, in its order."""
        if not failures:
            self._in_a_row = 0
            return
        self.count += len(failures)
        for index, text in failures.items():
            self.last = f"index {index}: {text}"
            if index not in self._logged and len(self._logged) < self.LOGGED:
                self._logged.add(index)
                logger.error("the source raised for sample index %d: %s", index, text)
        for start, end in pairwise(task.offsets):  # in order: failures in a row
            self._in_a_row = 0 if end > start else self._in_a_row + 1
        if self._in_a_row >= self.FAILURES_IN_A_ROW and self.broken is None:
            self.broken = (
                f"the source raised for each of the last {self._in_a_row} "
                f"samples (last: {self.last}); it is not asked for "
                "more: fix --source and restart the server"
            )
            logger.error("%s", self.broken)


class Lane:
    """One stream's read-ahead: the tasks held for it, and whether its last
    request asked for samples nobody made (then the next prefetch looks at
    the whole read-ahead anew)."""

    __slots__ = ("held", "missed", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = HeldTasks()
        self.missed = True


class SampleProducer:
    """The `data` replies for stream indices, made by an engine.

    `prefetch` keeps a stream's next indices made or in the making, in
    tasks: `read_ahead` of them, shared equally by the streams that read at
    the time (each stream's share is its `Lane`), so the read-ahead is
    bounded over all streams together. A sample depends on its index
    alone, so a sample made ahead stays right whatever the stream does:
    after a rewind it is served when its index comes round again. A task is
    let go once all its samples were served; the tasks held for a stream
    have at most 2 x its share + task_size
    samples (the oldest made ones go first). The streams share the engine
    and the queue; each one's tasks are its own, so one stream's rewind or
    pause never drops another's read-ahead.

    Order of work: at most `max_in_flight` tasks are at the engine at a time;
    the rest wait in a queue here. A request's own tasks go to the front of
    that queue, and read-ahead the stream no longer wants (it rewound) is
    dropped from it, so a request waits at most for the tasks in flight.

    Sizes: a task makes `task_size` samples, about the engine's
    `task_seconds` of work, and the read-ahead grows with the tasks and the
    requests, within `bounds` (sizing.py says how).

    Faults: a task that was lost (its worker died, the pool broke) is made
    again, the same bytes since they depend on the index alone, up to
    MAX_ATTEMPTS times; a broken local pool is replaced, up to MAX_RESTARTS a
    minute. A sample whose source raised is left out of its reply (see
    `FailureLog`).
    """

    bounds = SizeBounds()
    MAX_ATTEMPTS = 3
    MAX_RESTARTS = 5
    WAIT_WARNING = 10.0  # seconds a request waits before the log says why
    HEAL_AFTER = 1.0  # seconds a request waits before the engine is checked

    def __init__(
        self,
        engine: Engine,
        read_ahead: int = 1024,
        bounds: SizeBounds | None = None,
    ) -> None:
        self.engine = engine
        if bounds is not None:
            self.bounds = bounds
        self.sizes: Sizes = first_sizes(read_ahead, self.bounds)
        self.lanes: dict[str, Lane] = {}
        self.failures = FailureLog()
        self._queue: deque[Task] = deque()  # tasks not yet at the engine
        self._in_flight = 0
        self._closed = False
        self._restart_times: deque[float] = deque()  # of the pool, last minute
        self._pool_broken: str | None = None
        self.samples_made = self.tasks_remade = self.pool_restarts = 0
        self.tasks_made = self.tasks_failed = 0  # failed: lost at the engine
        self.served_from_read_ahead = 0

    def lane(self, name: str = "default") -> Lane:
        """The read-ahead of the stream `name`, new if it has none yet."""
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = Lane(name)
        return lane

    @property
    def held(self) -> HeldTasks:
        """The default stream's tasks (one-stream callers and tests)."""
        return self.lane().held

    @property
    def read_ahead(self) -> int:
        """Samples kept made or in the making ahead of the stream."""
        return self.sizes.read_ahead

    @property
    def task_size(self) -> int:
        """Samples per task of read-ahead."""
        return self.sizes.task_size

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
    async def message(
        self, indices: list[int], lane: Lane | None = None
    ) -> tuple[bytes, int]:
        """The `data` reply for these indices of a stream (`lane`; None: the
        default stream), as UTF-8 JSON, and how many samples it holds
        (samples whose source raised are left out)."""
        if self._closed:
            raise RuntimeError("server shutting down")
        lane = lane or self.lane()
        self.sizes = after_request(self.sizes, self.bounds, len(indices))
        spans = spans_of(indices, lane.held.where.get)
        if spans is None:  # some of them are not made yet
            spans = await self._make_missing(indices, lane)
        reply, served = data_reply(spans)
        for task, start, stop in spans:
            if not task.for_request:
                self.served_from_read_ahead += stop - start
            if task.holder is not None:
                task.holder.served(task, stop - start)
        if not served:
            raise RuntimeError(
                f"the source raised for all {len(indices)} samples of this batch "
                f"(last: {self.failures.last}); see the server log"
            )
        return reply, served

    async def _make_missing(self, indices: list[int], lane: Lane) -> list[Span]:
        """Wait for the tasks of `indices`: those queued move to the front
        of the queue, and those no task makes yet are asked for there (split
        so that every worker takes a share)."""
        held = lane.held
        where = held.where
        # Kept here: the read-ahead may let go of a task while we wait.
        owners = {index: where.get(index) for index in indices}
        unasked = [index for index, task in owners.items() if task is None]
        # Only then has the stream left the read-ahead (a rewind, say), for
        # the next prefetch to look at anew; a request that waits for tasks
        # in the making just found the workers behind.
        lane.missed = lane.missed or bool(unasked)
        ours = list({id(t): t for t in owners.values() if t is not None}.values())
        if unasked:
            workers = self.engine.live_workers()
            size = request_task_size(self.sizes, self.bounds, len(unasked), workers)
            for at in range(0, len(unasked), size):
                task = Task(unasked[at : at + size], for_request=True)
                held.hold(task)
                owners.update(dict.fromkeys(task.indices, task))
                ours.append(task)
        for task in ours:  # (one at work now may come back to the queue)
            task.asked = True
        waiting = [task for task in ours if task.state is QUEUED]
        if waiting:
            self._to_front(waiting)
        await self._wait_for(ours)
        spans = spans_of(indices, owners.get)
        if spans is None:  # _wait_for raises for a task that failed
            raise RuntimeError("a task was done but not made")
        return spans

    def _to_front(self, tasks: list[Task]) -> None:
        """Put `tasks` first in the queue, in order, and start them."""
        first = set(map(id, tasks))
        rest = [task for task in self._queue if id(task) not in first]
        self._queue = deque(tasks)
        self._queue.extend(rest)
        self._pump()

    async def _wait_for(self, tasks: list[Task]) -> None:
        pending = [task.done for task in tasks if not task.done.done()]
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
        for task in tasks:
            task.done.result()  # raises if the task could not be made

    def prefetch(
        self,
        peek: Callable[[int], Sequence[int]],
        lane: Lane | None = None,
        streams: int = 1,
    ) -> None:
        """Top up a stream's read-ahead (`lane`; None: the default stream)
        from `peek(n)`, its next n indices, and drop its queued read-ahead
        that is no longer among them. `streams` streams are reading: this
        one's share is 1/streams of the read-ahead.

        Cheap when there is nothing to do: `peek` is called only when fewer
        than half the share is left or the last request missed.
        """
        lane = lane or self.lane()
        held = lane.held
        share = max(self.read_ahead // max(1, streams), self.bounds.min_task)
        if self._closed or (not lane.missed and held.unserved >= share // 2):
            return
        missed, lane.missed = lane.missed, False
        upcoming = peek(share)
        if missed and self._queue:
            self._drop_stale(upcoming, held)
        # What is held is usually what comes first: look at the rest only
        # (had it been otherwise, a request misses and the next call looks
        # at everything).
        known = 0 if missed else min(held.unserved, len(upcoming))
        fresh = filterfalse(held.where.__contains__, islice(upcoming, known, None))
        # An index comes again in the next epoch: read ahead up to its first
        # coming only, since a task holds each index once (dict keeps order).
        new = list(dict.fromkeys(fresh))
        size = self.task_size
        for start in range(0, len(new), size):
            task = Task(new[start : start + size])
            held.hold(task)
            self._queue.append(task)
        held.trim(2 * share + size)
        self._pump()

    def release(self, lane: Lane) -> None:
        """A stream with no connection left: its queued read-ahead goes, and
        its tasks made or at the engine are let go (the read-ahead is for
        those who read; one at the engine would otherwise be kept, made, for
        as long as the stream stays idle). A task a request waits for stays."""
        self._drop_queued(
            lambda task: task.holder is not lane.held, "read ahead for an idle stream"
        )
        held = lane.held
        for task in [task for task in held.tasks if not task.asked]:
            held.let_go(task)
        lane.missed = True

    def _drop_stale(self, upcoming: Sequence[int], held: HeldTasks) -> None:
        """Give up a stream's queued read-ahead tasks with none of its
        upcoming indices: the stream moved away from them (a rewind)."""
        wanted = set(upcoming)
        self._drop_queued(
            lambda task: task.holder is not held or not wanted.isdisjoint(task.indices),
            "read ahead for indices the stream left",
        )

    def _drop_queued(self, wanted: Callable[[Task], bool], why: str) -> None:
        """Give up the queued read-ahead tasks that `wanted` refuses, in
        queue order; a task a request waits for always stays."""
        keep: deque[Task] = deque()
        for task in self._queue:
            if task.asked or wanted(task):
                keep.append(task)
            else:
                self._give_up(task, why)
        self._queue = keep

    # -- tasks at the engine ---------------------------------------------------
    def _pump(self) -> None:
        """Hand queued tasks to the engine, up to max_in_flight."""
        queue = self._queue
        while queue and self._in_flight < self.max_in_flight and not self._closed:
            task = queue.popleft()
            if self.broken:
                self._give_up(task, self.broken)
                continue
            if task.state is not QUEUED:
                continue
            restarts = self.engine.restarts
            try:
                future = self.engine.submit(task.indices)
            except BrokenExecutor:  # found broken before a task told us
                queue.appendleft(task)
                self._restart(restarts, "the local worker pool broke")
                continue
            task.enter(TaskEvent.SUBMITTED)
            self._in_flight += 1
            asyncio.wrap_future(future).add_done_callback(
                partial(self._task_done, task, restarts)
            )

    def _task_done(
        self, task: Task, restarts: int, future: asyncio.Future[MadeTask]
    ) -> None:
        """What the engine reports for `task`, submitted when the engine had
        had `restarts` restarts: its samples, or that it was lost."""
        self._in_flight -= 1
        problem = None if future.cancelled() else future.exception()  # (retrieved)
        if self._closed or future.cancelled():  # cancelled: only at shutdown
            self._give_up(task, "server shutting down")
            return
        if task.state is RUNNING:  # else given up at the engine: nothing to do
            if problem is None:
                self._finish(task, future.result())
            else:
                self._lost(task, restarts, problem)
        self._pump()

    def _lost(self, task: Task, restarts: int, problem: BaseException) -> None:
        """Queue a lost task again, first, or give it up after MAX_ATTEMPTS."""
        task.enter(TaskEvent.LOST)
        self.tasks_failed += 1
        if isinstance(problem, BrokenExecutor):
            self._restart(restarts, f"a local worker process died ({problem})")
        if self.broken or task.attempts >= self.MAX_ATTEMPTS:
            self._give_up(task, self.broken or f"{type(problem).__name__}: {problem}")
        else:
            self.tasks_remade += 1
            self._queue.appendleft(task)

    def _restart(self, restarts: int, why: str) -> None:
        """Once per broken executor: a new one, unless they keep breaking."""
        if restarts != self.engine.restarts:
            return  # the executor this task ran on has been replaced already
        now = time.monotonic()
        self._restart_times.append(now)
        while now - self._restart_times[0] > 60:
            self._restart_times.popleft()
        if len(self._restart_times) > self.MAX_RESTARTS:
            self._pool_broken = (
                f"sample workers keep dying ({len(self._restart_times)} times in a "
                f"minute; last: {why}); restart the server after fixing the cause"
            )
            logger.error("%s", self._pool_broken)
            return
        self.pool_restarts += 1
        logger.warning(
            "%s; starting new worker processes and making its unfinished tasks again",
            why,
        )
        self.engine.restart()

    def _finish(self, task: Task, made: MadeTask) -> None:
        """Keep a made task's samples, once they prove whole, and learn from
        what it cost; a malformed result fails the task, not the server."""
        try:
            check_made(task, made)
            self._resize(
                made.seconds / len(task.indices), len(made.blob) / len(task.indices)
            )
            task.enter(TaskEvent.FINISHED, made=made)
            logger.debug(
                "made a task of %d samples from index %d%s",
                len(task.indices),
                task.first,
                ASKED if task.asked else "",
            )
            self.samples_made += len(task.indices) - len(made.failures)
            self.tasks_made += 1
            self.failures.record(task, made.failures)
            self.engine.observe(made)
        except Exception as exc:  # a malformed result must not strand requests
            logger.exception("the result of a task for %d samples", len(task.indices))
            self._give_up(task, f"a task's result was unusable: {exc!r}")

    def _resize(self, seconds_each: float, bytes_each: float) -> None:
        """New sizes from a made task's cost; queued read-ahead past a
        smaller read-ahead goes."""
        before = self.read_ahead
        self.sizes = after_task(
            self.sizes,
            self.bounds,
            seconds_each=seconds_each,
            bytes_each=bytes_each,
            task_seconds=self.engine.task_seconds,
            workers=self.engine.live_workers(),
        )
        if self.read_ahead < before:
            self._trim_queue()

    def _trim_queue(self) -> None:
        """Give up queued read-ahead past the read-ahead's (new) size."""
        room = self.read_ahead

        def within(task: Task) -> bool:
            nonlocal room
            fits, room = room > 0, room - len(task.indices)
            return fits

        self._drop_queued(within, "read ahead past the read-ahead's size")

    def _give_up(self, task: Task, why: str) -> None:
        if task.holder is not None:
            task.holder.let_go(task)
        task.enter(TaskEvent.GIVEN_UP, why=why)

    # -- reporting and shutdown -----------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters for the server's `status` reply (samples ahead and held:
        made or in the making, over all streams; bytes held: made)."""
        lanes = list(self.lanes.values())
        return {
            "engine": self.engine.kind,
            "workers": self.engine.live_workers(),
            "tasks_in_flight": self._in_flight,
            "tasks_queued": len(self._queue),
            "read_ahead": self.read_ahead,
            "task_size": self.task_size,
            "samples_ahead": sum(lane.held.unserved for lane in lanes),
            "samples_held": sum(lane.held.samples for lane in lanes),
            "bytes_held": sum(lane.held.made_bytes for lane in lanes),
            "samples_made": self.samples_made,
            "samples_failed": self.failures.count,
            "samples_served_from_read_ahead": self.served_from_read_ahead,
            "tasks_made": self.tasks_made,
            "tasks_failed": self.tasks_failed,
            "tasks_remade": self.tasks_remade,
            "pool_restarts": self.pool_restarts,
            "worker_pids": self.engine.pids(),
        }

    def close(self) -> None:
        """Stop making samples; requests still waiting get an error."""
        self._closed = True
        held = [task for lane in self.lanes.values() for task in lane.held.tasks]
        for task in [*self._queue, *held]:
            self._give_up(task, "server shutting down")
        self._queue.clear()
        self.engine.close()


def check_made(task: Task, made: MadeTask) -> None:
    """ValueError unless `made` has a sample, however empty, for each index
    of `task`, and offsets that end where its blob ends."""
    wanted, size = len(task.indices), len(made.blob)
    if len(made.offsets) != wanted + 1 or made.offsets[-1] != size:
        ends = made.offsets[-1] if made.offsets else None
        raise ValueError(
            f"{len(made.offsets) - 1} samples ({size} bytes, offsets up to "
            f"{ends}) for {wanted} indices"
        )
