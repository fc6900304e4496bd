"""The read-ahead of several streams: `SampleProducer`'s lanes
(eirstream/readahead.py), one per named stream, on one engine whose tasks
end when the test says (support/held_engine.py). Each lane holds its own
tasks; the streams that read share the read-ahead; one stream's rewind or
release leaves the other's read-ahead as it was.
"""

import asyncio

from support.held_engine import HeldEngine
from support.waiting import HANG

from data_simulator import SimulatedHealthData
from eirstream.readahead import Lane, SampleProducer
from eirstream.stream import SampleStream
from eirstream.tasks import FAILED, MADE, QUEUED, Task

READ_AHEAD = 64  # samples; tasks of 8 until a task is measured


def two_streams() -> tuple[SampleStream, SampleStream, HeldEngine, SampleProducer]:
    """Streams 'a' and 'b' of the simulator (one connection each, 'x' and
    'y'), a `HeldEngine` and a producer reading READ_AHEAD ahead."""
    source = SimulatedHealthData(seed=0)
    a = SampleStream.for_source(source, name="a")
    b = SampleStream.for_source(source, name="b")
    a.connect("x")
    b.connect("y")
    engine = HeldEngine(source)
    return a, b, engine, SampleProducer(engine, read_ahead=READ_AHEAD)


async def settle() -> None:
    for _ in range(5):  # a finished task reaches the loop through call_soon
        await asyncio.sleep(0)


def held_indices(lane: Lane) -> set[int]:
    return set(lane.held.where)


def queued(producer: SampleProducer, lane: Lane) -> list[list[int]]:
    """The indices of the lane's tasks in the producer's queue, in order."""
    return [t.indices for t in producer._queue if t.holder is lane.held]


async def serve(
    producer: SampleProducer, engine: HeldEngine, indices: list[int], lane: Lane
) -> bytes:
    """The data reply for `indices` on `lane`, every task at the engine made."""
    request = asyncio.ensure_future(producer.message(indices, lane))
    for _ in range(100):  # each round makes what is at the engine
        await settle()
        if request.done():
            break
        engine.finish_all()
    message, served = await asyncio.wait_for(request, HANG)
    assert served == len(indices)
    return message


async def test_each_lane_holds_its_own_stream_s_next_indices() -> None:
    a, b, engine, producer = two_streams()
    a.take("x", 1000)  # a is far ahead of b
    lane_a, lane_b = producer.lane("a"), producer.lane("b")
    assert producer.lane("a") is lane_a and lane_a is not lane_b
    producer.prefetch(a.peek, lane_a, streams=2)
    producer.prefetch(b.peek, lane_b, streams=2)
    assert held_indices(lane_a) == set(range(1000, 1032))
    assert held_indices(lane_b) == set(range(32))
    assert all(task.holder is lane_a.held for task in lane_a.held.tasks)
    assert all(task.holder is lane_b.held for task in lane_b.held.tasks)
    # One engine, one queue: a's tasks first (two at work), then b's.
    assert [indices[0] for indices, _ in engine.tasks] == [1000, 1008]
    assert queued(producer, lane_a) == [[*range(1016, 1024)], [*range(1024, 1032)]]
    assert [t[0] for t in queued(producer, lane_b)] == [0, 8, 16, 24]
    status = producer.status()
    assert status["samples_ahead"] == 64 and status["tasks_queued"] == 6
    producer.close()


async def test_the_default_lane_is_the_one_stream_callers_get() -> None:
    a, _, _, producer = two_streams()
    producer.prefetch(a.peek)  # no lane, one stream: the whole read-ahead
    assert producer.lane("default").held is producer.held
    assert held_indices(producer.lane("default")) == set(range(READ_AHEAD))
    assert list(producer.lanes) == ["default"]
    producer.close()


async def test_two_reading_streams_hold_about_half_the_read_ahead_each() -> None:
    a, b, engine, producer = two_streams()
    lanes = {"a": producer.lane("a"), "b": producer.lane("b")}
    streams = {"a": (a, "x"), "b": (b, "y")}
    a.take("x", 1_000_000)  # far ahead of b, whatever the read-ahead grows to
    for name, lane in lanes.items():
        producer.prefetch(streams[name][0].peek, lane, streams=2)
    for _ in range(30):  # batches of 8, in turn; tasks made as they come
        for name, lane in lanes.items():
            stream, conn = streams[name]
            await serve(producer, engine, stream.take(conn, 8), lane)
            producer.prefetch(stream.peek, lane, streams=2)
            share = producer.read_ahead // 2
            assert lane.held.unserved <= share, (name, lane.held.unserved, share)
        total = sum(lane.held.unserved for lane in lanes.values())
        assert total <= producer.read_ahead, total
    # Each stream's next indices are its own lane's, not the other's.
    assert min(held_indices(lanes["a"])) >= 1_000_000
    assert max(held_indices(lanes["b"])) < 1_000_000
    producer.close()


