"""The life of a task, and the tasks the read-ahead holds.

A *task* is the unit of work the producer (readahead.py) sends to an
engine: a list of sample indices to make. Its result is a `MadeTask`
(making.py). The rules of a task's life:

1. A task starts QUEUED: held by the producer, waiting in its queue.
2. Only a QUEUED task goes to the engine (SUBMITTED: RUNNING), one engine
   task at a time.
3. A RUNNING task whose engine task was lost (a worker died, the pool
   broke) goes back to the queue (LOST: QUEUED), to be made again: its
   samples depend on their indices alone, so the bytes are the same.
   `attempts` counts those losses.
4. A RUNNING task whose samples came back is MADE (FINISHED). MADE is
   final: a made task is only ever read.
5. A task the producer gives up on (GIVEN_UP: dropped as read-ahead the
   stream no longer wants, lost too often, a broken source, shutdown) is
   FAILED, and FAILED is final. A task at the engine cannot be called back:
   giving it up takes effect at once, and the producer ignores what its
   engine task reports later. Giving up a task that is MADE or FAILED
   already changes nothing (shutdown gives up every task it holds).
6. `done` resolves exactly once, when the task becomes MADE or FAILED:
   a request waiting for the task then gets its samples or the reason.

Every change of state goes through `Task.enter` and TASK_LIFE_CYCLE below.
Who wants a task is no part of its life: `for_request` (made for a request
that missed, not read ahead) and `asked` (a request waits for it, so it is
never dropped as stale) are plain marks the producer sets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import StrEnum
from typing import Any

from eirstream.making import MadeTask


class TaskState(StrEnum):
    QUEUED = "queued"  # held, waiting in the producer's queue (rule 1)
    RUNNING = "running"  # at the engine (rule 2)
    MADE = "made"  # its samples are here (rule 4)
    FAILED = "failed"  # given up: it will not be made (rule 5)


class TaskEvent(StrEnum):
    SUBMITTED = "submitted"  # handed to the engine
    LOST = "lost"  # its engine task failed; it is to be made again
    FINISHED = "finished"  # its engine task gave back its samples
    GIVEN_UP = "given-up"  # the producer will not have it made


QUEUED, RUNNING, MADE, FAILED = TaskState

TASK_LIFE_CYCLE: dict[TaskState, dict[TaskEvent, TaskState]] = {
    # state -> {event -> next state}
    QUEUED: {TaskEvent.SUBMITTED: RUNNING, TaskEvent.GIVEN_UP: FAILED},
    RUNNING: {
        TaskEvent.FINISHED: MADE,
        TaskEvent.LOST: QUEUED,
        TaskEvent.GIVEN_UP: FAILED,
    },
    MADE: {TaskEvent.GIVEN_UP: MADE},  # rule 5: final
    FAILED: {TaskEvent.GIVEN_UP: FAILED},  # rule 5: final
}


class Task:
    """The indices of one task and, once MADE, their samples in the same
    order: sample k is `blob[offsets[k]:offsets[k + 1]]`, with its comma,
    empty where the source raised (see making.MadeTask)."""

    __slots__ = (
        "asked",
        "attempts",
        "blob",
        "done",
        "first",
        "for_request",
        "has_failures",
        "holder",
        "indices",
        "offsets",
        "positions",
        "served",
        "state",
    )

    def __init__(self, indices: list[int], for_request: bool = False) -> None:
        self.indices = indices
        self.first = indices[0]
        # Where an index sits in the task: index - first, for a range.
        ranged = indices == list(range(self.first, self.first + len(indices)))
        self.positions = None if ranged else {i: at for at, i in enumerate(indices)}
        self.for_request = for_request  # made for a request that missed
        self.asked = for_request  # a request waits for it: never dropped as stale
        self.state = QUEUED
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.attempts = self.served = 0
        self.has_failures = False  # the source raised for some of its samples
        self.holder: HeldTasks | None = None  # the read-ahead that holds it
        self.blob = memoryview(b"")
        self.offsets: list[int] = []

    def enter(
        self, event: TaskEvent, *, made: MadeTask | None = None, why: str = ""
    ) -> None:
        """The one place a task changes state: as TASK_LIFE_CYCLE says, or
        RuntimeError for a transition the table does not have. LOST counts
        an attempt; entering MADE keeps `made` (FINISHED gives it) and
        entering FAILED gives `why` to those who wait (rule 6)."""
        allowed = TASK_LIFE_CYCLE[self.state]
        if event not in allowed:
            raise RuntimeError(f"no transition from {self.state!r} on {event!r}")
        if event is TaskEvent.FINISHED and made is None:
            raise RuntimeError("a task cannot finish without its samples")
        state = allowed[event]
        if event is TaskEvent.LOST:
            self.attempts += 1
        if state is self.state:
            return
        self.state = state
        if made is not None and state is MADE:
            self.blob, self.offsets = memoryview(made.blob), made.offsets
            self.has_failures = bool(made.failures)
            self.done.set_result(None)
        elif state is FAILED:
            self.done.set_exception(RuntimeError(why))
            self.done.add_done_callback(_consume_exception)

    def position(self, index: int) -> int:
        return index - self.first if self.positions is None else self.positions[index]

    def samples(self, start: int, stop: int) -> tuple[memoryview, int]:
        """The samples at positions start..stop-1 that were made, as one slice
        of the blob, and how many they are."""
        offsets = self.offsets
        piece = self.blob[offsets[start] : offsets[stop]]
        if not self.has_failures:
            return piece, stop - start
        return piece, sum(
            1 for at in range(start, stop) if offsets[at + 1] > offsets[at]
        )


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A task made ahead may fail with nobody awaiting it; don't warn about that.
    if not future.cancelled():
        future.exception()


class HeldTasks:
    """The tasks the producer holds for one stream, made or in the making,
    and which task makes each index. Each index is in one held task at most."""

    def __init__(self) -> None:
        self.where: dict[int, Task] = {}  # index -> the task that makes it
        self.tasks: dict[Task, None] = {}  # the tasks in `where`, oldest first
        self.samples = 0  # in those tasks
        self.unserved = 0  # of those, the ones not served yet

    def hold(self, task: Task) -> None:
        task.holder = self
        self.where.update(dict.fromkeys(task.indices, task))
        self.tasks[task] = None
        self.samples += len(task.indices)
        self.unserved += len(task.indices)

    def served(self, task: Task, count: int) -> None:
        """`count` samples of `task` went out; a task served in full goes."""
        if task not in self.tasks:  # let go of while its request waited
            return
        left = len(task.indices) - task.served
        task.served += count
        self.unserved -= min(count, max(left, 0))
        if task.served >= len(task.indices):
            self.let_go(task)

    def let_go(self, task: Task) -> None:
        if self.tasks.pop(task, False) is False:
            return
        # map: no Python loop per index
        deque(map(self.where.__delitem__, task.indices), maxlen=0)
        self.samples -= len(task.indices)
        self.unserved -= max(len(task.indices) - task.served, 0)

    @property
    def made_bytes(self) -> int:
        """Bytes of the samples made and held."""
        return sum(len(task.blob) for task in self.tasks)

    def trim(self, limit: int) -> None:
        """Let go of the oldest made tasks until at most `limit` samples are
        held (samples made ahead and never asked for must not pin memory)."""
        if self.samples <= limit:
            return
        for task in list(self.tasks):
            if self.samples <= limit:
                return
            if task.state is MADE:
                self.let_go(task)
