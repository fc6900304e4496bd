"""The sample producer changes speed, never content.

A sample's bytes do not depend on the number of worker processes or on batch
sizes; samples made ahead of a reset are still right after the rewind; large
batches are made in the workers; the read-ahead's memory stays bounded. The
faults (a killed worker, a failing source) are in test_local_pool.py, the
generator in test_generator.py, the source's determinism in test_simulator.py.
"""

import asyncio
import json
import random
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from itertools import pairwise

import websocket
from support.servers import running_server
from support.waiting import HANG

from data_simulator import SimulatedHealthData
from eirstream.engines import DefaultEngine, ProcessEngine, ThreadEngine
from eirstream.making import MadeTask, encode_task
from eirstream.readahead import SampleProducer
from eirstream.sizing import SizeBounds
from eirstream.stream import SampleStream
from eirstream.tasks import Task, TaskEvent


# -- the server: bytes per sample id ---------------------------------------------------
def sample_texts(message: str) -> dict[str, str]:
    """The raw JSON text of each sample of a `data` message, by sample id."""
    head = '{"type":"data","payload":['
    assert message.startswith(head) and message.endswith("]}"), message[:80]
    decoder = json.JSONDecoder()
    body = message[len(head) : -2]
    out, position = {}, 0
    while position < len(body):
        sample, end = decoder.raw_decode(body, position)
        out[sample["sample_id"]] = body[position:end]
        position = end + 1  # the comma
    return out


def stream_raw(url: str, batch_sizes: Iterable[int], probe: bool = True) -> dict:
    """EIR's training fetches (heartbeat + getData, one read) with the given
    batch sizes in turn until terminate; raw sample texts by id."""
    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=HANG)
    try:
        ws.send('{"type":"handshake","version":"1.0","worker_id":0}')
        assert json.loads(ws.recv())["type"] == "handshake"
        if probe:
            ws.send('{"type":"reset"}')
            assert {json.loads(ws.recv())["type"] for _ in range(2)} == {
                "resetConfirmation",
                "reset",
            }
        texts: dict[str, str] = {}
        sizes = list(batch_sizes)
        for fetch in range(100_000):
            size = sizes[fetch % len(sizes)]
            ws.send('{"type":"heartbeat"}')
            ws.send(json.dumps({"type": "getData", "payload": {"batch_size": size}}))
            message = ws.recv()
            while len(message) < 100 and json.loads(message)["type"] == "heartbeat":
                message = ws.recv()
            if len(message) < 100 and json.loads(message)["payload"] == ["terminate"]:
                return texts
            batch = sample_texts(message)
            assert len(batch) <= size
            assert not set(batch) & set(texts), "a sample was served twice"
            texts.update(batch)
        raise AssertionError("no terminate")
    finally:
        ws.close()


def test_sample_bytes_do_not_depend_on_workers_or_batch_sizes() -> None:
    runs = []
    for workers, sizes in ((0, [32]), (2, [1, 7, 100, 3, 250]), (2, [64])):
        with running_server(max_iterations=700, workers=workers) as server:
            runs.append(stream_raw(server.url, sizes))
    expected = {
        f"sample_{i}": text
        for i, text in enumerate(SimulatedHealthData(seed=0).samples_json(range(700)))
    }
    for texts in runs:
        assert texts == expected


def test_samples_made_ahead_of_a_reset_are_right_after_the_rewind() -> None:
    with running_server(max_iterations=2000, workers=2) as server:
        ws = websocket.create_connection(server.url, timeout=HANG)
        ws.send('{"type":"handshake","version":"1.0"}')
        ws.recv()
        first = {}
        for _ in range(5):  # 160 of 2,000; the read-ahead is 1,024 further
            ws.send('{"type":"getData","payload":{"batch_size":32}}')
            first.update(sample_texts(ws.recv()))
        ready = server.call(server.server.producer.status)
        assert ready["samples_ahead"] >= 512, ready  # made or in the making
        ws.send('{"type":"reset"}')
        ws.recv(), ws.recv()
        ws.close()
        again = stream_raw(server.url, [32, 500])
        status = server.call(server.server.producer.status)
    expected = SimulatedHealthData(seed=0).samples_json(range(2000))
    assert again == {f"sample_{i}": t for i, t in enumerate(expected)}
    assert all(again[k] == v for k, v in first.items())
    assert status["samples_served_from_read_ahead"] > 1000, status
    assert status["engine"] == "processes", status


