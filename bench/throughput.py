"""Benchmark of the streaming server against the plain generator, on this machine.

Starts `simulation_streamer.py` as a subprocess (a fresh one per scenario)
and drives it with client processes that talk the way EIR's `eirtrain` does
(websocket-client; handshake, the validation probe, one unread heartbeat,
then for every batch `heartbeat` + `getData` back to back and one read,
skipping heartbeat replies). Each data reply is parsed in full with
`json.loads`, as EIR does, checked to be a `data` message whose samples carry
`sample_<k>` ids, and its samples are counted.

Scenarios:
  1. one client, batch --batch-size, for --seconds;
  2. --clients clients at once, same batch;
  3. `status` round trips (50 a second) on an idle connection while another
     client pulls 4,096-sample batches;
  4. 64 open idle connections plus one streaming client for --rss-seconds,
     sampling the server's VmRSS every second (the server process only, its
     sample workers excluded) and reading its VmHWM (peak) at the end.
Every server start also measures the time from process start to listening
(the port accepting TCP connections). Before the servers, the script times
the generators in this process, one seeded RNG per sample exactly as the
server seeds them (random.Random(f"{seed}:{index}")): the plain `randint`
implementation (bench/plain_simulation.py) and ours, best of five runs each
(the samples are generated only, not encoded). The table compares the served
rates with the plain in-process rate, against the targets, and the lines
under it give the CPU used by the server's event loop, its sample workers (its
child processes) and the streaming clients, in % of one core (200% is all of
two cores).

The clients share the machine's cores with the server: on a 2-core machine
the numbers are a floor for what a client on another machine would see.
Load from other programs skews everything; the table prints the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.plain_simulation import plain_simulate_sample  # noqa: E402
from single_sample_simulation import simulate_sample  # noqa: E402

SERVER = ROOT / "simulation_streamer.py"
LARGE_BATCH = 4096
IDLE_CONNECTIONS = 64
STATUS_INTERVAL = 0.02  # seconds between status requests in scenario 3

# Targets (ratios are against the plain generator's in-process rate).
TARGET_ONE_CLIENT = 2.5
TARGET_MANY_CLIENTS = 3.0
TARGET_STATUS_P99_MS = 20.0
TARGET_RSS_MB = 60.0
TARGET_FLAT_MB = 2.0  # RSS growth from the start to the end of the run
TARGET_STARTUP_S = 0.5


# -- generators in this process -------------------------------------------------
def generator_rate(
    simulate: Callable[[random.Random, int], tuple[str, str]],
    seed: int,
    length: int,
    seconds: float,
    repeats: int = 5,
) -> float:
    """Samples per second of `simulate`, one RNG per index as the server seeds.

    The best of `repeats` runs of seconds / repeats each: other programs can
    only slow a run down, so the best is the closest to the generator's own
    speed (and the hardest baseline for the ratios).
    """
    best, index = 0.0, 0
    for _ in range(repeats):
        made = 0
        start = time.perf_counter()
        deadline = start + seconds / repeats
        while True:
            for _ in range(100):
                simulate(random.Random(f"{seed}:{index}"), length)
                index += 1
            made += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, made / (now - start))
    return best


# -- the server process ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float
    log_path: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def status_field(self, name: str) -> int:
        """A field of /proc/<pid>/status in kB (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise KeyError(name)

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) of the server process and of its children."""
        tick = os.sysconf("SC_CLK_TCK")

        def of(pid: int) -> float:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / tick

        children: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            children += [int(pid) for pid in task.read_text().split()]
        return of(self.proc.pid), sum(of(pid) for pid in children)


@contextmanager
def running_server(
    workers: int | None, length: int, seed: int, extra: Sequence[str] = ()
) -> Iterator[Server]:
    """Our server with --workers N (left out if None) and `extra` options."""
    options = ["--sequence-length", str(length), "--seed", str(seed)]
    if workers is not None:
        options += ["--workers", str(workers)]
    with running_process([sys.executable, str(SERVER), *options, *extra]) as server:
        yield server


@contextmanager
def running_process(command: Sequence[str]) -> Iterator[Server]:
    """command + ["--port", <a free port>], run from the repository root,
    until it accepts TCP connections; stopped with SIGINT afterwards."""
    port = free_port()
    command = [*command, "--port", str(port)]
    with tempfile.NamedTemporaryFile(prefix="throughput-server-", suffix=".log") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            startup = wait_listening(proc, port, started, log.name)
            yield Server(proc, port, startup, log.name)
        finally:
            stop_process(proc)


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, started: float, log_path: str
) -> float:
    """Seconds from Popen to the port accepting connections."""
    deadline = started + 20
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{Path(log_path).read_text()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError("server did not listen within 20 s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- clients (separate processes) ----------------------------------------------
def connect(url: str, timeout: float = 60) -> Any:
    import websocket  # imported here: the clients run in their own processes

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


# The simulator's ids, or a dataset's (`--dataset`: rows and word chunks).
SAMPLE_ID = re.compile(r"sample_(0|[1-9][0-9]*)|r(0|[1-9][0-9]*)(c(0|[1-9][0-9]*))?")


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
    try:
        time.sleep(1.0)  # let every client connect, probe and warm up
        cpu_before = server.cpu_seconds()
        if workers_cpu is not None:
            cpu_before = (cpu_before[0], workers_cpu())
        wall = time.perf_counter()
        go.set()
        for _ in procs:
            report = results.get(timeout=seconds + 120)
            if "error" in report:
                raise RuntimeError(f"a client failed: {report['error']}")
            run.reports.append(report)
        run.wall = time.perf_counter() - wall
        cpu_after = server.cpu_seconds()
        if workers_cpu is not None:
            cpu_after = (cpu_after[0], workers_cpu())
        run.server_cpu = cpu_after[0] - cpu_before[0]
        run.workers_cpu = cpu_after[1] - cpu_before[1]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return run


def rss_run(server: Server, batch_size: int, seconds: float) -> dict[str, Any]:
    """64 idle connections + one streaming client; VmRSS sampled every second."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    idle = ctx.Process(
        target=idle_connections,
        args=(server.url, IDLE_CONNECTIONS, ready, stop, results),
        daemon=True,
    )
    idle.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the idle connections did not open within 60 s")
        go, streamed = ctx.Event(), ctx.Queue()
        streamer = ctx.Process(
            target=streaming_client,
            args=(server.url, batch_size, seconds, go, streamed),
            daemon=True,
        )
        streamer.start()
        time.sleep(1.0)
        go.set()
        samples_kb: list[tuple[float, int]] = []
        start = time.perf_counter()
        while streamer.is_alive() and time.perf_counter() - start < seconds + 60:
            samples_kb.append(
                (time.perf_counter() - start, server.status_field("VmRSS"))
            )
            time.sleep(1.0)
        peak_kb = server.status_field("VmHWM")
        report = streamed.get(timeout=60)
        if "error" in report:
            raise RuntimeError(f"the streaming client failed: {report['error']}")
        streamer.join(10)
        stop.set()
        opened = results.get(timeout=30)
        if "error" in opened:
            raise RuntimeError(f"the idle connections failed: {opened['error']}")
    finally:
        stop.set()
        for proc in (idle,):
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return {
        "peak_mb": peak_kb / 1024,
        "samples": samples_kb,
        "rate": report["samples"] / report["elapsed"],
    }


