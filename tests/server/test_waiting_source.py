"""A source that waits (remote files, a database, a network simulator).

Such a source takes milliseconds a sample but hardly any CPU. The default
--workers keeps its worker processes, which wait in parallel, whatever the
size of a sample; and a request never waits behind read-ahead it does not
need, so every check eirtrain makes (5 s each) is answered in time, even
right after another client trained and left. The source is
bench/waiting_source.py; every server is a real subprocess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import websocket
from support.server_process import ROOT, ServerProcess

WAITING = str(ROOT / "bench" / "waiting_source.py")


@contextmanager
def connection(url: str) -> Iterator[websocket.WebSocket]:
    """A handshaken connection, closed after."""
    ws = websocket.create_connection(url, timeout=60, skip_utf8_validation=True)
    try:
        ws.send('{"type":"handshake","version":"1.0"}')
        assert json.loads(ws.recv())["type"] == "handshake"
        yield ws
    finally:
        ws.close()


def ask(ws: websocket.WebSocket, message: dict, replies: int = 1) -> list[str]:
    """Send one request and read its replies, raw."""
    ws.send(json.dumps(message))
    return [ws.recv() for _ in range(replies)]


def get_data(ws: websocket.WebSocket, size: int) -> int:
    """Samples in the reply to one getData of `size` (counted, not parsed)."""
    (reply,) = ask(ws, {"type": "getData", "payload": {"batch_size": size}})
    assert reply.startswith('{"type":"data"') and "terminate" not in reply[:40]
    return reply.count('"sample_id"')


def made(ws: websocket.WebSocket) -> int:
    (status,) = ask(ws, {"type": "status"})
    return json.loads(status)["payload"]["generation"]["samples_made"]


def samples_per_second(factory: str, *args: str, batches: int = 30) -> float:
    """The rate one client pulls batches of 32 at, once the server has made
    enough samples to settle on its engine (the default workers choose after
    1,024 samples)."""
    spec = f"{WAITING}:{factory}"
    with (
        ServerProcess("--port", "0", "--source", spec, *args) as server,
        connection(server.url) as ws,
    ):
        for _ in range(60):  # 1,920 samples at most
            get_data(ws, 32)
            if made(ws) >= 1200:
                break
        began = time.perf_counter()
        served = sum(get_data(ws, 32) for _ in range(batches))
        seconds = time.perf_counter() - began
    assert served == 32 * batches
    return served / seconds


def test_the_default_workers_wait_in_parallel_for_a_waiting_source() -> None:
    """3 ms a sample, nearly no CPU: the default workers (one process per
    core, two here) are much faster than one thread, also with 64 KiB
    samples, which cost more to receive from a process."""
    for factory in ("make", "make_large"):
        default = samples_per_second(factory)
        thread = samples_per_second(factory, "--workers", "0")
        assert default >= 1.6 * thread, (factory, default, thread)


def timed(ws: websocket.WebSocket, message: dict, replies: int = 1) -> float:
    began = time.perf_counter()
    ask(ws, message, replies)
    return time.perf_counter() - began


def checks_after_a_client_trained_and_left(*args: str) -> dict[str, float]:
    """Seconds each step took for a new connection: eirtrain's check
    sequence (getInfo, getData of 1, heartbeat, reset) and the first batches
    after the rewind, right after another client trained and left. The
    samples read ahead for the trainer's position wait in the queue then:
    none of them is needed any more."""
    spec = f"{WAITING}:make_slow"  # 20 ms a sample
    with ServerProcess("--port", "0", "--source", spec, *args) as server:
        with connection(server.url) as trainer:
            get_data(trainer, 1)
            ask(trainer, {"type": "reset"}, replies=2)
            for _ in range(8):
                get_data(trainer, 32)
        took = {}
        with connection(server.url) as ws:
            took["getInfo"] = timed(ws, {"type": "getInfo"})
            took["getData 1"] = timed(
                ws, {"type": "getData", "payload": {"batch_size": 1}}
            )
            took["heartbeat"] = timed(ws, {"type": "heartbeat"})
            took["reset"] = timed(ws, {"type": "reset"}, replies=2)
            for batch in ("first", "second", "third"):
                took[f"{batch} batch"] = timed(
                    ws, {"type": "getData", "payload": {"batch_size": 32}}
                )
    return took


def test_a_request_never_waits_behind_read_ahead_it_does_not_need() -> None:
    for args in ((), ("--workers", "0")):
        took = checks_after_a_client_trained_and_left(*args)
        slow = {step: seconds for step, seconds in took.items() if seconds >= 2}
        assert not slow, (args, took)