def test_large_batches_are_made_in_workers_not_in_the_event_loop() -> None:
    with running_server(max_iterations=9000, workers=2) as server:
        texts = stream_raw(server.url, [4096], probe=False)
        status = server.call(server.server.producer.status)
    assert len(texts) == 9000
    assert status["engine"] == "processes"
    assert status["samples_made"] >= 9000
    assert status["read_ahead"] == 2 * 4096  # grown to twice the batch asked for
    assert status["samples_held"] <= 2 * status["read_ahead"] + status["task_size"]


# -- the producer on its own: bounded memory, right bytes -----------------------------
async def test_read_ahead_memory_stays_bounded_across_rewinds_and_late_skips() -> None:
    # Samples made ahead and then never asked for (a rewind moved the stream
    # back, or validation ids set later skip them) must not pin memory.
    source = SimulatedHealthData(seed=4)
    stream = SampleStream.for_source(source)
    spec = "data_simulator:SimulatedHealthData"
    engine = ProcessEngine(spec, {"seed": 4}, workers=1)
    producer = SampleProducer(engine, read_ahead=256)
    rng = random.Random(5)
    checked = 0
    try:
        producer.prefetch(stream.peek)
        for round_ in range(15):
            for _ in range(rng.randint(2, 12)):
                indices = stream.take("c", rng.choice([16, 64, 100]))
                message = json.loads((await producer.message(indices))[0])
                assert [s["sample_id"] for s in message["payload"]] == [
                    f"sample_{i}" for i in indices
                ]
                if rng.random() < 0.2:  # spot checks of the content
                    sample = message["payload"][0]
                    assert sample == source.sample(indices[0])
                    checked += 1
                producer.prefetch(stream.peek)
                now = producer.status()  # task size and read-ahead grow as measured
                limit = 2 * now["read_ahead"] + now["task_size"]
                assert now["samples_ahead"] <= now["samples_held"] <= limit, now
            if round_ % 3 == 2:  # ids among those made ahead, set after the fact
                start = stream.status()["current_position"]
                stream.set_validation_ids(
                    [f"sample_{i}" for i in range(start, start + 400, 3)]
                )
            stream.reset("c")
            await asyncio.sleep(0.02)  # let the worker deliver
        status = producer.status()
    finally:
        producer.close()
    assert checked > 0
    assert status["samples_made"] > 0
    assert status["read_ahead"] <= SampleProducer.bounds.max_read_ahead
    bounds = SampleProducer.bounds
    assert bounds.min_task <= status["task_size"] <= bounds.max_task


