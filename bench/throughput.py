"""Benchmark of the streaming server against the plain generator, on this machine.

Starts `simulation_streamer.py` as a subprocess (a fresh one per scenario)
and drives it with EIR-pattern client processes (bench/clients.py:
handshake, the validation probe, one unread heartbeat, then for every batch
`heartbeat` + `getData` back to back and one read, skipping heartbeat
replies, each data reply parsed in full and its sample ids checked).

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
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import (  # noqa: E402
    Run,
    idle_connections,
    run_clients,
    status_client,
    streaming_client,
)
from bench.plain_simulation import plain_simulate_sample  # noqa: E402
from bench.rounds import HelpFormatter, Row, quantile, step, table  # noqa: E402
from bench.servers import Server  # noqa: E402
from bench.trees import Tree  # noqa: E402
from single_sample_simulation import simulate_sample  # noqa: E402

LARGE_BATCH = 4096
IDLE_CONNECTIONS = 64

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


# -- memory -----------------------------------------------------------------------
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
        samples_kb = sample_rss(server, streamer, seconds)
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
        idle.join(10)
        if idle.is_alive():
            idle.terminate()
            idle.join()
    return {
        "peak_mb": peak_kb / 1024,
        "samples": samples_kb,
        "rate": report["samples"] / report["elapsed"],
    }


def sample_rss(
    server: Server, streamer: multiprocessing.Process, seconds: float
) -> list[tuple[float, int]]:
    """(seconds since the start, VmRSS in kB) every second while `streamer`
    runs (a minute past `seconds` at most: that guards a hang)."""
    samples_kb: list[tuple[float, int]] = []
    start = time.perf_counter()
    while streamer.is_alive() and time.perf_counter() - start < seconds + 60:
        samples_kb.append((time.perf_counter() - start, server.status_field("VmRSS")))
        time.sleep(1.0)
    return samples_kb


def rss_drift_mb(samples: Sequence[tuple[float, int]]) -> tuple[float, float, float]:
    """(RSS early, RSS at the end, growth) in MB: medians of the second tenth
    of the run (after warm-up) and of its last tenth."""
    values = [kb / 1024 for _, kb in samples]
    tenth = max(1, len(values) // 10)
    early = statistics.median(values[tenth : 2 * tenth] or values[:1])
    late = statistics.median(values[-tenth:])
    return early, late, late - early


# -- the run -----------------------------------------------------------------------
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
            value = getattr(args, name)
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    for name in ("clients", "batch_size", "sequence_length"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, "
                f"got {getattr(args, name)}"
            )
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The generators, then the four scenarios, each on a fresh server."""
    this = Tree.at(ROOT, "this tree")
    length, seed, seconds, batch = (
        args.sequence_length,
        args.seed,
        args.seconds,
        args.batch_size,
    )
    gen_seconds = 2.0 if args.quick else 5.0
    step("timing the generators in this process")
    found: dict[str, Any] = {
        "plain": generator_rate(plain_simulate_sample, seed, length, gen_seconds),
        "ours": generator_rate(simulate_sample, seed, length, gen_seconds),
        "startups": [],
    }
    one = [(streaming_client, (batch, seconds))]
    scenarios = [
        ("one", f"1 client, batch {batch}", one),
        ("many", f"{args.clients} clients, batch {batch}", one * args.clients),
        (
            "mixed",
            f"status round trips while a client pulls {LARGE_BATCH}-sample batches",
            [(streaming_client, (LARGE_BATCH, seconds)), (status_client, (seconds,))],
        ),
    ]
    for name, label, clients in scenarios:
        step(label)
        with this.server(args.workers, length, seed) as s:
            found["startups"].append(s.startup_s)
            targets = [(fn, (s.url, *rest)) for fn, rest in clients]
            found[name] = run_clients(s, targets, seconds)
    step(f"{IDLE_CONNECTIONS} idle connections + 1 streaming, {args.rss_seconds:g} s")
    with this.server(args.workers, length, seed) as s:
        found["startups"].append(s.startup_s)
        found["rss"] = rss_run(s, batch, args.rss_seconds)
    return found


def latency(run: Run) -> str:
    p50, p99 = quantile(run.latencies(), 0.5), quantile(run.latencies(), 0.99)
    return f"{p50 * 1000:.2f} / {p99 * 1000:.2f} ms"


def row(name: str, result: str, target: str = "", ok: bool | None = None) -> Row:
    """A row of this tree alone."""
    return Row(name, [result], None, target, None if ok is None else [ok])