async def test_a_rewind_on_one_stream_keeps_the_other_s_queued_read_ahead() -> None:
    a, b, engine, producer = two_streams()
    lane_a, lane_b = producer.lane("a"), producer.lane("b")
    a.take("x", 1000)
    producer.prefetch(a.peek, lane_a, streams=2)  # 1000..1031: two at work
    producer.prefetch(b.peek, lane_b, streams=2)  # 0..31: all four queued
    b_queued = queued(producer, lane_b)
    b_tasks = list(lane_b.held.tasks)
    assert len(b_queued) == 4
    a.reset("x")  # alone on a: back to 0
    request = asyncio.ensure_future(producer.message(a.take("x", 8), lane_a))
    await settle()
    producer.prefetch(a.peek, lane_a, streams=2)  # after a's miss: 8..39
    assert all(i < 1000 for t in queued(producer, lane_a) for i in t)  # 1016.. gone
    assert queued(producer, lane_b) == b_queued  # b's read-ahead untouched
    assert list(lane_b.held.tasks) == b_tasks
    assert all(task.state is QUEUED for task in b_tasks)
    assert held_indices(lane_b) == set(range(32))
    engine.finish_all()
    await settle()
    engine.finish_all()
    _, served = await asyncio.wait_for(request, HANG)
    assert served == 8
    producer.close()


async def test_release_lets_go_of_one_stream_s_read_ahead_only() -> None:
    a, b, engine, producer = two_streams()
    lane_a, lane_b = producer.lane("a"), producer.lane("b")
    a.take("x", 2000)
    producer.prefetch(a.peek, lane_a, streams=2)  # 2000..2031: two at work
    producer.prefetch(b.peek, lane_b, streams=2)  # 0..31: queued
    request = asyncio.ensure_future(producer.message(b.take("y", 4), lane_b))
    await settle()  # b's task of 0..7 goes to the front of the queue
    engine.finish(0)  # a's first task is made; b's task of 0..7 goes to work
    await settle()
    engine.finish(2)  # b's task is made: its first 4 served, 4 held
    _, served = await asyncio.wait_for(request, HANG)
    assert served == 4
    await settle()
    a_states = {t.first: t.state for t in lane_a.held.tasks}
    assert list(a_states.values()).count(MADE) == 1 and QUEUED in a_states.values()
    b_tasks = list(lane_b.held.tasks)
    b_states = [t.state for t in b_tasks]
    assert b_states.count(MADE) == 1 and b_states.count(QUEUED) == 3, b_states
    b_queued = queued(producer, lane_b)
    queued_a = [t for t in lane_a.held.tasks if t.state is QUEUED]
    made_a = [t for t in lane_a.held.tasks if t.state is MADE]

    producer.release(lane_a)  # a's last connection closed
    assert queued(producer, lane_a) == []
    assert all(task.state is FAILED for task in queued_a)  # given up
    assert not any(task in lane_a.held.tasks for task in made_a)  # let go of
    assert all(task.state is not MADE for task in lane_a.held.tasks)
    assert lane_a.held.samples == 0  # also the two still at work
    assert lane_a.missed  # a's next prefetch looks at all of it anew
    assert list(lane_b.held.tasks) == b_tasks  # b's made and queued tasks stay
    assert [t.state for t in b_tasks] == b_states
    assert queued(producer, lane_b) == b_queued
    assert lane_b.held.unserved == 28
    message = await serve(producer, engine, b.take("y", 8), lane_b)  # 4..11
    assert message.count(b'"sample_id"') == 8 and b'"sample_4"' in message
    # a's tasks that were at work are made by now, and not kept for it.
    assert all(future.done() for _, future in engine.tasks[:4])
    assert lane_a.held.samples == 0 and lane_a.held.made_bytes == 0
    assert producer.status()["samples_held"] == lane_b.held.samples
    producer.close()


async def test_the_same_index_on_two_streams_is_the_same_bytes() -> None:
    a, b, engine, producer = two_streams()
    lane_a, lane_b = producer.lane("a"), producer.lane("b")
    b.take("y", 100)
    producer.prefetch(a.peek, lane_a, streams=2)
    producer.prefetch(b.peek, lane_b, streams=2)
    first = await serve(producer, engine, a.take("x", 12), lane_a)  # 0..11
    b.reset("y")  # b rewinds to 0: its lane misses, makes 0..11 itself
    second = await serve(producer, engine, b.take("y", 12), lane_b)
    assert first == second
    assert b'"sample_0"' in first and b'"sample_11"' in first
    makers = [t for t, _ in engine.tasks if 0 in t]  # each lane made 0 itself
    assert len(makers) == 2
    producer.close()


async def test_a_task_of_one_lane_is_never_served_from_the_other() -> None:
    # The lanes keep apart: b's request for indices a holds made is made
    # again for b, and what a holds is served to a, unchanged.
    a, b, engine, producer = two_streams()
    lane_a, lane_b = producer.lane("a"), producer.lane("b")
    producer.prefetch(a.peek, lane_a, streams=2)
    engine.finish_all()
    await settle()
    engine.finish_all()
    await settle()
    a_tasks: list[Task] = list(lane_a.held.tasks)
    assert a_tasks and all(t.state is MADE for t in a_tasks)
    submitted = len(engine.tasks)
    await serve(producer, engine, b.take("y", 8), lane_b)
    assert len(engine.tasks) == submitted + 1  # made for b
    assert list(lane_a.held.tasks) == a_tasks and lane_a.held.unserved == 32
    producer.close()
