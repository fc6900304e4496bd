"""Engines: where a task's indices become a `MadeTask`.

Every engine implements `Engine` below:

  `ProcessEngine`  local worker processes (ProcessPoolExecutor, spawned);
  `ThreadEngine`   one thread of the server process (`--workers 0`);
  `DefaultEngine`  the default `--workers`: processes, until the samples turn
                   out quicker to make than to receive from a process;
  `DaskEngine`     a Dask cluster (dask_engine.py, imported for `--cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import (
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from functools import partial
from typing import Any, Protocol

from eirstream.making import MadeTask, cached_source, encode_task, make_task
from eirstream.sources import SampleSource

logger = logging.getLogger("eirstream.engines")


class Engine(Protocol):
    """Where samples are made. The producer uses nothing else of an engine.

    `restarts` counts the times the engine's executor was replaced (a
    broken pool, a hand-over), so that a task lost by an old executor does
    not get the new one replaced too.
    """

    kind: str  # "processes", "thread" or "dask": for `status` and the log
    task_seconds: float  # work per task: long enough to dwarf a task's overhead
    restarts: int

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        """Start making the samples of `indices`."""
        ...

    def live_workers(self) -> int:
        """How many tasks can run at once now."""
        ...

    def observe(self, made: MadeTask) -> None:
        """Learn from what a made task cost (the default engine chooses by it)."""
        ...

    def restart(self) -> None:
        """Replace an executor that reported itself broken."""
        ...

    def heal(self) -> None:
        """Called while a request waits: notice a dead worker the executor missed."""
        ...

    def why_waiting(self) -> str:
        """One line for the log when a request has waited long."""
        ...

    def pids(self) -> list[int]:
        """The local worker processes, for `status`."""
        ...

    def close(self) -> None:
        """Stop making samples; tasks not yet done are dropped."""
        ...


def _start_local_worker(spec: str, settings: tuple[tuple[str, Any], ...]) -> None:
    """Initializer of a local worker process: load the source once, yield the
    CPU to the server's event loop when both want it, and exit with the server
    even if it is killed (a pool's workers otherwise wait for work forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(5)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    cached_source(spec, settings)


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the server process is gone
    os._exit(0)


def frozen(settings: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Source settings as a hashable key (`cached_source` caches by it)."""
    return tuple(sorted(settings.items()))


class ProcessEngine:
    """Samples made by `workers` spawned local processes; each loads the
    source by its spec once (`make_task`)."""

    kind = "processes"
    task_seconds = 0.05  # a local task's own cost is a small part of this

    def __init__(self, spec: str, settings: dict[str, Any], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a process engine needs 1 worker or more, got {workers}")
        self.workers = workers
        self.restarts = 0
        self._start = (spec, frozen(settings))
        self._task = partial(make_task, *self._start)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),  # portable, no fork
            initializer=_start_local_worker,
            initargs=self._start,
        )

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        return self._pool.submit(self._task, indices)

    def live_workers(self) -> int:
        return self.workers

    def observe(self, made: MadeTask) -> None:
        """Nothing to learn: the processes stay."""

    def restart(self) -> None:
        """A fresh pool: a pool whose worker died is broken for good."""
        self.close()
        self._pool = self._new_pool()
        self.restarts += 1

    def pids(self) -> list[int]:
        return list(self._processes())

    def why_waiting(self) -> str:
        return f"all {self.workers} local worker processes are busy"

    def heal(self) -> None:
        """Make the pool notice a dead worker it has missed.

        ProcessPoolExecutor (3.11-3.13) reads results in one thread; a worker
        killed while writing a large result leaves that thread waiting for the
        rest of it, forever (this process holds the result pipe's other write
        end), and the pool never reports itself broken. Stopping the pool's
        processes and closing our write end ends that read; the pool then
        fails its futures with BrokenProcessPool as usual, and a new pool
        makes their tasks again.
        """
        processes = list(self._processes().values())
        if not any(process.exitcode is not None for process in processes):
            return
        logger.warning("a local worker process died unnoticed; ending its pool")
        self._terminate(processes)
        self._end_result_read()

    def close(self) -> None:
        processes = list(self._processes().values())
        manager = getattr(self._pool, "_executor_manager_thread", None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._terminate(processes)
        if manager is not None:  # let it tear down its queues before we exit
            manager.join(1.0)
            if manager.is_alive():  # reading a result cut off by terminate()
                self._end_result_read()
                manager.join(1.0)

    def retire(self) -> None:
        """Stop taking tasks; the processes finish those they hold, then exit."""
        self._pool.shutdown(wait=False)

    # ProcessPoolExecutor has no public list of its processes nor a way to
    # end a stuck result read: its `_processes`, `_result_queue` and
    # `_executor_manager_thread` are read for `status`, `heal` and `close`.
    def _processes(self) -> dict[int, Any]:
        return dict(getattr(self._pool, "_processes", None) or {})

    def _end_result_read(self) -> None:
        """Close our write end of the pool's result pipe, so that a read
        waiting for a result its (terminated) worker never finished ends."""
        results = getattr(self._pool, "_result_queue", None)
        with contextlib.suppress(Exception):
            results._writer.close()  # type: ignore[union-attr]

    @staticmethod
    def _terminate(processes: list[Any]) -> None:
        for process in processes:  # they hold no state: no need to let them finish
            with contextlib.suppress(Exception):
                process.terminate()


class ThreadEngine:
    """Samples made by one thread of the server process, from the server's
    own source object: no process to start, nothing to ship."""

    kind = "thread"
    task_seconds = 0.05

    def __init__(self, source: SampleSource) -> None:
        self.source = source
        self.restarts = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="samples")

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        return self._thread.submit(encode_task, self.source, indices)

    def live_workers(self) -> int:
        return 1

    def observe(self, made: MadeTask) -> None:
        """Nothing to learn: the thread stays."""

    def restart(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="samples")
        self.restarts += 1

    def heal(self) -> None:
        """Nothing to heal: the thread is this process."""

    def why_waiting(self) -> str:
        return "the server's sample thread is busy"

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


class DefaultEngine:
    """The default `--workers`: one process per core, until the samples
    prove quicker to make than to receive from a process.

    Receiving a sample from a worker process (the pipe, the unpickling)
    costs this process CPU in proportion to its bytes. A source whose
    samples take less time to make than that (samples made once, a
    memory-mapped array) only loses by the processes, so the engine hands
    over to a thread of the server, once and for good. It judges a sample by
    the wall time its making took, waiting included: a source that waits on
    files, a database or a network is as slow as it feels, and keeps its
    processes, which wait in parallel. The cheapest task decides, since page
    faults, a cold cache and a busy machine only ever add to a task's time;
    the first task (which loads the source) does not count.
    """

    # This process's CPU per byte of a sample received from a worker process;
    # bench/making.py measures it.
    RECEIVE_SECONDS_PER_BYTE = 2.5e-9
    CHOOSE_AFTER = 1024  # samples measured before the choice

    def __init__(
        self, source: SampleSource, spec: str, settings: dict[str, Any], workers: int
    ) -> None:
        self.source = source
        self.restarts = 0
        self.choosing = True
        self._current: ProcessEngine | ThreadEngine = ProcessEngine(
            spec, settings, workers
        )
        self._cheapest = float("inf")  # seconds per sample, in one task
        self._measured = -1  # samples measured; -1: the first task is ignored

    @property
    def kind(self) -> str:
        return self._current.kind

    @property
    def task_seconds(self) -> float:
        return self._current.task_seconds

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        return self._current.submit(indices)

    def live_workers(self) -> int:
        return self._current.live_workers()

    def observe(self, made: MadeTask) -> None:
        samples = len(made.offsets) - 1
        if not self.choosing or not samples:
            return
        if self._measured < 0:
            self._measured = 0
            return
        self._cheapest = min(self._cheapest, made.seconds / samples)
        self._measured += samples
        if self._measured < self.CHOOSE_AFTER:
            return
        self.choosing = False
        receiving = len(made.blob) / samples * self.RECEIVE_SECONDS_PER_BYTE
        if self._cheapest < receiving and isinstance(self._current, ProcessEngine):
            self._hand_over(self._current, receiving)

    def _hand_over(self, processes: ProcessEngine, receiving: float) -> None:
        self._current = ThreadEngine(self.source)
        self.restarts += 1  # a task the processes lose is made again, here
        processes.retire()
        logger.info(
            "a sample takes %.2f us to make and would take about %.2f us to "
            "receive from a worker process: making samples in a thread of the "
            "server from now on (--workers N keeps N processes)",
            self._cheapest * 1e6,
            receiving * 1e6,
        )

    def restart(self) -> None:
        self._current.restart()
        self.restarts += 1

    def heal(self) -> None:
        self._current.heal()

    def why_waiting(self) -> str:
        return self._current.why_waiting()

    def pids(self) -> list[int]:
        return self._current.pids()

    def close(self) -> None:
        self._current.close()
