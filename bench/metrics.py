"""Benchmark of what named streams and GET /metrics cost the serving rate.

Three variants of the server, each a fresh subprocess per run, driven by
EIR-pattern client processes (bench/clients.py):

  a. the baseline tree (--baseline): the checkout before named streams, with
     no per-stream counts and no /metrics (git worktree add
     /tmp/before-streams 068f847);
  b. this tree, with a thread of this process sending GET /metrics every
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
seconds apart. It prints the command and a markdown table.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import Result, stream_from  # noqa: E402
from bench.dataset_files import write_text_corpus  # noqa: E402
from bench.rounds import HelpFormatter, median_ratio, run_rounds, step  # noqa: E402
from bench.trees import Tree  # noqa: E402

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
    this = Tree.at(ROOT, SCRAPED).with_env(EIR_STREAM_CACHE=str(cache / "this"))
    variants = [
        Tree.at(args.baseline, BASELINE).with_env(
            EIR_STREAM_CACHE=str(cache / "baseline")
        ),
        this,
        Tree.at(ROOT, QUIET).with_env(EIR_STREAM_CACHE=str(cache / "this")),
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


def report(measured: Measured) -> dict[str, Any]:
    """Print the markdown table; the numbers as a dict for --json."""
    names = ("b / a", "c / a", "b / c")
    head = ["scenario", BASELINE, SCRAPED, QUIET, *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary: dict[str, Any] = {}
    for scenario in SCENARIOS:
        rates = {
            tree.label: [result.total for result in results]
            for (name, tree), results in measured.runs.items()
            if name == scenario
        }
        a, b, c = rates[BASELINE], rates[SCRAPED], rates[QUIET]
        ratios = [median_ratio(b, a), median_ratio(c, a), median_ratio(b, c)]
        cells = [f"{statistics.median(r):,.0f} samples/s" for r in (a, b, c)]
        lines.append(
            "| " + " | ".join([scenario, *cells, *(f"{x:.3f}" for x in ratios)]) + " |"
        )
        summary[scenario] = {"rates": rates, "ratios": ratios}
    print("\n".join(lines))
    print(
        f"\n/metrics answered {sum(measured.scrapes)} scrapes in all, "
        f"{min(measured.scrapes)} to {max(measured.scrapes)} a run of variant b"
    )
    low = [
        f"{scenario}: {name} {ratio:.3f}"
        for scenario, found in summary.items()
        for name, ratio in zip(names, found["ratios"], strict=True)
        if ratio < 0.95
    ]
    print("ratios below 0.95: " + ("; ".join(low) if low else "none"))
    return summary


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
    add("--rounds", type=int, default=5, help="rounds of every scenario and variant")
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
    if args.baseline.resolve() == ROOT:
        parser.error(f"--baseline {args.baseline} is this tree")
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
    print()
    print(command)
    summary = report(measured)
    if args.json:
        summary = {"command": command, "scrapes": measured.scrapes, **summary}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