# -- reporting -------------------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_drift_mb(samples: Sequence[tuple[float, int]]) -> tuple[float, float, float]:
    """(RSS early, RSS at the end, growth) in MB: medians of the second tenth
    of the run (after warm-up) and of its last tenth."""
    values = [kb / 1024 for _, kb in samples]
    tenth = max(1, len(values) // 10)
    early = statistics.median(values[tenth : 2 * tenth] or values[:1])
    late = statistics.median(values[-tenth:])
    return early, late, late - early


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    headers = ("measurement", "result", "target", "met")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(line)


class HelpFormatter(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """The description as written, and each option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each streaming scenario"
    )
    parser.add_argument(
        "--rss-seconds",
        type=float,
        default=60.0,
        help="length of the RSS scenario (64 idle connections + 1 streaming)",
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="clients in the many-clients scenario"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="the server's --workers (sample worker processes)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="getData batch_size")
    parser.add_argument(
        "--sequence-length", type=int, default=64, help="HR readings per sample"
    )
    parser.add_argument("--seed", type=int, default=0, help="the server's --seed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run: 3 s per scenario, 10 s for RSS, 2 s per generator",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rss_seconds = 3.0, 10.0
    for name in ("seconds", "rss_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("clients", "batch_size", "sequence_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gen_seconds = 2.0 if args.quick else 5.0
    load_before = os.getloadavg()
    print(
        f"cores: {os.cpu_count()}, load average {load_before[0]:.2f}; "
        f"server --workers {args.workers}, batch {args.batch_size}, "
        f"{args.sequence_length} readings, {args.seconds:g} s per scenario",
        flush=True,
    )

    print("timing the generators in this process ...", flush=True)
    length, seed = args.sequence_length, args.seed
    plain = generator_rate(plain_simulate_sample, seed, length, gen_seconds)
    ours = generator_rate(simulate_sample, seed, length, gen_seconds)

    startups: list[float] = []

    def server() -> Any:
        return running_server(args.workers, length, seed)

    print(f"1 client, batch {args.batch_size} ...", flush=True)
    with server() as s:
        startups.append(s.startup_s)
        one = run_clients(
            s,
            [(streaming_client, (s.url, args.batch_size, args.seconds))],
            args.seconds,
        )

    print(f"{args.clients} clients, batch {args.batch_size} ...", flush=True)
    with server() as s:
        startups.append(s.startup_s)
        many = run_clients(
            s,
            [(streaming_client, (s.url, args.batch_size, args.seconds))] * args.clients,
            args.seconds,
        )

    print(f"status round trips while a client pulls {LARGE_BATCH}-sample batches ...")
    with server() as s:
        startups.append(s.startup_s)
        mixed = run_clients(
            s,
            [
                (streaming_client, (s.url, LARGE_BATCH, args.seconds)),
                (status_client, (s.url, args.seconds)),
            ],
            args.seconds,
        )
    round_trips = [x for r in mixed.reports for x in r.get("round_trips", [])]

    print(
        f"{IDLE_CONNECTIONS} idle connections + 1 streaming, "
        f"{args.rss_seconds:g} s ...",
        flush=True,
    )
    with server() as s:
        startups.append(s.startup_s)
        rss = rss_run(s, args.batch_size, args.rss_seconds)
    early, late, growth = rss_drift_mb(rss["samples"])
    load_after = os.getloadavg()

    one_rate, many_rates = sum(one.rates()), many.rates()
    many_rate = sum(many_rates)
    status_p99 = quantile(round_trips, 0.99) * 1000
    rows = [
        ("plain randint generator, in-process", f"{plain:,.0f} samples/s", "", "-"),
        (
            "our generator, in-process",
            f"{ours:,.0f} samples/s ({ours / plain:.1f}x plain)",
            "",
            "-",
        ),
        (
            f"1 client, batch {args.batch_size}",
            f"{one_rate:,.0f} samples/s ({one_rate / plain:.2f}x plain)",
            f">= {TARGET_ONE_CLIENT}x plain",
            verdict(one_rate >= TARGET_ONE_CLIENT * plain),
        ),
        (
            "  batch latency p50 / p99",
            f"{quantile(one.latencies(), 0.5) * 1000:.2f} / "
            f"{quantile(one.latencies(), 0.99) * 1000:.2f} ms",
            "",
            "-",
        ),
        (
            f"{args.clients} clients, batch {args.batch_size}",
            f"{many_rate:,.0f} samples/s ({many_rate / plain:.2f}x plain)",
            f">= {TARGET_MANY_CLIENTS}x plain",
            verdict(many_rate >= TARGET_MANY_CLIENTS * plain),
        ),
        (
            "  per client: mean (min - max)",
            f"{statistics.fmean(many_rates):,.0f} ({min(many_rates):,.0f} - "
            f"{max(many_rates):,.0f}) samples/s",
            "",
            "-",
        ),
        (
            "  batch latency p50 / p99",
            f"{quantile(many.latencies(), 0.5) * 1000:.2f} / "
            f"{quantile(many.latencies(), 0.99) * 1000:.2f} ms",
            "",
            "-",
        ),
        (
            f"status round trip p50 / p99 (max), {LARGE_BATCH}-sample pulls",
            f"{quantile(round_trips, 0.5) * 1000:.2f} / {status_p99:.2f} "
            f"({max(round_trips) * 1000:.1f}) ms, {len(round_trips)} probes",
            f"p99 < {TARGET_STATUS_P99_MS:g} ms",
            verdict(status_p99 < TARGET_STATUS_P99_MS),
        ),
        (
            f"  the {LARGE_BATCH}-sample puller",
            f"{sum(mixed.rates()):,.0f} samples/s",
            "",
            "-",
        ),
        (
            f"server peak RSS (VmHWM), {IDLE_CONNECTIONS} connections + 1 streaming",
            f"{rss['peak_mb']:.1f} MB (workers excluded)",
            f"< {TARGET_RSS_MB:g} MB",
            verdict(rss["peak_mb"] < TARGET_RSS_MB),
        ),
        (
            f"  RSS over {args.rss_seconds:g} s (2nd tenth -> last tenth)",
            f"{early:.1f} -> {late:.1f} MB ({growth:+.1f} MB), "
            f"{rss['rate']:,.0f} samples/s",
            f"flat (< {TARGET_FLAT_MB:g} MB growth)",
            verdict(growth < TARGET_FLAT_MB),
        ),
        (
            "time from process start to listening",
            f"max {max(startups):.3f} s, median {statistics.median(startups):.3f} s "
            f"({len(startups)} starts)",
            f"< {TARGET_STARTUP_S:g} s",
            verdict(max(startups) < TARGET_STARTUP_S),
        ),
    ]
    print()
    print_table(rows)

    def cpu(run: Run) -> str:
        clients = run.clients_cpu()
        return (
            f"server loop {run.server_cpu / run.wall:.0%}, workers "
            f"{run.workers_cpu / run.wall:.0%}, streaming clients "
            f"{clients / run.wall:.0%} of one core"
        )

    print(f"CPU, 1 client: {cpu(one)}")
    print(f"CPU, {args.clients} clients: {cpu(many)}")
    print(f"CPU, {LARGE_BATCH}-sample pulls: {cpu(mixed)}")
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} cores): numbers taken on a busy machine are low"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "plain_rate": plain,
                    "our_generator_rate": ours,
                    "one_client_rate": one_rate,
                    "many_clients_rate": many_rate,
                    "many_clients_rates": many_rates,
                    "status_round_trip_p99_ms": status_p99,
                    "peak_rss_mb": rss["peak_mb"],
                    "rss_growth_mb": growth,
                    "startup_s": startups,
                    "load_before": load_before,
                    "load_after": load_after,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
