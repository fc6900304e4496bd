"""EIR-pattern clients for the benchmarks, each in a process of its own.

A streaming client talks the way EIR's `eirtrain` does (websocket-client;
handshake, the validation probe, one unread heartbeat, then for every batch
`heartbeat` + `getData` back to back and one read, skipping heartbeat
replies). Each data reply is parsed in full with `json.loads`, as EIR does,
checked to be a `data` message whose samples carry the simulator's or a
dataset's sample ids, and its samples are counted.

`run_clients` starts client processes against a server, releases them
together and collects their reports with the CPU the server (and its
workers) used meanwhile; `stream` does that for streaming clients and gives
their steady rates (`steady_rate`).
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from bench.servers import Server

STATUS_INTERVAL = 0.02  # seconds between a status client's requests
REPORT_TIMEOUT = 120.0  # seconds past its run a client may take to report
SETTLE_SECONDS = 1.0  # for every client to connect, probe and warm up

# The simulator's ids, or a dataset's (`--dataset`: rows and word chunks).
SAMPLE_ID = re.compile(r"sample_(0|[1-9][0-9]*)|r(0|[1-9][0-9]*)(c(0|[1-9][0-9]*))?")


# -- one connection ---------------------------------------------------------------
def connect(url: str, timeout: float = 60) -> Any:
    """A websocket-client connection that has done the handshake."""
    import websocket  # the client processes import it; the bench's own may not

    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=timeout)
    ws.send('{"type":"handshake","version":"1.0","worker_id":0}')
    reply = json.loads(ws.recv())
    if reply != {"type": "handshake", "version": "1.0"}:
        raise RuntimeError(f"bad handshake reply {reply!r}")
    return ws


def request(ws: Any, message: str) -> dict[str, Any]:
    ws.send(message)
    return json.loads(ws.recv())


def validation_probe(ws: Any) -> None:
    """EIR's probe: getInfo, getData(1), heartbeat, reset (two replies)."""
    assert request(ws, '{"type":"getInfo"}')["type"] == "info"
    assert request(ws, '{"type":"getData","payload":{"batch_size":1}}')["type"] == (
        "data"
    )
    assert request(ws, '{"type":"heartbeat"}')["type"] == "heartbeat"
    ws.send('{"type":"reset","payload":{}}')
    replies = {json.loads(ws.recv())["type"], json.loads(ws.recv())["type"]}
    assert "resetConfirmation" in replies, replies


def fetch_batch(ws: Any, get_data: str) -> int:
    """One EIR batch fetch; returns the number of samples in the data reply."""
    while True:
        ws.send('{"type":"heartbeat"}')
        ws.send(get_data)
        message = json.loads(ws.recv())
        kind = message["type"]
        if kind in ("heartbeat", "error"):
            continue
        if kind != "data":
            raise RuntimeError(f"expected a data reply, got {kind!r}")
        payload = message["payload"]
        if not payload or payload == ["terminate"]:
            raise RuntimeError("the stream ended during the benchmark")
        first, last = payload[0]["sample_id"], payload[-1]["sample_id"]
        if not (SAMPLE_ID.fullmatch(first) and SAMPLE_ID.fullmatch(last)):
            raise RuntimeError(f"unexpected sample ids {first!r} .. {last!r}")
        return len(payload)


# -- client processes (targets of run_clients) --------------------------------------
def streaming_client(
    url: str, batch_size: int, seconds: float, go: Any, results: Any
) -> None:
    """EIR's training connection: probe, unread heartbeat, then batches."""
    try:
        ws = connect(url)
        validation_probe(ws)
        ws.send('{"type":"heartbeat"}')  # EIR never reads this one's reply
        get_data = json.dumps(
            {"type": "getData", "payload": {"batch_size": batch_size}}
        )
        fetch_batch(ws, get_data)  # warm up: the first batch is not timed
        go.wait()
        latencies, samples = [], 0
        cpu = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            samples += fetch_batch(ws, get_data)
            then, now = now, time.perf_counter()
            latencies.append(now - then)
        results.put(
            {
                "samples": samples,
                "elapsed": now - start,
                "latencies": latencies,
                "cpu": time.process_time() - cpu,
            }
        )
        ws.close()
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def status_client(url: str, seconds: float, go: Any, results: Any) -> None:
    """An otherwise idle connection asking for `status` every STATUS_INTERVAL."""
    try:
        ws = connect(url)
        go.wait()
        round_trips = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            reply = request(ws, '{"type":"status","payload":{}}')
            round_trips.append(time.perf_counter() - sent)
            if reply["type"] != "status":
                raise RuntimeError(f"expected a status reply, got {reply['type']!r}")
            time.sleep(max(0.0, STATUS_INTERVAL - (time.perf_counter() - sent)))
        results.put({"round_trips": round_trips})
        ws.close()
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def idle_connections(url: str, count: int, ready: Any, stop: Any, results: Any) -> None:
    """Open `count` connections (handshake + getInfo) and hold them open."""
    try:
        sockets = []
        for _ in range(count):
            ws = connect(url)
            assert request(ws, '{"type":"getInfo"}')["type"] == "info"
            sockets.append(ws)
        ready.set()
        stop.wait()
        for ws in sockets:
            ws.close()
        results.put({"opened": count})
    except Exception as exc:
        ready.set()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


