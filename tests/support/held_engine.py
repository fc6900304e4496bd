"""`HeldEngine`: an `Engine` (eirstream/engines.py) whose tasks end only when
the test says, so that the producer's queue and its tasks at work stay as
they are while a test looks at them. Samples are made in the test's thread
by `encode_task`, the same bytes a worker makes.
"""

from __future__ import annotations

from concurrent.futures import Future

from data_simulator import SimulatedHealthData
from eirstream.making import MadeTask, encode_task


class HeldEngine:
    """An `Engine` of one worker whose tasks finish when `finish` (one) or
    `finish_all` (every one not finished yet) is called."""

    kind, task_seconds, restarts = "held", 0.05, 0

    def __init__(self, source: SimulatedHealthData) -> None:
        self.source = source
        self.tasks: list[tuple[list[int], Future[MadeTask]]] = []

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        self.tasks.append((indices, Future()))
        return self.tasks[-1][1]

    def finish(self, number: int) -> None:
        """Make the `number`-th task submitted (from 0)."""
        indices, task = self.tasks[number]
        task.set_result(encode_task(self.source, indices))

    def finish_all(self) -> int:
        """Make every task submitted and not made yet; how many they were."""
        waiting = [n for n, (_, task) in enumerate(self.tasks) if not task.done()]
        for number in waiting:
            self.finish(number)
        return len(waiting)

    def live_workers(self) -> int:
        return 1

    def observe(self, made: MadeTask) -> None: ...
    def restart(self) -> None: ...
    def heal(self) -> None: ...
    def why_waiting(self) -> str:
        return "held by the test"

    def pids(self) -> list[int]:
        return []

    def close(self) -> None: ...