def test_a_source_giving_the_wrong_number_of_samples_fails_those_indices() -> None:
    # A samples_json that drops a sample would shift every later sample onto
    # the wrong index; each index is then made alone, and fails by name.
    class Short(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            return super().samples_json(indices)[:-1]

    made = encode_task(Short(seed=0), [4, 5, 6])
    assert (made.blob, made.offsets) == (b"", [0, 0, 0, 0])  # no bytes for any
    assert sorted(made.failures) == [4, 5, 6]
    assert "samples_json gave 0 samples for 1 indices" in made.failures[5]


def test_a_task_locates_its_samples_by_bytes_even_for_non_ascii_text() -> None:
    # A sample's place in a made task's bytes is counted in UTF-8 bytes, which is
    # not its length in characters once the text is not ASCII.
    class Accented(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            return [
                json.dumps(
                    {"prompt": "café ☕" * i, "sample_id": f"sample_{i}"},
                    ensure_ascii=False,
                )
                for i in indices
            ]

    blob, offsets, failures, _ = encode_task(Accented(seed=0), [3, 1, 2])
    assert not failures and offsets[-1] == len(blob)
    samples = [json.loads(blob[a : b - 1]) for a, b in pairwise(offsets)]
    assert [s["prompt"] for s in samples] == ["café ☕" * i for i in (3, 1, 2)]
    assert [blob[b - 1 : b] for b in offsets[1:]] == [b","] * 3


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


def test_an_empty_sample_text_takes_no_bytes_and_leaves_its_neighbours_whole() -> None:
    # The offsets must describe the blob exactly, or the server cannot use
    # the made task at all: an empty text is left out, like a failed sample.
    class Gap(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            texts = super().samples_json(indices)
            return ["" if i == 5 else t for i, t in zip(indices, texts, strict=True)]

    blob, offsets, *_ = encode_task(Gap(seed=0), [4, 5, 6])
    assert offsets[-1] == len(blob) and offsets[1] == offsets[2]
    kept = [json.loads(blob[a : b - 1]) for a, b in pairwise(offsets) if b > a]
    assert [s["sample_id"] for s in kept] == ["sample_4", "sample_6"]


def test_a_shuffled_task_is_asked_of_the_source_in_index_order() -> None:
    # A dataset reads a row group once per task only if the source sees each
    # slice in ascending order; the blob must still follow the order asked,
    # failed samples (here at a slice's edge) taking no bytes.
    asked: list[list[int]] = []

    class Records(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            asked.append(list(indices))
            if 511 in indices or 2000 in indices:
                raise ValueError("a sample that cannot be made")
            return super().samples_json(indices)

    rng = random.Random(3)
    indices = [*rng.sample([i for i in range(3000) if i not in (511, 2000)], 1498)]
    indices[100:100] = [2000]
    indices[900:900] = [511]
    made = encode_task(Records(seed=0), indices)
    assert set(made.failures) == {511, 2000}
    slices = [a for a in asked if len(a) > 1]
    assert sorted(i for a in slices for i in a) == sorted(indices)
    assert len(slices) == 3
    assert all(a == sorted(a) for a in slices) and slices == sorted(slices)
    reference = SimulatedHealthData(seed=0)
    for k, (start, stop) in enumerate(pairwise(made.offsets)):
        if indices[k] in made.failures:
            assert start == stop
        else:
            text = made.blob[start : stop - 1].decode()
            assert text == reference.samples_json([indices[k]])[0]


async def test_a_span_of_samples_comes_out_whole_around_failed_ones() -> None:
    # A reply is a slice of a made task's blob: it must hold every sample of the
    # span, in order, with nothing cut or doubled, also when samples inside
    # the span or at its edges failed (they take no bytes). The failures sit
    # where the source is asked for a new slice of ENCODE_SLICE samples.
    class FailsAtSlices(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            if 511 in indices or 1024 in indices:
                raise ValueError("a sample at a slice's edge")
            return super().samples_json(indices)

    for source, missing in (
        (SimulatedHealthData(seed=0), set()),
        (FailsAtSlices(seed=0), {511, 1024}),
    ):
        task = Task(list(range(1200)))
        made = encode_task(source, task.indices)
        assert set(made.failures) == missing
        task.enter(TaskEvent.SUBMITTED)
        task.enter(TaskEvent.FINISHED, made=made)
        texts = SimulatedHealthData(seed=0).samples_json(range(1200))
        for start, stop in [
            (0, 1200),
            (500, 530),
            (511, 513),
            (511, 512),
            (1023, 1025),
            (300, 1100),
        ]:
            piece, count = task.samples(start, stop)
            kept = [
                t for i, t in enumerate(texts[start:stop], start) if i not in missing
            ]
            assert count == len(kept), (start, stop)
            assert bytes(piece) == comma_terminated(kept)


def comma_terminated(texts: Iterable[str]) -> bytes:
    """Sample texts as a made task holds them: UTF-8, each followed by a comma."""
    return "".join(text + "," for text in texts).encode()


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
        assert made == 3 and bytes(piece) == comma_terminated(texts)
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
class HeldEngine:
    """An `Engine` whose tasks finish only when `finish` is called."""

    kind, task_seconds, restarts = "held", 0.05, 0

    def __init__(self, source: SimulatedHealthData) -> None:
        self.source = source
        self.tasks: list[tuple[list[int], Future[MadeTask]]] = []

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        self.tasks.append((indices, Future()))
        return self.tasks[-1][1]

    def finish(self, number: int) -> None:
        indices, task = self.tasks[number]
        task.set_result(encode_task(self.source, indices))

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