# -- running them -------------------------------------------------------------------
@dataclass
class Run:
    """What the client processes of one scenario reported."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    server_cpu: float = 0.0
    workers_cpu: float = 0.0
    wall: float = 0.0

    def streams(self) -> list[dict[str, Any]]:
        return [r for r in self.reports if "samples" in r]

    def rates(self) -> list[float]:
        return [r["samples"] / r["elapsed"] for r in self.streams()]

    def latencies(self) -> list[float]:
        return [x for r in self.streams() for x in r["latencies"]]

    def clients_cpu(self) -> float:
        """CPU seconds the client processes reported, in all."""
        return sum(r.get("cpu", 0.0) for r in self.reports)


def run_clients(
    server: Server,
    targets: Sequence[tuple[Callable[..., None], tuple[Any, ...]]],
    seconds: float,
    workers_cpu: Callable[[], float] | None = None,
) -> Run:
    """Start the client processes, release them together, collect reports.

    `workers_cpu()`: CPU seconds of the sample workers when they are not the
    server's child processes (the workers of a Dask cluster)."""
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=fn, args=(*args, go, results), daemon=True)
        for fn, args in targets
    ]
    for proc in procs:
        proc.start()
    run = Run()

    def cpu() -> tuple[float, float]:
        server_cpu, children_cpu = server.cpu_seconds()
        return server_cpu, children_cpu if workers_cpu is None else workers_cpu()

    try:
        time.sleep(SETTLE_SECONDS)
        cpu_before = cpu()
        wall = time.perf_counter()
        go.set()
        for _ in procs:
            report = results.get(timeout=seconds + REPORT_TIMEOUT)
            if "error" in report:
                raise RuntimeError(f"a client failed: {report['error']}")
            run.reports.append(report)
        run.wall = time.perf_counter() - wall
        cpu_after = cpu()
        run.server_cpu = cpu_after[0] - cpu_before[0]
        run.workers_cpu = cpu_after[1] - cpu_before[1]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return run


def steady_rate(report: dict[str, Any], batch_size: int) -> float:
    """Samples/s a client received in the second half of its run.

    Every batch of an unbounded stream is full, so batch i ended at the sum
    of the first i latencies; the batches that ended in the second half,
    times batch_size, over that half's length. The read-ahead a server fills
    before its clients start does not count.
    """
    ends = list(accumulate(report["latencies"]))
    if report["samples"] != batch_size * len(ends):
        raise RuntimeError(
            f"{report['samples']} samples in {len(ends)} batches of {batch_size}: "
            "short batches from an unbounded stream"
        )
    half = ends[-1] / 2
    late = sum(1 for end in ends if end > half)
    return late * batch_size / (ends[-1] - half)


@dataclass
class Result:
    """One streaming run: the clients' summed and own steady rates."""

    total: float
    rates: list[float]
    run: Run


def stream(
    server: AbstractContextManager[Server],
    clients: int,
    batch: int,
    seconds: float,
    workers_cpu: Callable[[], float] | None = None,
) -> Result:
    """`clients` streaming clients pulling batches of `batch` for `seconds`
    from the server that `server` starts (and stops afterwards)."""
    with server as running:
        return stream_from(running, clients, batch, seconds, workers_cpu)


def stream_from(
    server: Server,
    clients: int,
    batch: int,
    seconds: float,
    workers_cpu: Callable[[], float] | None = None,
) -> Result:
    """`clients` streaming clients pulling batches of `batch` for `seconds`
    from a running server."""
    targets = [(streaming_client, (server.url, batch, seconds))] * clients
    run = run_clients(server, targets, seconds, workers_cpu)
    rates = [steady_rate(r, batch) for r in run.streams()]
    return Result(sum(rates), rates, run)
