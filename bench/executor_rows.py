"""The report of bench/executors.py: its table, its CPU lines, its JSON summary.

`report` takes what bench/executors.py measured on each tree and prints the
markdown table (a column per tree with a baseline) and the CPU of the
server's event loop and of its workers.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench.clients import Result, Run
from bench.rounds import (
    Row,
    compared,
    median_run,
    per_tree,
    quantile,
    rate_text,
    table,
    totals,
    tree_ratio,
)
from bench.throughput import LARGE_BATCH
from bench.trees import Tree

DEFAULT = "default, 1 client"  # the scenario compared with the plain generator

TARGET_TWO_WORKERS = 1.7  # 2 local workers vs 1, heavy source
TARGET_DASK = 1.5  # 2-worker Dask cluster vs 1 local worker, heavy source
TARGET_DEFAULT_VS_PLAIN = 2.0  # default source, 1 client, vs plain randint
TARGET_STATUS_P99_MS = 20.0
TARGET_CEILING = 0.8  # near-free source vs the server that generates nothing


class Found:
    """What bench/executors.py measured, read per tree (in the trees' order)."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.trees: list[Tree] = found["trees"]
        self.raw = found
        self.heavy_ms = [found["heavy_ms"][t] for t in self.trees]
        self.plain_rates = [found["plain"][DEFAULT, t] for t in self.trees]
        # the plain rate of the round median_run picks for the default source
        self.plain = [statistics.median_low(rates) for rates in self.plain_rates]
        self.many: list[Result] = [found["once"]["many", t][0] for t in self.trees]
        self.round_trips = [found["once"]["status", t][0] for t in self.trees]

    def runs(self, scenario: str) -> list[list[Result]]:
        return [self.raw["runs"][scenario, t] for t in self.trees]

    def rates(self, scenario: str) -> list[list[float]]:
        return [totals(runs) for runs in self.runs(scenario)]


def many_clients(args: argparse.Namespace, found: Found) -> Row:
    def text(index: int) -> str:
        many, plain = found.many[index], found.plain[index]
        return rate_text(many.total, many.total / plain, "plain") + (
            f"; per client {min(many.rates):,.0f} - {max(many.rates):,.0f}"
        )

    return Row(
        f"default source, {args.clients} clients, batch {args.batch_size}",
        [text(index) for index in range(len(found.trees))],
        tree_ratio([many.total for many in found.many]),
    )


def status(found: Found) -> Row:
    p99 = [quantile(trips, 0.99) * 1000 for trips in found.round_trips]

    def text(trips: list[float]) -> str:
        return (
            f"{quantile(trips, 0.5) * 1000:.2f} / {quantile(trips, 0.99) * 1000:.2f} "
            f"({max(trips) * 1000:.1f}) ms, {len(trips)} probes"
        )

    return Row(
        f"status round trip p50 / p99 (max), {LARGE_BATCH}-sample pulls",
        [text(trips) for trips in found.round_trips],
        tree_ratio(p99),
        f"p99 < {TARGET_STATUS_P99_MS:g} ms",
        [value < TARGET_STATUS_P99_MS for value in p99],
    )


def rows(args: argparse.Namespace, found: Found) -> list[Row]:
    return [
        per_tree(
            "plain randint generator, in-process (reference)",
            found.plain,
            rate_text,
            float,
        ),
        per_tree(
            "heavy source, in-process",
            found.heavy_ms,
            lambda ms: f"{ms:.2f} ms/sample ({1000 / ms:,.0f} samples/s)",
            float,
        ),
        compared("heavy source, --workers 1", found.runs("heavy, --workers 1")),
        compared(
            "heavy source, --workers 2",
            found.runs("heavy, --workers 2"),
            found.rates("heavy, --workers 1"),
            "--workers 1",
            TARGET_TWO_WORKERS,
        ),
        compared(
            "heavy source, --cluster (local Dask, 2 workers x 1 thread)",
            found.runs("heavy, --cluster"),
            found.rates("heavy, --workers 1"),
            "--workers 1",
            TARGET_DASK,
        ),
        compared(
            f"default source, 1 client, batch {args.batch_size}",
            found.runs(DEFAULT),
            found.plain_rates,
            "plain, timed just before",
            TARGET_DEFAULT_VS_PLAIN,
            target_of="plain",
            show_busy=False,
        ),
        many_clients(args, found),
        status(found),
        *ceiling_rows(args, found),
    ]


def ceiling_rows(args: argparse.Namespace, found: Found) -> list[Row]:
    return [
        compared(
            f"ceiling: server that generates nothing, 1 client, batch "
            f"{args.batch_size}",
            found.runs("ceiling"),
            show_busy=False,
        ),
        compared(
            "our server, near-free source, 1 client (default --workers)",
            found.runs("near-free"),
            found.rates("ceiling"),
            "ceiling",
            TARGET_CEILING,
            show_busy=False,
        ),
        compared(
            "our server, near-free source, 1 client, --workers 0",
            found.runs("near-free, --workers 0"),
            found.rates("ceiling"),
            "ceiling",
            TARGET_CEILING,
            show_busy=False,
        ),
    ]


def cpu(run: Run) -> str:
    return (
        f"server loop {run.server_cpu / run.wall:.0%}, its workers "
        f"{run.workers_cpu / run.wall:.0%} of one core"
    )


def report(args: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    """Print the table and the CPU lines; the JSON summary."""
    found = Found(measured)
    print()
    print(table(rows(args, found), found.trees))
    print()
    summary: dict[str, Any] = {}
    for index, tree in enumerate(found.trees):
        where = f"[{tree.label}] " if len(found.trees) > 1 else ""
        one, two = (
            median_run(found.runs("heavy, --workers 1")[index]),
            median_run(found.runs("heavy, --workers 2")[index]),
        )
        default = median_run(found.runs(DEFAULT)[index])
        print(
            f"{where}CPU, heavy --workers 1: {cpu(one.run)}; "
            f"--workers 2: {cpu(two.run)}"
        )
        print(f"{where}CPU, default source, 1 client: {cpu(default.run)}")
        summary[tree.label] = {
            "tree": str(tree.root),
            "plain_rates": found.plain_rates[index],
            "heavy_ms_per_sample": found.heavy_ms[index],
            **{
                scenario: totals(found.runs(scenario)[index])
                for scenario in dict.fromkeys(s for s, _ in measured["runs"])
            },
            "default_many_clients": found.many[index].total,
            "status_p99_ms": quantile(found.round_trips[index], 0.99) * 1000,
        }
    return summary
