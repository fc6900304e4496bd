"""Benchmark of `--dataset`: word chunks, images, start time and memory.

Every server a fresh subprocess, every client an EIR-pattern client process
(bench/clients.py: handshake, validation probe, one unread heartbeat, then
heartbeat + getData back to back per batch, each reply parsed in full; its
check of the sample ids accepts a dataset's `r<row>c<chunk>`). The datasets
(bench/dataset_files.py) are generated into a temporary folder first and
deleted at the end; `$EIR_STREAM_CACHE` points into it, so the run neither
reads nor fills ~/.cache/eir-stream.

  1. Word chunks of a FineWeb-like corpus (local Parquet, snappy: one `text`
     column, documents of 5 to 2,000 random words, --text-files files of
     --text-documents documents in row groups of --text-row-group), served
     with `chunk_words: 64, min_words: 20` and the default --workers to
     --text-clients clients asking batches of --text-batch:
     a. bench/ceiling_server.py --dataset: a server that answers every
        getData with the same prebuilt bytes, the corpus's first samples (so
        its replies are real word-chunk samples of the same size, ids
        included), and keeps no stream;
     b. our server, in index order;
     c. our server, --shuffle.
  2. Images: a Parquet of 256x256 RGB JPEGs in Hugging Face's Image layout
     and a label, served with `size: [128, 128], mode: RGB` (decoded,
     resized, written as PNG) to one client asking batches of
     --image-batch, with --workers 1 and --workers 2.
  3. Start and memory on a corpus of at least --big-gb GiB of Parquet text
     (uncompressed, without a dictionary, so the files are as large as their
     text; the same chunk_words spec): the time from process start to the
     server's "listening" log line with an empty cache (the server counts
     every document's word chunks first) and then cached (a second start on
     the same cache folder); the resident memory (VmRSS) of the server
     process and, apart, the sum over its worker processes (its children but
     multiprocessing's resource tracker), one second after listening and
     after the text clients streamed for --seconds / 2. The files were just
     written, so they are in the page cache: the first start measures
     counting, not the disk.

References measured in a fresh process on the tree (bench/in_tree.py): the
source's own time per sample (word chunks in index order and in the shuffled
order of epoch 0, and images), best of three short runs; the time to cut one
row group's documents into word chunks with str.split/str.join and with
pyarrow.compute; and the index's memory per document. Rates are steady state
(bench/clients.py's `steady_rate`, summed over clients). The compared
scenarios run in --repeats rounds (bench/rounds.py): a ratio is the median
of the rounds' ratios, a rate the median run's, and the starts of scenario 3
are medians over the rounds too (a fresh cache folder for each first start).
"workers busy" is the CPU the server's child processes got, in cores; the
CPU lines after the table give each role's CPU per sample served, and the
CPU a sample may take in all for the 0.5x target on this machine's cores.

With --baseline TREE (another checkout of the project), every scenario and
every baseline runs for TREE and for this tree in the same rounds, and the
table has a column for each and their ratio (this / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.server_process import ServerProcess, child_pids, rss_kib  # noqa: E402

from bench.clients import Result, Run, stream, stream_from  # noqa: E402
from bench.dataset_files import (  # noqa: E402
    CHUNK_WORDS,
    Corpus,
    write_big_corpus,
    write_image_dataset,
    write_text_corpus,
)
from bench.dataset_rows import report  # noqa: E402
from bench.rounds import HelpFormatter, run_rounds, step  # noqa: E402
from bench.servers import Server  # noqa: E402
from bench.trees import Tree, trees_of  # noqa: E402

START_TIMEOUT = 1800.0  # seconds a first start may count for (guards a hang)


# -- start and memory --------------------------------------------------------------
def is_resource_tracker(pid: int) -> bool:
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def memory_mib(pid: int) -> tuple[float, float, int]:
    """(server RSS, sum of its workers' RSS, workers) in MiB: the workers are
    its child processes but multiprocessing's resource tracker."""
    workers = [p for p in child_pids(pid) if not is_resource_tracker(p)]
    rss = [rss_kib(p) for p in workers]
    return (rss_kib(pid) or 0) / 1024, sum(r or 0 for r in rss) / 1024, len(workers)


@dataclass
class Start:
    seconds: float  # process start to the "listening" line
    listening: tuple[float, float, int]  # memory 1 s after it
    streamed: tuple[float, float, int]  # memory after the clients streamed
    rate: float  # the clients' steady rate


def start_and_stream(
    tree: Tree, spec: Path, cache: Path, clients: int, batch: int, seconds: float
) -> Start:
    """Start the tree's server on `spec` with `cache` as $EIR_STREAM_CACHE;
    time it to "listening", take its memory, stream, take its memory again."""
    with ServerProcess(
        *("--dataset", str(spec), "--port", "0"),
        env={**tree.env, "EIR_STREAM_CACHE": str(cache)},
        timeout=START_TIMEOUT,
        cwd=tree.root,
        script=tree.root / "simulation_streamer.py",
    ) as process:
        startup = process.startup_seconds
        time.sleep(1.0)
        listening = memory_mib(process.pid)
        server = Server(process.process, process.port, startup, "")
        result = stream_from(server, clients, batch, seconds)
        streamed = memory_mib(process.pid)
    return Start(startup, listening, streamed, result.total)


# -- the scenarios -------------------------------------------------------------------
@dataclass
class Work:
    """What the scenarios share: the options, the trees and the datasets."""

    args: argparse.Namespace
    trees: list[Tree]
    folder: Path
    corpus: Corpus
    image_spec: Path


def text_runs(work: Work) -> dict[tuple[str, Tree], list[Result]]:
    """Scenario 1 in rounds: ceiling, index order and --shuffle on each tree."""
    args, spec = work.args, str(work.corpus.spec)

    def run(scenario: str, tree: Tree, note: str) -> Result:
        where = f"{note} [{tree.label}]"
        if scenario == "ceiling":
            step(f"word chunks: canned bytes (ceiling server){where}")
            server = tree.script("bench/ceiling_server.py", "--dataset", spec)
        else:
            shuffle = ("--shuffle",) if scenario == "shuffle" else ()
            step(f"word chunks: our server, {scenario}{where}")
            server = tree.server(None, 64, 0, ("--dataset", spec, *shuffle))
        return stream(server, args.text_clients, args.text_batch, args.seconds)

    scenarios = ["ceiling", "index order", "shuffle"]
    return run_rounds(scenarios, work.trees, args.repeats, run)


def image_runs(work: Work) -> dict[tuple[int, Tree], list[Result]]:
    """Scenario 2 in rounds: --workers 1 and 2 on each tree."""
    args, options = work.args, ("--dataset", str(work.image_spec))

    def run(workers: int, tree: Tree, note: str) -> Result:
        step(f"images: --workers {workers}{note} [{tree.label}]")
        server = tree.server(workers, 64, 0, options)
        return stream(server, 1, args.image_batch, args.seconds)

    return run_rounds([1, 2], work.trees, args.repeats, run)


def big_starts(
    work: Work, big: Corpus
) -> dict[tuple[str, Tree], list[tuple[Start, Start, Path]]]:
    """Scenario 3 in rounds: on each tree a first start on an empty cache
    folder, then a second start on it; (first, cached, the cache folder)."""
    args = work.args
    clients, batch, seconds = args.text_clients, args.text_batch, args.seconds / 2

    def run(_: str, tree: Tree, note: str) -> tuple[Start, Start, Path]:
        cache = Path(tempfile.mkdtemp(prefix="big-cache-", dir=work.folder))
        step(f"big corpus: first start, empty cache{note} [{tree.label}]")
        first = start_and_stream(tree, big.spec, cache, clients, batch, seconds)
        step(f"big corpus: second start, same cache{note} [{tree.label}]")
        cached = start_and_stream(tree, big.spec, cache, clients, batch, seconds)
        return first, cached, cache

    return run_rounds(["big"], work.trees, args.repeats, run)


def measure(work: Work) -> dict[str, Any]:
    """Every scenario and baseline, on every tree; what dataset_rows reports."""
    args = work.args
    found: dict[str, Any] = {"trees": work.trees}
    found["costs"] = {}
    for tree in work.trees:
        step(f"timing the sources in a process on {tree.label}")
        found["costs"][tree] = tree.measure(
            "dataset_costs",
            text_spec=str(work.corpus.spec),
            image_spec=str(work.image_spec),
            chunk_words=CHUNK_WORDS,
            seconds=3.0 if args.quick else 6.0,
        )
    found["text"] = text_runs(work)
    found["images"] = image_runs(work)
    step(f"writing a corpus of at least {args.big_gb:g} GiB")
    began = time.perf_counter()
    big = write_big_corpus(work.folder / "big", int(args.big_gb * 2**30), args.seed)
    found["big"], found["written"] = big, time.perf_counter() - began
    starts = big_starts(work, big)
    found["starts"] = {tree: starts["big", tree] for tree in work.trees}
    found["index"] = {}
    for tree in work.trees:
        cache = str(starts["big", tree][-1][2])
        on_cache = tree.with_env(EIR_STREAM_CACHE=cache)
        found["index"][tree] = on_cache.measure("dataset_index", spec=str(big.spec))
    return found


# -- the run -------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--seconds", type=float, default=8.0, help="length of each streaming run")
    add(
        "--repeats",
        type=int,
        default=3,
        help="rounds of the compared scenarios and of the starts; a ratio is "
        "the median of its rounds' ratios",
    )
    add(
        "--baseline",
        metavar="TREE",
        type=Path,
        help="another checkout of the project (e.g. git worktree add /tmp/before "
        "e083463): every scenario runs on it too, in the same rounds",
    )
    add("--text-clients", type=int, default=4, help="clients of scenarios 1 and 3")
    add("--text-batch", type=int, default=256, help="their getData batch_size")
    add("--text-files", type=int, default=4, help="Parquet files of scenario 1")
    add("--text-documents", type=int, default=4000, help="documents per file")
    add("--text-row-group", type=int, default=1000, help="documents per row group")
    add("--image-batch", type=int, default=32, help="getData batch_size of images")
    add("--images", type=int, default=64, help="distinct JPEGs in the image file")
    add("--image-rows", type=int, default=1024, help="rows of the image file")
    add(
        "--big-gb",
        type=float,
        default=1.0,
        help="scenario 3's corpus, in GiB of Parquet (at least)",
    )
    add("--seed", type=int, default=0, help="the generators' seed")
    add("--keep", metavar="DIR", help="write the datasets here and keep them")
    add(
        "--quick",
        action="store_true",
        help="smoke run: 3 s per run, 1 round, tiny datasets, a 20 MB big corpus",
    )
    add("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 3.0, 1
        args.text_documents, args.text_row_group = 200, 50
        args.images, args.image_rows = 8, 128
        args.big_gb = 0.02
    if args.seconds <= 0 or args.big_gb <= 0:
        parser.error(
            f"--seconds and --big-gb must be positive, got {args.seconds:g} and "
            f"{args.big_gb:g}"
        )
    for name in (
        "repeats",
        "text_clients",
        "text_batch",
        "text_files",
        "text_documents",
        "text_row_group",
        "image_batch",
        "images",
        "image_rows",
    ):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, "
                f"got {getattr(args, name)}"
            )
    return args


def prepare(args: argparse.Namespace, folder: Path) -> Work:
    """The trees, each with its own cache folder, and the datasets."""
    trees = [
        tree.with_env(EIR_STREAM_CACHE=str(folder / f"cache-{number}"))
        for number, tree in enumerate(trees_of(args.baseline))
    ]
    step("writing the text corpus")
    corpus = write_text_corpus(
        folder / "text",
        args.text_files,
        args.text_documents,
        args.text_row_group,
        args.seed,
    )
    step("writing the image file")
    image_spec = write_image_dataset(
        folder / "images", args.images, args.image_rows, args.seed
    )
    return Work(args, trees, folder, corpus, image_spec)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/datasets.py", *given])
    print(
        f"{command}\n{os.cpu_count()} cores; {args.text_clients} clients x batch "
        f"{args.text_batch} of word chunks, 1 x {args.image_batch} images; "
        f"{args.seconds:g} s per run, {args.repeats} rounds",
        flush=True,
    )
    if args.keep:
        folder = Path(args.keep)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-datasets-"))
    try:
        work = prepare(args, folder)
        found = measure(work)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary = report(args, work.corpus, found)
    if args.json:
        summary["command"] = command
        Path(args.json).write_text(json.dumps(summary, indent=2, default=_plain))
    return 0


def _plain(value: object) -> object:
    """JSON for the dataclasses and paths in the summary."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Run | Start | Corpus):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
