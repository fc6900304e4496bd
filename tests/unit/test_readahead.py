"""The read-ahead (eirstream/readahead.py) on its own: `SampleProducer` with a
thread engine, the default engine's choice between processes and the thread
(fed measurements, its pool never started), and the order of work, with a
fake engine whose tasks end when the test says. The producer behind a real
server and a process pool is in tests/server/test_producer.py.
"""

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from support.held_engine import HeldEngine
from support.waiting import HANG

from data_simulator import SimulatedHealthData
from eirstream.engines import DefaultEngine, ThreadEngine
from eirstream.making import MadeTask
from eirstream.readahead import SampleProducer
from eirstream.sizing import SizeBounds
from eirstream.stream import SampleStream
from eirstream.tasks import Task, TaskEvent


async def test_large_samples_get_tasks_of_bounded_bytes() -> None:
    # A cheap source of large samples would get tasks of thousands of them
    # (sized by time alone): gigabytes held. Tasks are capped in bytes.
    size = 16_000

    class Large(SimulatedHealthData):  # the same text each time: cheap to make
        def __init__(self) -> None:
            super().__init__(seed=0)
            self.text = json.dumps({"filler": "x" * size})

        def samples_json(self, indices: list[int]) -> list[str]:
            return [self.text] * len(indices)

    source = Large()
    stream = SampleStream.for_source(source)
    producer = SampleProducer(ThreadEngine(source))
    try:
        producer.prefetch(stream.peek)
        for _ in range(6):
            indices = stream.take("c", 16)
            message, served = await producer.message(indices)
            assert served == 16 and len(message) > 16 * size
            producer.prefetch(stream.peek)
        status = producer.status()
    finally:
        producer.close()
    assert status["samples_made"] > 64  # measured, then resized
    assert status["task_size"] <= SampleProducer.bounds.max_task_bytes // size, status


def made_like(samples: int, seconds_each: float, bytes_each: int) -> MadeTask:
    """A made task of `samples` samples that took `seconds_each` apiece."""
    offsets = list(range(0, samples * bytes_each + 1, bytes_each))
    return MadeTask(b"x" * offsets[-1], offsets, {}, samples * seconds_each)


@contextmanager
def default_workers_producer() -> Iterator[tuple[SimulatedHealthData, SampleProducer]]:
    """The simulated source and a producer on one worker process that may hand
    over to the thread, as with the default --workers; closed after."""
    source = SimulatedHealthData(seed=0)
    spec = "data_simulator:SimulatedHealthData"
    engine = DefaultEngine(source, spec, {"seed": 0}, workers=1)
    producer = SampleProducer(engine)
    try:
        yield source, producer
    finally:
        producer.close()


async def test_a_task_lost_by_the_processes_after_the_hand_over_is_remade() -> None:
    # Once the default workers hand over to the thread, the old pool may
    # still break (a worker killed with a task in hand): its task is made
    # again, in the thread, and the thread is not replaced.
    with default_workers_producer() as (source, producer):
        engine = producer.engine
        old_restarts = engine.restarts
        for _ in range(2):  # the first task does not count
            engine.observe(made_like(2048, 1e-7, 800))  # 0.1 us a sample
        assert engine.kind == "thread" and engine.restarts != old_restarts
        new_restarts = engine.restarts
        task = Task([7, 8, 9])
        producer.held.hold(task)
        task.enter(TaskEvent.SUBMITTED)
        lost = asyncio.get_running_loop().create_future()
        lost.set_exception(BrokenProcessPool("a worker died"))
        producer._in_flight += 1
        producer._task_done(task, old_restarts, lost)
        await asyncio.wait_for(asyncio.shield(task.done), HANG)
        assert engine.restarts == new_restarts and producer.pool_restarts == 0
        piece, made = task.samples(0, 3)
        texts = source.samples_json([7, 8, 9])
        assert made == 3 and bytes(piece) == "".join(t + "," for t in texts).encode()
        assert producer.status()["tasks_remade"] == 1


async def test_the_default_engine_judges_a_sample_by_its_wall_time() -> None:
    # A source that waits (a remote file, a database) uses hardly any CPU
    # yet takes milliseconds a sample: it keeps its processes, which wait in
    # parallel, even for large samples. A near-free one goes to the thread.
    with default_workers_producer() as (_, producer):
        engine = producer.engine
        for _ in range(40):  # the first task does not count; then 39 x 64
            engine.observe(made_like(64, 3e-3, 64 * 1024))  # 3 ms, 64 KiB
        assert not engine.choosing and engine.kind == "processes"
    with default_workers_producer() as (_, producer):
        engine = producer.engine
        for _ in range(16):
            engine.observe(made_like(64, 3e-3, 800))
        assert engine.choosing and engine.kind == "processes"  # 1,024 not seen
        engine.observe(made_like(64, 3e-3, 800))
        assert not engine.choosing and engine.kind == "processes"  # chosen: stays
        engine.observe(made_like(4096, 1e-7, 800))  # too late: chosen once
        assert engine.kind == "processes"


