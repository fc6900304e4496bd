"""Benchmark of sample generation on executors, and of the server's own ceiling.

One run on this machine, every server a fresh subprocess, every client an
EIR-pattern client process from bench/throughput.py (handshake, validation
probe, one unread heartbeat, then heartbeat + getData back to back per batch,
each reply parsed in full):

  1. heavy source (bench/heavy_source.py, a fixed ~3 ms of CPU per sample)
     with --workers 1, --workers 2, and --cluster on a local Dask cluster of
     2 workers with 1 thread each (`dask scheduler` + `dask worker`, started
     here on 127.0.0.1 and killed at the end);
  2. the default source with 1 client (--repeats rounds) and with --clients
     clients (default --workers);
  3. `status` round trips on an idle connection while another client pulls
     4,096-sample batches (default source, default --workers);
  4. the ceiling: one client against bench/ceiling_server.py, which answers
     every getData with the same prebuilt bytes and keeps no stream, and
     against our server with a near-free source (bench/pool_source.py: 1,024
     samples made once, then served again and again).

Baselines measured in this process in the same run: the plain `randint`
generator (bench/plain_simulation.py, best of five short runs, timed right
before each default-source run it is compared with) and the heavy source's
time per sample. Rates are steady state: samples a client received in the
second half of its run divided by that half's length, so the read-ahead the
server fills before the clients start does not count. The scenarios that are
compared with each other (1 and 4) run in --repeats rounds, back to back
within a round (every other round in reverse order); a ratio is the median of
the rounds' ratios and a rate the median of the rounds' rates. This machine's
speed drifts by tens of percent over minutes (other tenants), so runs compared
across rounds would measure the drift, not the server. "workers busy" is the
CPU the sample workers got (local workers: the server's child processes; Dask:
the worker processes and their nannies), in cores: on a shared machine it
tells a slow engine from a starved one. The table is markdown, with the
command that made it; the load average before and after says how busy the
machine was (on a shared machine the rates are low, and the clients share the
cores with the server and its workers anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from itertools import accumulate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.heavy_source import make_source as make_heavy_source  # noqa: E402
from bench.plain_simulation import plain_simulate_sample  # noqa: E402
from bench.throughput import (  # noqa: E402
    LARGE_BATCH,
    HelpFormatter,
    Run,
    Server,
    generator_rate,
    quantile,
    run_clients,
    running_process,
    running_server,
    status_client,
    streaming_client,
)

HEAVY_SOURCE = "bench/heavy_source.py:make_source"
POOL_SOURCE = "bench/pool_source.py:make_source"
CEILING_SERVER = ROOT / "bench" / "ceiling_server.py"

TARGET_TWO_WORKERS = 1.7  # 2 local workers vs 1, heavy source
TARGET_DASK = 1.5  # 2-worker Dask cluster vs 1 local worker, heavy source
TARGET_DEFAULT_VS_PLAIN = 2.0  # default source, 1 client, vs plain randint
TARGET_STATUS_P99_MS = 20.0
TARGET_CEILING = 0.8  # near-free source vs the server that generates nothing


def steady_rate(report: dict[str, Any], batch_size: int) -> float:
    """Samples/s a client received in the second half of its run.

    Every batch of an unbounded stream is full, so batch i ended at the sum
    of the first i latencies; the batches that ended in the second half,
    times batch_size, over that half's length.
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


def heavy_ms_per_sample(seconds: float) -> float:
    """The heavy source's time per sample in this process (best of 3)."""
    source = make_heavy_source()
    best = float("inf")
    index = 0
    for _ in range(3):
        start, made = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            source.samples_json(range(index, index + 10))
            index, made = index + 10, made + 10
        best = min(best, (time.perf_counter() - start) / made)
    return best * 1000


Result = tuple[float, list[float], Run]  # total rate, rate per client, the run


def stream(
    server: AbstractContextManager[Server],
    clients: int,
    batch: int,
    seconds: float,
    workers_cpu: Callable[[], float] | None = None,
) -> Result:
    """(total steady rate, per-client steady rates, the run) of `clients`."""
    with server as s:
        targets = [(streaming_client, (s.url, batch, seconds))] * clients
        run = run_clients(s, targets, seconds, workers_cpu)
    rates = [steady_rate(r, batch) for r in run.streams()]
    return sum(rates), rates, run


def totals(results: Sequence[Result]) -> list[float]:
    return [result[0] for result in results]


