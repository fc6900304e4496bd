"""Benchmark of what named streams and GET /metrics cost the serving rate.

Three variants of the server, each a fresh subprocess per run, driven by
EIR-pattern client processes (bench/clients.py):

  a. the baseline tree (--baseline): the checkout before named streams, with
     no per-stream counts and no /metrics (git worktree add
     /tmp/before-streams 068f847);
  b. this tree (or --tree), with a thread of this process sending GET /metrics every
     --scrape-interval seconds from the server's start to its stop, as a
     Prometheus would (every scrape must answer 200 with the metrics);
  c. this tree, never scraped.

in three scenarios: the default source (the simulator, default --workers,
64 readings) with 1 client and with 4 clients, batch 32; and the word
chunks of bench/datasets.py's FineWeb-like corpus (bench/dataset_files.py,
4 files of 4,000 documents, 64 words a chunk, index order) with 4 clients
of batch 256. The issue's target: with metrics on, these rates stay within
5% of metrics off (b / a and b / c at least 0.95).

Each round runs every (scenario, variant) pair once, a scenario's variants
back to back, every other round in reverse order (bench/rounds.py); a rate
is the median of the rounds' steady rates (summed over the clients) and a
ratio the median of the rounds' ratios, so two runs compared are always
seconds apart. It prints the command and two markdown tables: the rates,
and the CPU per sample served of the server process and its workers (less
sensitive than a rate to other work on a shared machine). Then, measured
in this process, what metrics add: the time to build one /metrics answer
(1 and 8 streams) and the counting of one getData.

    git worktree add /tmp/before-streams 068f847
    python bench/metrics.py --baseline /tmp/before-streams
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import Result, stream_from  # noqa: E402
from bench.dataset_files import write_text_corpus  # noqa: E402
from bench.rounds import HelpFormatter, median_ratio, run_rounds, step  # noqa: E402
from bench.trees import Tree  # noqa: E402
from data_simulator import SimulatedHealthData  # noqa: E402
from eirstream.engines import ThreadEngine  # noqa: E402
from eirstream.metrics import ServerMetrics  # noqa: E402
from eirstream.readahead import SampleProducer  # noqa: E402
from eirstream.stream import SampleStream  # noqa: E402
from eirstream.streams import DEFAULT_STREAM, Counts, Streams  # noqa: E402

SCRAPE_TIMEOUT = 30.0  # seconds one GET /metrics may take (guards a hang)
# scenario: (clients, batch size, word chunks?)
SCENARIOS = {
    "default source, 1 client, batch 32": (1, 32, False),
    "default source, 4 clients, batch 32": (4, 32, False),
    "word chunks, 4 clients, batch 256": (4, 256, True),
}
BASELINE, SCRAPED, QUIET = "a: before streams", "b: scraped", "c: not scraped"


class Scraper:
    """GET http://127.0.0.1:port/metrics every `interval` seconds in a
    thread, until stopped; each reply must be 200 and hold the metrics."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.scrapes = 0
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(SCRAPE_TIMEOUT)
        if self.failure is not None:
            raise RuntimeError(f"GET /metrics failed: {self.failure}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                status, body = http_get(self.port, "/metrics")
            except OSError as exc:
                self.failure = str(exc)
                return
            if status != 200 or b"eirstream_samples_served_total" not in body:
                self.failure = f"HTTP {status}, {len(body)} bytes without the metrics"
                return
            self.scrapes += 1


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port/path: (status, body). The server closes the
    connection after an HTTP reply, so the body is all it sends after the
    headers, read to the end whatever they say."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), SCRAPE_TIMEOUT) as sock:
        sock.sendall(request.encode())
        while chunk := sock.recv(1 << 16):
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return int(head.split(None, 2)[1]), body


@dataclass
class Measured:
    runs: dict[tuple[str, Tree], list[Result]]
    scrapes: list[int] = field(default_factory=list)


def measure(args: argparse.Namespace, spec: Path, cache: Path) -> Measured:
    """Every scenario on every variant, in --rounds rounds."""
    this = Tree.at(args.tree, SCRAPED).with_env(EIR_STREAM_CACHE=str(cache / "this"))
    variants = [
        Tree.at(args.baseline, BASELINE).with_env(
            EIR_STREAM_CACHE=str(cache / "baseline")
        ),
        this,
        Tree.at(args.tree, QUIET).with_env(EIR_STREAM_CACHE=str(cache / "this")),
    ]
    scrapes: list[int] = []

    def run(scenario: str, tree: Tree, note: str) -> Result:
        clients, batch, chunks = SCENARIOS[scenario]
        step(f"{scenario}{note} [{tree.label}]")
        extra = ("--dataset", str(spec)) if chunks else ()
        with tree.server(None, 64, args.seed, extra) as server:
            if tree.label != SCRAPED:
                return stream_from(server, clients, batch, args.seconds)
            with Scraper(server.port, args.scrape_interval) as scraper:
                result = stream_from(server, clients, batch, args.seconds)
            scrapes.append(scraper.scrapes)
            return result

    runs = run_rounds(list(SCENARIOS), variants, args.rounds, run)
    return Measured(runs, scrapes)


NAMES = ("b / a", "c / a", "b / c")


def cpu_us(result: Result, loop_only: bool = False) -> float:
    """CPU of the server process (and, unless `loop_only`, of its worker
    processes) per sample the clients received during the run, in us."""
    run = result.run
    samples = sum(report["samples"] for report in run.streams())
    cpu = run.server_cpu + (0.0 if loop_only else run.workers_cpu)
    return 1e6 * cpu / samples


def by_variant(measured: Measured, scenario: str, read: Any) -> list[list[float]]:
    """`read(result)` of every round of `scenario`, for a, b and c."""
    found = {
        tree.label: [read(result) for result in results]
        for (name, tree), results in measured.runs.items()
        if name == scenario
    }
    return [found[BASELINE], found[SCRAPED], found[QUIET]]


def ratios(a: list[float], b: list[float], c: list[float]) -> list[float]:
    """b / a, c / a and b / c: medians of the rounds' ratios."""
    return [median_ratio(b, a), median_ratio(c, a), median_ratio(b, c)]


def markdown(head: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(measured: Measured) -> dict[str, Any]:
    """Print the tables (rates; CPU per sample); the numbers for --json."""
    head = ["scenario", BASELINE, SCRAPED, QUIET, *NAMES]
    rate_rows, cpu_rows, summary = [], [], {}
    for scenario in SCENARIOS:
        rates = by_variant(measured, scenario, lambda result: result.total)
        cpu = by_variant(measured, scenario, cpu_us)
        loop = by_variant(measured, scenario, lambda r: cpu_us(r, loop_only=True))
        rate_ratios, cpu_ratios, loop_ratios = (
            ratios(*rates),
            ratios(*cpu),
            ratios(*loop),
        )
        rate_rows.append(
            [scenario]
            + [f"{statistics.median(r):,.0f} samples/s" for r in rates]
            + [f"{x:.3f}" for x in rate_ratios]
        )
        cpu_rows.append(
            [scenario]
            + [
                f"{statistics.median(c):.2f} us (loop {statistics.median(lo):.2f})"
                for c, lo in zip(cpu, loop, strict=True)
            ]
            + [
                f"{x:.3f} (loop {y:.3f})"
                for x, y in zip(cpu_ratios, loop_ratios, strict=True)
            ]
        )
        summary[scenario] = {
            "rates": rates,
            "rate_ratios": rate_ratios,
            "cpu_us": cpu,
            "loop_us": loop,
            "cpu_ratios": cpu_ratios,
            "loop_ratios": loop_ratios,
        }
    print("Rates (steady, summed over the clients):\n")
    print(markdown(head, rate_rows))
    print("\nCPU per sample served, the server process and its workers (loop: the")
    print("server process alone); a ratio above 1 costs more:\n")
    print(markdown(head, cpu_rows))
    print(
        f"\n/metrics answered {sum(measured.scrapes)} scrapes in all, "
        f"{min(measured.scrapes)} to {max(measured.scrapes)} a run of variant b"
    )
    low = [
        f"{scenario}: {name} {ratio:.3f}"
        for scenario, found in summary.items()
        for name, ratio in zip(NAMES, found["rate_ratios"], strict=True)
        if ratio < 0.95
    ]
    print("rate ratios below 0.95: " + ("; ".join(low) if low else "none"))
    return summary


def best_seconds(call: Callable[[], object], times: int) -> float:
    """Seconds one `call()` takes: the best of 5 runs of `times` calls."""
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(times):
            call()
        best = min(best, (time.perf_counter() - began) / times)
    return best


def added_costs() -> dict[str, float]:
    """What metrics add, measured in this process on this tree: building one
    /metrics answer with 1 and with 8 streams (ms), and the counting a
    getData gets (two clock reads, the wait histogram, the counters; us)."""
    source = SimulatedHealthData(max_iterations=1_000_000)
    producer = SampleProducer(ThreadEngine(source))
    costs = {}
    for count in (1, 8):
        streams = Streams(lambda name: SampleStream.for_source(source, name=name))
        for k in range(count):
            streams.open(DEFAULT_STREAM if k == 0 else f"run-{k}")
        metrics = ServerMetrics(streams, producer.status)
        costs[f"scrape_ms_{count}_streams"] = 1e3 * best_seconds(metrics.exposition, 50)
    producer.close()
    counts = Counts()

    def get_data() -> None:
        arrived = time.perf_counter()
        counts.requests += 2  # the getData and its heartbeat
        counts.waits.observe(time.perf_counter() - arrived)
        counts.bytes_served += 30_000

    costs["count_us_per_get_data"] = 1e6 * best_seconds(get_data, 100_000)
    return costs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    add(
        "--baseline",
        metavar="TREE",
        type=Path,
        required=True,
        help="the checkout before named streams (git worktree add "
        "/tmp/before-streams 068f847)",
    )
    add(
        "--tree",
        metavar="TREE",
        type=Path,
        default=ROOT,
        help="the checkout measured as b and c (a worktree of one commit keeps "
        "edits in progress out of the measurement)",
    )
    add("--rounds", type=int, default=8, help="rounds of every scenario and variant")
    add("--seconds", type=float, default=8.0, help="length of each streaming run")
    add(
        "--scrape-interval",
        type=float,
        default=1.0,
        help="seconds between GET /metrics in variant b",
    )
    add("--seed", type=int, default=0, help="the servers' and the corpus's seed")
    add("--json", metavar="FILE", help="also write the rates and ratios here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.scrape_interval <= 0:
        parser.error("--rounds, --seconds and --scrape-interval must be positive")
    if args.baseline.resolve() == args.tree.resolve():
        parser.error(f"--baseline {args.baseline} is the tree measured")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/metrics.py", *given])
    print(
        f"{command}\n{os.cpu_count()} cores; {args.seconds:g} s a run, "
        f"{args.rounds} rounds, a scrape every {args.scrape_interval:g} s in b",
        flush=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    try:
        step("writing the word-chunk corpus")
        corpus = write_text_corpus(folder / "text", 4, 4000, 1000, args.seed)
        measured = measure(args, corpus.spec, folder / "cache")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    step("timing a /metrics answer and a getData's counting in this process")
    costs = added_costs()
    print()
    print(command)
    summary = report(measured)
    print(
        f"in this process: a /metrics answer takes "
        f"{costs['scrape_ms_1_streams']:.2f} ms with 1 stream and "
        f"{costs['scrape_ms_8_streams']:.2f} ms with 8; counting a getData "
        f"{costs['count_us_per_get_data']:.2f} us"
    )
    summary["added_costs"] = costs
    if args.json:
        summary = {"command": command, "scrapes": measured.scrapes, **summary}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
