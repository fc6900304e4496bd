"""The sample producer changes speed, never content.

A sample's bytes do not depend on the number of worker processes or on batch
sizes; samples made ahead of a reset are still right after the rewind; large
batches are made in the workers; the read-ahead's memory stays bounded with
a process pool. The producer on its own is in tests/unit/test_readahead.py,
the making of a task in tests/unit/test_making.py, the faults (a killed
worker, a failing source) in test_local_pool.py, the generator in
tests/unit/test_generator.py, the source's determinism in
tests/unit/test_simulator.py.
"""

import asyncio
import json
import random
from collections.abc import Iterable

import websocket
from support.exact_pass import texts_by_id
from support.servers import running_server
from support.waiting import HANG

from data_simulator import SimulatedHealthData
from eirstream.engines import ProcessEngine
from eirstream.readahead import SampleProducer
from eirstream.stream import SampleStream


# -- the server: bytes per sample id ---------------------------------------------------
def sample_texts(message: str) -> dict[str, str]:
    """The raw JSON text of each sample of a `data` message, by sample id."""
    head = '{"type":"data","payload":['
    assert message.startswith(head) and message.endswith("]}"), message[:80]
    return texts_by_id(message)


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