def median_run(results: Sequence[Result]) -> Result:
    """The run with the median total rate (the middle one of an odd count)."""
    return sorted(results, key=lambda result: result[0])[(len(results) - 1) // 2]


def median_ratio(rates: Sequence[float], baseline: Sequence[float]) -> float:
    """The median over rounds of (this rate / the baseline's in the same round).

    The speed of a shared machine drifts over minutes; two runs a few seconds
    apart in one round see nearly the same machine, so the ratio of a round is
    steadier than a ratio of rates taken from different rounds.
    """
    return statistics.median(r / b for r, b in zip(rates, baseline, strict=True))


def in_round_order(scenarios: list[Any], round_index: int) -> list[Any]:
    """ABBA: every other round runs the scenarios backwards, so a drift of
    the machine's speed during a round does not favour the one that runs first."""
    return scenarios if round_index % 2 == 0 else scenarios[::-1]


def markdown(rows: Sequence[tuple[str, str, str, str]]) -> str:
    lines = ["| measurement | result | target | met |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="length of each streaming scenario"
    )
    parser.add_argument("--clients", type=int, default=4, help="clients in scenario 2")
    parser.add_argument("--batch-size", type=int, default=32, help="getData batch_size")
    parser.add_argument(
        "--sequence-length", type=int, default=64, help="HR readings per sample"
    )
    parser.add_argument("--seed", type=int, default=0, help="the servers' --seed")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds of the compared scenarios (heavy source on each engine, "
        "ceiling vs near-free), each round running all of them back to back; "
        "a ratio is the median of its rounds' ratios",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 s per scenario, 1 round"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 3.0, 1
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds:g}")
    for name in ("clients", "batch_size", "sequence_length", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/executors.py", *given])
    seconds, batch, length, seed = (
        args.seconds,
        args.batch_size,
        args.sequence_length,
        args.seed,
    )
    load_before = os.getloadavg()
    print(
        f"{command}\ncores: {os.cpu_count()}, load average {load_before[0]:.2f}; "
        f"batch {batch}, {length} readings, {seconds:g} s per scenario",
        flush=True,
    )

    def ours(workers: int | None, *extra: str) -> AbstractContextManager[Server]:
        return running_server(workers, length, seed, extra)

    def step(text: str) -> None:
        print(f"{text} ...", flush=True)

    rounds = [
        f" (round {n} of {args.repeats})" if args.repeats > 1 else ""
        for n in range(1, args.repeats + 1)
    ]

    step("timing the heavy source in this process")
    heavy_ms = heavy_ms_per_sample(1.5)

    heavy_spec = ("--source", HEAVY_SOURCE)
    heavy_runs: dict[str, list[Result]] = {"1": [], "2": [], "dask": []}
    step("starting a local Dask cluster (2 workers x 1 thread)")
    from tests.local_dask import local_dask_cluster

    with local_dask_cluster(nworkers=2, nthreads=1) as cluster:
        on_dask = ("--cluster", cluster.address)
        for index, round_ in enumerate(rounds):
            for engine in in_round_order(["1", "2", "dask"], index):
                if engine == "dask":
                    step(f"heavy source, --cluster {cluster.address}{round_}")
                    server = ours(None, *heavy_spec, *on_dask)
                    run = stream(server, 1, batch, seconds, cluster.cpu_seconds)
                else:
                    step(f"heavy source, --workers {engine}{round_}")
                    run = stream(ours(int(engine), *heavy_spec), 1, batch, seconds)
                heavy_runs[engine].append(run)
    heavy1, _, run1 = median_run(heavy_runs["1"])
    heavy2, _, run2 = median_run(heavy_runs["2"])
    heavy_dask, _, run_dask = median_run(heavy_runs["dask"])
    two_vs_one = median_ratio(totals(heavy_runs["2"]), totals(heavy_runs["1"]))
    dask_vs_one = median_ratio(totals(heavy_runs["dask"]), totals(heavy_runs["1"]))

    # The plain generator right before each run it is compared with,
    # so that the ratio compares the same minute of this machine.
    one_runs: list[Result] = []
    plain_rates: list[float] = []
    for round_ in rounds:
        step(f"plain generator, then default source, 1 client, batch {batch}{round_}")
        plain_rates.append(generator_rate(plain_simulate_sample, seed, length, 1.0))
        one_runs.append(stream(ours(None), 1, batch, seconds))
    one, _, run_one = median_run(one_runs)
    one_vs_plain = median_ratio(totals(one_runs), plain_rates)
    plain = statistics.median_low(plain_rates)  # as median_run picks a round
    step(f"default source, {args.clients} clients, batch {batch}")
    many, many_rates, _ = stream(ours(None), args.clients, batch, seconds)

    step(f"status round trips while a client pulls {LARGE_BATCH}-sample batches")
    with ours(None) as s:
        mixed = run_clients(
            s,
            [
                (streaming_client, (s.url, LARGE_BATCH, seconds)),
                (status_client, (s.url, seconds)),
            ],
            seconds,
        )
    round_trips = [x for r in mixed.reports for x in r.get("round_trips", [])]
    status_p99 = quantile(round_trips, 0.99) * 1000

    ceiling_command = [sys.executable, str(CEILING_SERVER), "--seed", str(seed)]
    ceiling_command += ["--sequence-length", str(length)]
    runs: dict[str, list[Result]] = {"ceiling": [], "default": [], "thread": []}
    for index, round_ in enumerate(rounds):
        for scenario in in_round_order(list(runs), index):
            if scenario == "ceiling":
                step(f"ceiling: a server that generates nothing{round_}")
                server = running_process(ceiling_command)
            elif scenario == "default":
                step(f"our server with the near-free source{round_}")
                server = ours(None, "--source", POOL_SOURCE)
            else:
                step(f"our server with the near-free source, --workers 0{round_}")
                server = ours(0, "--source", POOL_SOURCE)
            runs[scenario].append(stream(server, 1, batch, seconds))
    ceiling = median_run(runs["ceiling"])[0]
    near_free = median_run(runs["default"])[0]
    near_free_in_thread = median_run(runs["thread"])[0]
    near_free_ratio = median_ratio(totals(runs["default"]), totals(runs["ceiling"]))
    in_thread_ratio = median_ratio(totals(runs["thread"]), totals(runs["ceiling"]))
    load_after = os.getloadavg()

    def rate(value: float, ratio: float | None = None, of: str = "") -> str:
        text = f"{value:,.0f} samples/s"
        return text if ratio is None else f"{text} ({ratio:.2f}x {of})"

    def busy(run: Run) -> str:
        return f"; workers busy {run.workers_cpu / run.wall:.2f} cores"

    def row(
        name: str, result: str, target: str = "", ok: bool | None = None
    ) -> tuple[str, str, str, str]:
        return name, result, target, "-" if ok is None else ("yes" if ok else "NO")

    rows = [
        row("plain randint generator, in-process (baseline)", rate(plain)),
        row(
            "heavy source, in-process",
            f"{heavy_ms:.2f} ms/sample ({1000 / heavy_ms:,.0f} samples/s)",
        ),
        row("heavy source, --workers 1", rate(heavy1) + busy(run1)),
        row(
            "heavy source, --workers 2",
            rate(heavy2, two_vs_one, "--workers 1") + busy(run2),
            f">= {TARGET_TWO_WORKERS}x --workers 1",
            two_vs_one >= TARGET_TWO_WORKERS,
        ),
        row(
            "heavy source, --cluster (local Dask, 2 workers x 1 thread)",
            rate(heavy_dask, dask_vs_one, "--workers 1") + busy(run_dask),
            f">= {TARGET_DASK}x --workers 1",
            dask_vs_one >= TARGET_DASK,
        ),
        row(
            f"default source, 1 client, batch {batch}",
            rate(one, one_vs_plain, "plain, timed just before"),
            f">= {TARGET_DEFAULT_VS_PLAIN}x plain",
            one_vs_plain >= TARGET_DEFAULT_VS_PLAIN,
        ),
        row(
            f"default source, {args.clients} clients, batch {batch}",
            rate(many, many / plain, "plain")
            + f"; per client {min(many_rates):,.0f} - {max(many_rates):,.0f}",
        ),
        row(
            f"status round trip p50 / p99 (max), {LARGE_BATCH}-sample pulls",
            f"{quantile(round_trips, 0.5) * 1000:.2f} / {status_p99:.2f} "
            f"({max(round_trips) * 1000:.1f}) ms, {len(round_trips)} probes",
            f"p99 < {TARGET_STATUS_P99_MS:g} ms",
            status_p99 < TARGET_STATUS_P99_MS,
        ),
        row(
            f"ceiling: server that generates nothing, 1 client, batch {batch}",
            rate(ceiling),
        ),
        row(
            "our server, near-free source, 1 client (default --workers)",
            rate(near_free, near_free_ratio, "ceiling"),
            f">= {TARGET_CEILING}x ceiling",
            near_free_ratio >= TARGET_CEILING,
        ),
        row(
            "our server, near-free source, 1 client, --workers 0",
            rate(near_free_in_thread, in_thread_ratio, "ceiling"),
            f">= {TARGET_CEILING}x ceiling",
            in_thread_ratio >= TARGET_CEILING,
        ),
    ]
    print()
    print(markdown(rows))
    print()

    def cpu(run: Run) -> str:
        return (
            f"server loop {run.server_cpu / run.wall:.0%}, its workers "
            f"{run.workers_cpu / run.wall:.0%} of one core"
        )

    print(f"CPU, heavy --workers 1: {cpu(run1)}; --workers 2: {cpu(run2)}")
    print(f"CPU, default source, 1 client: {cpu(run_one)}")
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} cores)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "plain_rate": plain,
                    "heavy_ms_per_sample": heavy_ms,
                    "heavy_workers_1": heavy1,
                    "heavy_workers_2": heavy2,
                    "heavy_dask_2": heavy_dask,
                    "default_one_client": one,
                    "default_many_clients": many,
                    "status_p99_ms": status_p99,
                    "ceiling": ceiling,
                    "near_free": near_free,
                    "near_free_workers_0": near_free_in_thread,
                    "load_before": load_before,
                    "load_after": load_after,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
