"""A source that waits (remote files, a database, a network simulator).

Such a source takes milliseconds a sample but hardly any CPU. The default
--workers keeps its worker processes, which wait in parallel, whatever the
size of a sample; and a request never waits behind read-ahead it does not
need, so every check eirtrain makes (5 s each) is answered in time, even
right after another client trained and left. The source is
bench/waiting_source.py; every server is a real subprocess. Nothing here is
timed: the tests read the server's status and its log.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import websocket
from support import ROOT
from support.server_process import ServerProcess
from support.waiting import HANG

from eirstream.readahead import ASKED

WAITING = str(ROOT / "bench" / "waiting_source.py")
BATCHES = 3  # of 32 samples, after the rewind of a connection's check sequence


@contextmanager
def connection(url: str) -> Iterator[websocket.WebSocket]:
    """A handshaken connection, closed after."""
    ws = websocket.create_connection(url, timeout=HANG, skip_utf8_validation=True)
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


def making(ws: websocket.WebSocket) -> dict:
    """The "making" object of the server's status: engine and counters."""
    (status,) = ask(ws, {"type": "status"})
    return json.loads(status)["payload"]["making"]


def test_the_default_workers_keep_their_processes_for_a_waiting_source() -> None:
    """3 ms a sample, nearly no CPU: the default workers (one process per
    core) judge a sample by its wall time, so they keep their processes,
    which wait in parallel, also with 64 KiB samples, which cost more to
    receive from a process. They choose after 1,024 samples measured (the
    first task not counted), so 1,200 made settles it."""
    for factory in ("make", "make_large"):
        spec = f"{WAITING}:{factory}"
        with (
            ServerProcess("--port", "0", "--source", spec) as server,
            connection(server.url) as ws,
        ):
            for _ in range(100):  # 3,200 samples at most
                assert get_data(ws, 32) == 32
                status = making(ws)
                if status["samples_made"] >= 1200:
                    break
            log = server.log
        assert status["samples_made"] >= 1200, (factory, status)
        assert status["engine"] == "processes", (factory, status)
        assert len(status["worker_pids"]) == (os.cpu_count() or 1), (factory, status)
        assert "in a thread of the server" not in log, (factory, log)


def checks_after_a_client_trained_and_left(*args: str) -> tuple[str, int, list[str]]:
    """A new connection's check sequence, as eirtrain sends it (getInfo,
    getData of 1, heartbeat, reset) and BATCHES batches after the rewind,
    right after another client trained on as many and left: the samples
    read ahead for the trainer's position wait in the queue then, none of
    them needed any more, and each of the new connection's batches must be
    made again (the samples served to the trainer are not kept). Returns
    that connection's name in the log ("conn#2"), the server's worker count
    and its log with its DEBUG lines."""
    spec = f"{WAITING}:make_slow"  # 20 ms a sample
    with ServerProcess(
        "--port", "0", "--source", spec, *args, debug_log=True
    ) as server:
        with connection(server.url) as trainer:
            get_data(trainer, 1)
            ask(trainer, {"type": "reset"}, replies=2)
            for _ in range(BATCHES):
                get_data(trainer, 32)
        with connection(server.url) as ws:
            ask(ws, {"type": "getInfo"})
            assert get_data(ws, 1) == 1
            ask(ws, {"type": "heartbeat"})
            ask(ws, {"type": "reset"}, replies=2)
            for _ in range(BATCHES):
                assert get_data(ws, 32) == 32
            workers = making(ws)["workers"]
        lines = list(server.lines)
    name = next(
        found[1]
        for line in lines
        if (found := re.search(r"(conn#\d+): received getInfo", line))
    )
    return name, workers, lines


def read_ahead_made_while_waiting(name: str, lines: list[str]) -> list[int]:
    """For each getData of connection `name`, in order: how many tasks that
    no request waits for were made between its arrival and its reply."""
    counts: list[int] = []
    waiting = False
    for line in lines:
        if f"{name}: received getData" in line:
            waiting = True
            counts.append(0)
        elif f"{name}: sent " in line:
            waiting = False
        elif waiting and "made a task of" in line and not line.endswith(ASKED):
            counts[-1] += 1
    return counts


def test_a_request_never_waits_behind_read_ahead_it_does_not_need() -> None:
    """A request's own tasks go to the front of the queue: while it waits,
    only the tasks already at the engine and those that start beside its
    own are made, at most two rounds of `max_in_flight` (two tasks per
    worker), never the trainer's whole read-ahead (about a thousand
    samples, a hundred tasks)."""
    for args in ((), ("--workers", "0")):
        name, workers, lines = checks_after_a_client_trained_and_left(*args)
        counts = read_ahead_made_while_waiting(name, lines)
        assert len(counts) == 1 + BATCHES, (args, counts)  # getData 1, then BATCHES
        max_in_flight = 2 * max(1, workers)
        assert max(counts) <= 2 * max_in_flight, (args, counts)