def stream_rows(args: argparse.Namespace, found: dict[str, Any]) -> list[Row]:
    plain, ours = found["plain"], found["ours"]
    one, many, mixed = found["one"], found["many"], found["mixed"]
    one_rate, many_rates = sum(one.rates()), many.rates()
    many_rate = sum(many_rates)
    trips = round_trips(mixed)
    status_p99 = quantile(trips, 0.99) * 1000
    return [
        row("plain randint generator, in-process", f"{plain:,.0f} samples/s"),
        row(
            "our generator, in-process",
            f"{ours:,.0f} samples/s ({ours / plain:.1f}x plain)",
        ),
        row(
            f"1 client, batch {args.batch_size}",
            f"{one_rate:,.0f} samples/s ({one_rate / plain:.2f}x plain)",
            f">= {TARGET_ONE_CLIENT}x plain",
            one_rate >= TARGET_ONE_CLIENT * plain,
        ),
        row("  batch latency p50 / p99", latency(one)),
        row(
            f"{args.clients} clients, batch {args.batch_size}",
            f"{many_rate:,.0f} samples/s ({many_rate / plain:.2f}x plain)",
            f">= {TARGET_MANY_CLIENTS}x plain",
            many_rate >= TARGET_MANY_CLIENTS * plain,
        ),
        row(
            "  per client: mean (min - max)",
            f"{statistics.fmean(many_rates):,.0f} ({min(many_rates):,.0f} - "
            f"{max(many_rates):,.0f}) samples/s",
        ),
        row("  batch latency p50 / p99", latency(many)),
        row(
            f"status round trip p50 / p99 (max), {LARGE_BATCH}-sample pulls",
            f"{quantile(trips, 0.5) * 1000:.2f} / {status_p99:.2f} "
            f"({max(trips) * 1000:.1f}) ms, {len(trips)} probes",
            f"p99 < {TARGET_STATUS_P99_MS:g} ms",
            status_p99 < TARGET_STATUS_P99_MS,
        ),
        row(
            f"  the {LARGE_BATCH}-sample puller", f"{sum(mixed.rates()):,.0f} samples/s"
        ),
    ]


def memory_rows(args: argparse.Namespace, found: dict[str, Any]) -> list[Row]:
    rss, startups = found["rss"], found["startups"]
    early, late, growth = rss_drift_mb(rss["samples"])
    return [
        row(
            f"server peak RSS (VmHWM), {IDLE_CONNECTIONS} connections + 1 streaming",
            f"{rss['peak_mb']:.1f} MB (workers excluded)",
            f"< {TARGET_RSS_MB:g} MB",
            rss["peak_mb"] < TARGET_RSS_MB,
        ),
        row(
            f"  RSS over {args.rss_seconds:g} s (2nd tenth -> last tenth)",
            f"{early:.1f} -> {late:.1f} MB ({growth:+.1f} MB), "
            f"{rss['rate']:,.0f} samples/s",
            f"flat (< {TARGET_FLAT_MB:g} MB growth)",
            growth < TARGET_FLAT_MB,
        ),
        row(
            "time from process start to listening",
            f"max {max(startups):.3f} s, median {statistics.median(startups):.3f} s "
            f"({len(startups)} starts)",
            f"< {TARGET_STARTUP_S:g} s",
            max(startups) < TARGET_STARTUP_S,
        ),
    ]


def round_trips(run: Run) -> list[float]:
    """The status round trips the status client reported, in seconds."""
    return [x for r in run.reports for x in r.get("round_trips", [])]


def cpu(run: Run) -> str:
    return (
        f"server loop {run.server_cpu / run.wall:.0%}, workers "
        f"{run.workers_cpu / run.wall:.0%}, streaming clients "
        f"{run.clients_cpu() / run.wall:.0%} of one core"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/throughput.py", *given])
    print(
        f"{command}\n{os.cpu_count()} cores; server --workers {args.workers}, batch "
        f"{args.batch_size}, {args.sequence_length} readings, {args.seconds:g} s "
        "per scenario",
        flush=True,
    )
    found = measure(args)
    this = [Tree.at(ROOT, "this tree")]
    print()
    print(table([*stream_rows(args, found), *memory_rows(args, found)], this))
    print()
    print(f"CPU, 1 client: {cpu(found['one'])}")
    print(f"CPU, {args.clients} clients: {cpu(found['many'])}")
    print(f"CPU, {LARGE_BATCH}-sample pulls: {cpu(found['mixed'])}")
    if args.json:
        many_rates = found["many"].rates()
        summary = {
            "command": command,
            "args": vars(args),
            "plain_rate": found["plain"],
            "our_generator_rate": found["ours"],
            "one_client_rate": sum(found["one"].rates()),
            "many_clients_rate": sum(many_rates),
            "many_clients_rates": many_rates,
            "status_round_trip_p99_ms": quantile(round_trips(found["mixed"]), 0.99)
            * 1000,
            "peak_rss_mb": found["rss"]["peak_mb"],
            "rss_growth_mb": rss_drift_mb(found["rss"]["samples"])[2],
            "startup_s": found["startups"],
        }
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
