"""The report of bench/datasets.py: its table, its CPU lines, its JSON summary.

`report` takes what bench/datasets.py measured on each tree and prints the
corpora, the markdown table (a column per tree with a baseline) and the CPU
each role spent per sample served.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from typing import Any

from bench.clients import Result
from bench.dataset_files import Corpus
from bench.rounds import Row, compared, median_run, per_tree, table, totals
from bench.trees import Tree

TARGET_VS_CEILING = 0.5  # word chunks vs the canned-bytes server
TARGET_SHUFFLED = 0.8  # --shuffle vs index order
TARGET_TWO_WORKERS = 1.7  # images, --workers 2 vs --workers 1
MIB = 2**20


def median_start(seconds: Sequence[float]) -> str:
    spread = f" ({min(seconds):.2f} - {max(seconds):.2f})" if len(seconds) > 1 else ""
    return f"{statistics.median(seconds):.2f} s{spread}"


def memory(taken: Sequence[tuple[float, float, int]]) -> str:
    """Medians of (server MiB, workers' MiB in all, workers) taken in rounds."""
    server = statistics.median(m[0] for m in taken)
    workers = statistics.median(m[1] for m in taken)
    count = max(m[2] for m in taken)
    return f"server {server:.0f} MiB, {count} workers {workers:.0f} MiB in all"


class Found:
    """What bench/datasets.py measured, read per tree (in the trees' order)."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.trees: list[Tree] = found["trees"]
        self.raw = found
        self.costs = [found["costs"][t] for t in self.trees]
        self.index = [found["index"][t] for t in self.trees]

    def text(self, scenario: str) -> list[list[Result]]:
        return [self.raw["text"][scenario, t] for t in self.trees]

    def rates(self, scenario: str) -> list[list[float]]:
        """Each tree's total rates of a text scenario, by round."""
        return [totals(runs) for runs in self.text(scenario)]

    def images(self, workers: int) -> list[list[Result]]:
        return [self.raw["images"][workers, t] for t in self.trees]

    def starts(self, which: int) -> list[list[Any]]:
        """Each tree's first starts (0) or cached starts (1), by round."""
        return [[s[which] for s in self.raw["starts"][t]] for t in self.trees]


def rows(args: argparse.Namespace, found: Found) -> list[Row]:
    return [*text_rows(args, found), *image_rows(args, found), *start_rows(args, found)]


def text_rows(args: argparse.Namespace, found: Found) -> list[Row]:
    clients, batch = args.text_clients, args.text_batch
    text_name = f"word chunks, {clients} clients x batch {batch}, default --workers"
    return [
        per_tree(
            "word chunks in this process, index order / shuffled (reference)",
            found.costs,
            lambda c: (
                f"{c['text'] * 1e6:.1f} / {c['shuffled'] * 1e6:.1f} us/sample "
                f"({c['json_bytes']:,.0f} bytes of JSON each)"
            ),
            lambda c: c["text"],
        ),
        per_tree(
            "cutting one row group's documents into word chunks in this process: "
            "str.split + str.join / pyarrow.compute (reference)",
            found.costs,
            lambda c: (
                f"{c['split_python'] * 1e6:.2f} / {c['split_arrow'] * 1e6:.2f} "
                "us/word chunk"
            ),
            lambda c: c["split_python"],
        ),
        compared(
            f"{text_name}: canned bytes (ceiling server)",
            found.text("ceiling"),
            show_busy=False,
        ),
        compared(
            f"{text_name}: in index order",
            found.text("index order"),
            found.rates("ceiling"),
            "ceiling",
            TARGET_VS_CEILING,
        ),
        compared(
            f"{text_name}: --shuffle",
            found.text("shuffle"),
            found.rates("index order"),
            "index order",
            TARGET_SHUFFLED,
        ),
    ]


def image_rows(args: argparse.Namespace, found: Found) -> list[Row]:
    images = f"images, 1 client x batch {args.image_batch}"
    return [
        per_tree(
            "JPEG 256x256 -> 128x128 PNG in this process (reference)",
            found.costs,
            lambda c: (
                f"{c['image'] * 1e3:.2f} ms/sample "
                f"({c['image_bytes'] / 1024:,.0f} KiB of JSON each)"
            ),
            lambda c: c["image"],
        ),
        compared(f"{images}, --workers 1", found.images(1)),
        compared(
            f"{images}, --workers 2",
            found.images(2),
            [totals(runs) for runs in found.images(1)],
            "--workers 1",
            TARGET_TWO_WORKERS,
        ),
    ]


def start_rows(args: argparse.Namespace, found: Found) -> list[Row]:
    big: Corpus = found.raw["big"]
    firsts, cached = found.starts(0), found.starts(1)
    size = f"{big.nbytes / 2**30:.2f} GiB corpus"

    def seconds(starts: list[Any]) -> list[float]:
        return [s.seconds for s in starts]

    def first(starts: list[Any]) -> str:
        counting = big.nbytes / MIB / statistics.median(seconds(starts))
        return median_start(seconds(starts)) + f"; {counting:,.0f} MiB/s counted"

    def median_seconds(starts: list[Any]) -> float:
        return statistics.median(seconds(starts))

    def streamed(starts: list[Any]) -> str:
        rate = statistics.median(s.rate for s in starts)
        return memory([s.streamed for s in starts]) + f"; {rate:,.0f} samples/s"

    def index(found_index: dict[str, int]) -> str:
        nbytes, rows = found_index["nbytes"], found_index["rows"]
        return (
            f"{found_index['per_document']} bytes per document "
            f"(index_bytes_per_document()); this corpus's index "
            f"{nbytes / MIB:.2f} MiB for {rows:,} documents in "
            f"{found_index['blocks']:,} row groups ({nbytes / rows:.2f} bytes "
            "per document)"
        )

    def listening(starts: list[Any]) -> str:
        return memory([s.listening for s in starts])

    return [
        per_tree(
            f"{size}: start to listening, empty cache", firsts, first, median_seconds
        ),
        per_tree(
            f"{size}: start to listening, cached",
            cached,
            lambda starts: median_start(seconds(starts)),
            median_seconds,
        ),
        Row(
            "  memory 1 s after listening, empty cache", [listening(s) for s in firsts]
        ),
        Row("  memory 1 s after listening, cached", [listening(s) for s in cached]),
        Row(
            f"  memory after {args.text_clients} clients streamed "
            f"{args.seconds / 2:g} s, cached",
            [streamed(s) for s in cached],
        ),
        Row("  index memory", [index(i) for i in found.index]),
    ]


def cpu_lines(tree: Tree, found: Found, index: int) -> list[str]:
    """Each role's CPU on one tree: share of a core and per sample served."""

    def cpu(result: Result) -> str:
        run = result.run

        def share(seconds: float) -> str:
            per_sample = seconds / run.wall / result.total * 1e6 if result.total else 0
            return f"{seconds / run.wall:.0%} ({per_sample:.1f} us/sample)"

        return (
            f"server loop {share(run.server_cpu)}, its workers "
            f"{share(run.workers_cpu)}, clients {share(run.clients_cpu())} of one core"
        )

    def in_all(result: Result) -> float:
        run = result.run
        used = run.server_cpu + run.workers_cpu + run.clients_cpu()
        return used / run.wall / result.total * 1e6 if result.total else 0.0

    ceiling = median_run(found.text("ceiling")[index])
    in_order = median_run(found.text("index order")[index])
    shuffled = median_run(found.text("shuffle")[index])
    images1 = median_run(found.images(1)[index])
    images2 = median_run(found.images(2)[index])
    cores = os.cpu_count() or 1
    budget = cores / (TARGET_VS_CEILING * ceiling.total) * 1e6
    where = f"[{tree.label}] " if len(found.trees) > 1 else ""
    return [
        f"{where}CPU, word chunks from the ceiling server: {cpu(ceiling)}",
        f"{where}CPU, word chunks in index order: {cpu(in_order)}",
        f"{where}CPU, word chunks --shuffle: {cpu(shuffled)}",
        f"{where}CPU, images --workers 1: {cpu(images1)}; --workers 2: {cpu(images2)}",
        f"{where}CPU budget of {TARGET_VS_CEILING}x the ceiling on {cores} cores: "
        f"{budget:.1f} us a sample for clients, server and workers together; the "
        f"ceiling run used {in_all(ceiling):.1f}, index order {in_all(in_order):.1f}",
    ]


def report(
    args: argparse.Namespace, corpus: Corpus, measured: dict[str, Any]
) -> dict[str, Any]:
    """Print the corpora, the table and the CPU lines; the JSON summary."""
    found = Found(measured)
    big: Corpus = measured["big"]
    print()
    print(
        f"Text corpus: {corpus.files} files, {corpus.documents:,} documents, "
        f"{corpus.row_groups} row groups, {corpus.nbytes / MIB:.1f} MiB of Parquet; "
        f"big corpus: {big.files} files, {big.documents:,} documents, "
        f"{big.row_groups} row groups, {big.nbytes / MIB:,.0f} MiB, "
        f"written in {measured['written']:.1f} s."
    )
    print()
    print(table(rows(args, found), found.trees))
    print()
    for index, tree in enumerate(found.trees):
        print("\n".join(cpu_lines(tree, found, index)))
    return {
        tree.label: {
            "tree": str(tree.root),
            "costs": found.costs[index],
            "text": {
                s: totals(found.text(s)[index])
                for s in ("ceiling", "index order", "shuffle")
            },
            "images": {str(w): totals(found.images(w)[index]) for w in (1, 2)},
            "first_starts": found.starts(0)[index],
            "cached_starts": found.starts(1)[index],
            "index": found.index[index],
        }
        for index, tree in enumerate(found.trees)
    }