# -- the order of work: a fake engine whose tasks end when the test says -----------
def held_producer() -> tuple[SampleStream, HeldEngine, SampleProducer]:
    """The simulator's stream, a `HeldEngine` and a producer reading 64 ahead."""
    source = SimulatedHealthData(seed=0)
    engine = HeldEngine(source)
    return (
        SampleStream.for_source(source),
        engine,
        SampleProducer(engine, read_ahead=64),
    )


async def settle() -> None:
    for _ in range(5):  # a finished task reaches the loop through call_soon
        await asyncio.sleep(0)


async def test_a_request_s_own_queued_task_goes_ahead_of_read_ahead() -> None:
    stream, engine, producer = held_producer()  # 8 tasks of 8
    producer.prefetch(stream.peek)
    assert [indices for indices, _ in engine.tasks] == [list(range(8)), [*range(8, 16)]]
    request = asyncio.ensure_future(producer.message(list(range(48, 56))))
    await settle()
    assert producer.status()["tasks_queued"] == 6
    engine.finish(0)  # a worker is free: the request's task is next, not 16-23
    await settle()
    assert engine.tasks[2][0] == list(range(48, 56))
    engine.finish(2)
    message, served = await asyncio.wait_for(request, HANG)
    assert served == 8 and message.count(b'"sample_id"') == 8
    producer.close()


async def test_read_ahead_left_behind_by_a_rewind_leaves_the_queue() -> None:
    stream, engine, producer = held_producer()
    stream.take("c", 1000)
    producer.prefetch(stream.peek)  # 1000..1063: two tasks at work, six queued
    assert producer.status()["tasks_queued"] == 6
    stream.reset("c")  # alone: back to sample 0
    request = asyncio.ensure_future(producer.message(stream.take("c", 8)))
    await settle()
    producer.prefetch(stream.peek)  # after a miss: the stream wants 8..71 now
    queued = [task.indices for task in producer._queue]
    assert queued[0] == list(range(8)), queued  # the request's own task first
    assert all(8 <= index < 72 for indices in queued[1:] for index in indices)
    assert len(queued) == 1 + 8, queued  # 1016..1063 are gone
    engine.finish(0), engine.finish(1)
    await settle()
    assert engine.tasks[2][0] == list(range(8))  # the next task is the request's
    engine.finish(2)
    _, served = await asyncio.wait_for(request, HANG)
    assert served == 8
    producer.close()


async def test_a_request_that_waits_for_read_ahead_is_not_a_miss() -> None:
    # Workers behind is no rewind: the next prefetch leaves the read-ahead as
    # it is (a miss would look at all of it again and queue the one request's
    # worth of indices past it as a task of its own, every request).
    stream, engine, producer = held_producer()  # 8 tasks of 8
    producer.prefetch(stream.peek)
    request = asyncio.ensure_future(producer.message(stream.take("c", 8)))
    await settle()
    queued = [task.indices for task in producer._queue]
    producer.prefetch(stream.peek)  # the request waits for task 0..7 at work
    assert [task.indices for task in producer._queue] == queued
    assert len(engine.tasks) == 2
    engine.finish(0)
    _, served = await asyncio.wait_for(request, HANG)
    assert served == 8
    producer.close()


async def test_epochs_smaller_than_a_batch_serve_every_index_again_each_epoch() -> None:
    # The read-ahead sees the same index again in the next epoch; a batch
    # larger than an epoch holds an index more than once.
    source = SimulatedHealthData(seed=0, max_iterations=10)
    stream = SampleStream.for_source(source, epochs=None, shuffle=True, seed=1)
    producer = SampleProducer(ThreadEngine(source), read_ahead=64)
    try:
        for size in (3, 16, 7, 25, 10):
            producer.prefetch(stream.peek)
            indices = stream.take("c", size)
            message, served = await asyncio.wait_for(producer.message(indices), HANG)
            ids = [s["sample_id"] for s in json.loads(message)["payload"]]
            assert served == size and ids == [f"sample_{i}" for i in indices]
    finally:
        producer.close()


async def test_the_read_ahead_of_large_samples_is_bounded_in_bytes() -> None:
    # Images of any size: the read-ahead holds max_ahead_bytes of samples
    # (or one batch), not a fixed number of them. Small bounds keep it quick.
    small = SizeBounds(max_ahead_bytes=4 * 2**20, max_task_bytes=2**20)

    size = 64 * 1024

    class Large(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            return [json.dumps({"i": i, "x": "x" * size}) for i in indices]

    source = Large(seed=0)
    stream = SampleStream.for_source(source)
    producer = SampleProducer(ThreadEngine(source), bounds=small)
    bound = 2 * small.max_ahead_bytes + small.max_task_bytes
    try:
        for _ in range(40):
            producer.prefetch(stream.peek)
            await producer.message(stream.take("c", 16))
            await asyncio.sleep(0.005)  # let the thread make the read-ahead
            assert producer.status()["samples_held"] * size <= bound
        status = producer.status()
    finally:
        producer.close()
    assert status["read_ahead"] * size <= small.max_ahead_bytes, status
