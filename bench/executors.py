"""Benchmark of sample generation on executors, and of the server's own ceiling.

Every server a fresh subprocess, every client an EIR-pattern client process
(bench/clients.py: handshake, validation probe, one unread heartbeat, then
heartbeat + getData back to back per batch, each reply parsed in full):

  1. heavy source (bench/heavy_source.py, a fixed ~3 ms of CPU per sample)
     with --workers 1, --workers 2, and --cluster on a local Dask cluster of
     2 workers with 1 thread each (`dask scheduler` + `dask worker`, started
     here on 127.0.0.1 and killed at the end; one cluster per tree);
  2. the default source with 1 client (--repeats rounds) and with --clients
     clients (default --workers);
  3. `status` round trips on an idle connection while another client pulls
     4,096-sample batches (default source, default --workers);
  4. the ceiling: one client against bench/ceiling_server.py, which answers
     every getData with the same prebuilt bytes and keeps no stream, and
     against our server with a near-free source (bench/pool_source.py: 1,024
     samples made once, then served again and again).

References measured in the same run: the plain `randint` generator
(bench/plain_simulation.py, best of five short runs in this process, timed
right before each default-source run it is compared with) and the heavy
source's time per sample (in a fresh process on the tree: bench/in_tree.py).
Rates are steady state (bench/clients.py's `steady_rate`). The scenarios
compared with each other (1, 2 with one client, and 4) run in --repeats
rounds (bench/rounds.py): a ratio is the median of the rounds' ratios and a
rate the median of the rounds' rates. "workers busy" is the CPU the sample
workers got (local workers: the server's child processes; Dask: the worker
processes and their nannies), in cores: on a shared machine it tells a slow
engine from a starved one. The clients share the machine's cores with the
server and its workers.

With --baseline TREE (another checkout of the project), every scenario and
baseline runs for TREE and for this tree in the same rounds, and the table
has a column for each and their ratio (this / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.local_dask import local_dask_cluster  # noqa: E402

from bench.clients import (  # noqa: E402
    Result,
    run_clients,
    status_client,
    stream,
    streaming_client,
)
from bench.executor_rows import DEFAULT, report  # noqa: E402
from bench.plain_simulation import plain_simulate_sample  # noqa: E402
from bench.rounds import HelpFormatter, run_rounds, step  # noqa: E402
from bench.throughput import LARGE_BATCH, generator_rate  # noqa: E402
from bench.trees import Tree, trees_of  # noqa: E402

HEAVY_SOURCE = "bench/heavy_source.py:make_source"  # from the tree's root
POOL_SOURCE = "bench/pool_source.py:make_source"


def heavy_runs(args: argparse.Namespace, trees: list[Tree]) -> dict[Any, list[Result]]:
    """Scenario 1 in rounds: --workers 1, --workers 2 and a 2-worker Dask
    cluster (one per tree: a cluster keeps the modules a server sent it)."""
    heavy = ("--source", HEAVY_SOURCE)
    with ExitStack() as stack:
        clusters = {}
        for tree in trees:
            step(f"starting a local Dask cluster (2 workers x 1 thread) [{tree.label}]")
            clusters[tree] = stack.enter_context(
                local_dask_cluster(2, 1, idle_timeout="1h")
            )

        def run(scenario: str, tree: Tree, note: str) -> Result:
            step(f"{scenario}{note} [{tree.label}]")
            if scenario == "heavy, --cluster":
                cluster = clusters[tree]
                options = (*heavy, "--cluster", cluster.address)
                server = tree.server(None, args.sequence_length, args.seed, options)
                return stream(
                    server, 1, args.batch_size, args.seconds, cluster.cpu_seconds
                )
            workers = int(scenario.rpartition(" ")[2])
            server = tree.server(workers, args.sequence_length, args.seed, heavy)
            return stream(server, 1, args.batch_size, args.seconds)

        scenarios = ["heavy, --workers 1", "heavy, --workers 2", "heavy, --cluster"]
        return run_rounds(scenarios, trees, args.repeats, run)


def default_runs(
    args: argparse.Namespace, trees: list[Tree]
) -> tuple[dict[Any, list[Result]], dict[Any, list[float]]]:
    """Scenario 2 with one client in rounds, the plain generator timed right
    before each run (so that their ratio compares the same minute); the runs
    and the plain rates, by (scenario, tree)."""
    plain: dict[Any, list[float]] = {(DEFAULT, tree): [] for tree in trees}

    def run(scenario: str, tree: Tree, note: str) -> Result:
        step(
            f"plain generator, then default source, 1 client, batch "
            f"{args.batch_size}{note} [{tree.label}]"
        )
        rate = generator_rate(
            plain_simulate_sample, args.seed, args.sequence_length, 1.0
        )
        plain[scenario, tree].append(rate)
        server = tree.server(None, args.sequence_length, args.seed)
        return stream(server, 1, args.batch_size, args.seconds)

    return run_rounds([DEFAULT], trees, args.repeats, run), plain


def once_runs(args: argparse.Namespace, trees: list[Tree]) -> dict[Any, list[Any]]:
    """Scenario 2 with --clients clients, and scenario 3, once on each tree."""
    length, seed, seconds = args.sequence_length, args.seed, args.seconds

    def run(scenario: str, tree: Tree, note: str) -> Any:
        if scenario == "many":
            step(f"default source, {args.clients} clients{note} [{tree.label}]")
            return stream(
                tree.server(None, length, seed), args.clients, args.batch_size, seconds
            )
        step(
            f"status round trips while a client pulls {LARGE_BATCH}-sample "
            f"batches [{tree.label}]"
        )
        with tree.server(None, length, seed) as s:
            mixed = run_clients(
                s,
                [
                    (streaming_client, (s.url, LARGE_BATCH, seconds)),
                    (status_client, (s.url, seconds)),
                ],
                seconds,
            )
        return [x for r in mixed.reports for x in r.get("round_trips", [])]

    return run_rounds(["many", "status"], trees, 1, run)


def ceiling_runs(
    args: argparse.Namespace, trees: list[Tree]
) -> dict[Any, list[Result]]:
    """Scenario 4 in rounds: the ceiling server, and the near-free source with
    the default --workers and with --workers 0."""
    length, seed = args.sequence_length, args.seed
    pool = ("--source", POOL_SOURCE)

    def run(scenario: str, tree: Tree, note: str) -> Result:
        where = f"{note} [{tree.label}]"
        if scenario == "ceiling":
            step(f"ceiling: a server that generates nothing{where}")
            options = ("--seed", str(seed), "--sequence-length", str(length))
            server = tree.script("bench/ceiling_server.py", *options)
        elif scenario == "near-free":
            step(f"our server with the near-free source{where}")
            server = tree.server(None, length, seed, pool)
        else:
            step(f"our server with the near-free source, --workers 0{where}")
            server = tree.server(0, length, seed, pool)
        return stream(server, 1, args.batch_size, args.seconds)

    scenarios = ["ceiling", "near-free", "near-free, --workers 0"]
    return run_rounds(scenarios, trees, args.repeats, run)


def measure(args: argparse.Namespace, trees: list[Tree]) -> dict[str, Any]:
    """Every scenario and baseline on every tree; what executor_rows reports."""
    found: dict[str, Any] = {"trees": trees, "heavy_ms": {}}
    for tree in trees:
        step(f"timing the heavy source in a process on {tree.label}")
        found["heavy_ms"][tree] = tree.measure("heavy_ms_per_sample", seconds=1.5)
    found["runs"] = heavy_runs(args, trees)
    default, found["plain"] = default_runs(args, trees)
    found["runs"].update(default)
    found["once"] = once_runs(args, trees)
    found["runs"].update(ceiling_runs(args, trees))
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
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
        help="rounds of the compared scenarios, each round running all of them "
        "back to back; a ratio is the median of its rounds' ratios",
    )
    parser.add_argument(
        "--baseline",
        metavar="TREE",
        type=Path,
        help="another checkout of the project (e.g. git worktree add /tmp/before "
        "e083463): every scenario runs on it too, in the same rounds",
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
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, "
                f"got {getattr(args, name)}"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/executors.py", *given])
    trees = trees_of(args.baseline)
    print(
        f"{command}\n{os.cpu_count()} cores; batch {args.batch_size}, "
        f"{args.sequence_length} readings, {args.seconds:g} s per scenario, "
        f"{args.repeats} rounds",
        flush=True,
    )
    summary = report(args, measure(args, trees))
    if args.json:
        summary["command"] = command
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
