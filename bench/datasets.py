"""Benchmark of `--dataset`: word chunks, images, start time and memory.

One run on this machine, every server a fresh subprocess, every client an
EIR-pattern client process (bench/throughput.py's `streaming_client`:
handshake, validation probe, one unread heartbeat, then heartbeat + getData
back to back per batch, each reply parsed in full; its check of the sample
ids accepts a dataset's `r<row>c<chunk>`). The datasets are generated
into a temporary folder first and deleted at the end; `$EIR_STREAM_CACHE`
points into it, so the run neither reads nor fills ~/.cache/eir-stream.

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
  2. Images: a Parquet of 256x256 RGB JPEGs (made with Pillow, in Hugging
     Face's Image layout {bytes, path}) and a label, served with
     `size: [128, 128], mode: RGB` (decoded, resized, written as PNG) to one
     client asking batches of --image-batch, with --workers 1 and
     --workers 2.
  3. Start and memory on a corpus of at least --big-gb GB of Parquet text
     (pool documents written again and again, uncompressed and without a
     dictionary so that the files are as large as their text; the same
     chunk_words spec): the time from process start to the server's
     "listening" log line, with an empty cache (a fresh $EIR_STREAM_CACHE:
     the server counts every document's chunks first) and then cached (a
     second start on the same cache folder); the resident memory (VmRSS) of
     the server process and, apart, the sum over its worker processes (its
     children but multiprocessing's resource tracker), one second after
     listening and after the text clients streamed for --seconds / 2. The
     files were just written, so they are in the page cache: the first start
     measures counting, not the disk. The index's memory per document is
     `dataset_source.index_bytes_per_document()`; the whole index's is that
     of the source loaded in this process from the cache.

Baselines measured in this process in the same run: the source's own time per
sample (word chunks in index order and in the shuffled order of epoch 0, and
images), best of three short runs, and the time to cut one row group's
documents into word chunks with str.split/str.join and with pyarrow.compute.
Rates are steady state (bench/executors.py's `steady_rate`: samples received in
the second half of each client's run over that half's length, summed over
clients). The compared scenarios (1a-1c, and 2's two worker counts) run in
--repeats rounds, back to back within a round (every other round in reverse
order); a ratio is the median of the rounds' ratios, a rate the median run's,
and the starts of scenario 3 are medians over --repeats rounds too (a fresh
cache folder for each first start). This machine's speed drifts by tens of
percent over minutes (other tenants), so runs compared across rounds would
measure the drift. "workers busy" is the CPU the server's child processes got,
in cores; the CPU lines after the table give each role's CPU per sample served,
and the CPU a sample may take in all for the 0.5x target on this machine's
cores. The table is markdown, with the command that made it; the load average
before and after says how busy the machine was (the clients share the machine's
cores with the server and its workers).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shlex
import shutil
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.throughput as throughput  # noqa: E402
from bench.executors import (  # noqa: E402
    Result,
    in_round_order,
    markdown,
    median_ratio,
    median_run,
    steady_rate,
    totals,
)
from bench.throughput import (  # noqa: E402
    HelpFormatter,
    Run,
    Server,
    run_clients,
    running_process,
    running_server,
)
from tests.server_process import ServerProcess, child_pids, rss_kib  # noqa: E402

CEILING_SERVER = ROOT / "bench" / "ceiling_server.py"
CHUNK_WORDS, MIN_WORDS = 64, 20
IMAGE_SIDE, IMAGE_SIZE = 256, (128, 128)
BIG_POOL_DOCUMENTS = 1000  # documents of one row group of the big corpus
BIG_FILES = 8

TARGET_VS_CEILING = 0.5  # word chunks vs the canned-bytes server
TARGET_SHUFFLED = 0.8  # --shuffle vs index order
TARGET_TWO_WORKERS = 1.7  # images, --workers 2 vs --workers 1


def stream(
    server: AbstractContextManager[Server], clients: int, batch: int, seconds: float
) -> Result:
    """(total steady rate, per-client steady rates, the run) of `clients`."""
    with server as s:
        targets = [(throughput.streaming_client, (s.url, batch, seconds))] * clients
        run = run_clients(s, targets, seconds)
    rates = [steady_rate(r, batch) for r in run.streams()]
    return sum(rates), rates, run


# -- datasets --------------------------------------------------------------------
def vocabulary(rng: random.Random, size: int = 8192) -> list[str]:
    """`size` random lowercase words of 2 to 9 letters."""
    letters = string.ascii_lowercase
    return ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(size)]


def documents(rng: random.Random, words: list[str], count: int) -> list[str]:
    """`count` documents of 5 to 2,000 words drawn from `words`."""
    return [" ".join(rng.choices(words, k=rng.randint(5, 2000))) for _ in range(count)]


@dataclass
class Corpus:
    spec: Path
    files: int
    documents: int
    row_groups: int
    nbytes: int  # of the Parquet files


def corpus_spec(folder: Path) -> Path:
    spec = folder / "corpus.yaml"
    spec.write_text(
        "files: data/*.parquet\n"
        "outputs:\n"
        "  text_output: {type: sequence, column: text, "
        f"chunk_words: {CHUNK_WORDS}, min_words: {MIN_WORDS}}}\n"
    )
    return spec


def write_text_corpus(
    folder: Path, files: int, per_file: int, row_group: int, seed: int
) -> Corpus:
    """A FineWeb-like corpus: `files` Parquet files (snappy, the default) of
    `per_file` random-word documents in row groups of `row_group`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = vocabulary(rng)
    data = folder / "data"
    data.mkdir(parents=True)
    for number in range(files):
        table = pa.table({"text": documents(rng, words, per_file)})
        pq.write_table(
            table, data / f"part-{number:03d}.parquet", row_group_size=row_group
        )
    groups = files * math.ceil(per_file / row_group)
    size = sum(path.stat().st_size for path in data.glob("*.parquet"))
    return Corpus(corpus_spec(folder), files, files * per_file, groups, size)


def write_big_corpus(folder: Path, target_bytes: int, seed: int) -> Corpus:
    """At least `target_bytes` of Parquet text, written fast: one row group of
    BIG_POOL_DOCUMENTS random-word documents, written again and again over
    BIG_FILES files, uncompressed and without a dictionary (so that the files
    are as large as the text, and every document is counted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pool = pa.table({"text": documents(rng, vocabulary(rng), BIG_POOL_DOCUMENTS)})
    groups = max(BIG_FILES, math.ceil(target_bytes / pool.nbytes))
    per_file = math.ceil(groups / BIG_FILES)
    data = folder / "data"
    data.mkdir(parents=True)
    for number in range(BIG_FILES):
        path = data / f"part-{number:03d}.parquet"
        with pq.ParquetWriter(
            path,
            pool.schema,
            compression="none",
            use_dictionary=False,
            write_statistics=False,
        ) as writer:
            for _ in range(per_file):
                writer.write_table(pool, row_group_size=BIG_POOL_DOCUMENTS)
    size = sum(path.stat().st_size for path in data.glob("*.parquet"))
    groups = BIG_FILES * per_file
    return Corpus(
        corpus_spec(folder), BIG_FILES, groups * BIG_POOL_DOCUMENTS, groups, size
    )


def jpeg(rng: random.Random) -> bytes:
    """A 256x256 RGB JPEG (quality 90) of gradients and noise."""
    from PIL import Image, ImageFilter

    side = IMAGE_SIDE
    red = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize((side, side))
    green = Image.radial_gradient("L").resize((side, side))
    noise = Image.effect_noise((side, side), rng.uniform(20, 80))
    blue = noise.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_image_dataset(folder: Path, images: int, rows: int, seed: int) -> Path:
    """A Parquet of `rows` rows ({bytes, path} images, `images` distinct ones
    in turn, and a label), in row groups of 64; its spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pictures = [jpeg(rng) for _ in range(images)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    column = pa.array(
        [
            {"bytes": pictures[k % images], "path": f"image-{k}.jpg"}
            for k in range(rows)
        ],
        type=image_type,
    )
    labels = [rng.choice(["cat", "dog", "bird"]) for _ in range(rows)]
    folder.mkdir(parents=True)
    table = pa.table({"image": column, "label": labels})
    pq.write_table(table, folder / "images.parquet", row_group_size=64)
    spec = folder / "images.yaml"
    height, width = IMAGE_SIZE
    spec.write_text(
        "files: images.parquet\n"
        "inputs:\n"
        f"  picture: {{type: image, column: image, size: [{height}, {width}], "
        "mode: RGB}\n"
        "outputs:\n"
        "  label: {type: tabular, columns: [label]}\n"
    )
    return spec


# -- in-process baselines ----------------------------------------------------------
def seconds_per_sample(
    make: Callable[[Sequence[int]], Any],
    indices: Callable[[int, int], Sequence[int]],
    chunk: int,
    seconds: float,
) -> float:
    """Best of 3 runs of about seconds / 3 each: the time `make` takes per
    sample, given chunks of `chunk` indices (`indices(start, stop)`, made
    outside the timing)."""
    best, start = float("inf"), 0
    for _ in range(3):
        spent, made = 0.0, 0
        while spent < seconds / 3:
            chunk_indices = indices(start, start + chunk)
            began = time.perf_counter()
            make(chunk_indices)
            spent += time.perf_counter() - began
            start, made = start + chunk, made + chunk
        best = min(best, spent / made)
    return best


def in_process_costs(
    text_spec: Path, image_spec: Path, seconds: float
) -> dict[str, float]:
    """Seconds per sample of the sources in this process (made, JSON text)."""
    from eirstream.datasets.source import load_dataset
    from eirstream.order import WINDOW_INDICES, EpochOrder

    text = load_dataset(str(text_spec))
    n = text.num_samples
    order = EpochOrder(n, 0, text.block_sizes, text.shuffle_window or WINDOW_INDICES)

    def in_order(start: int, stop: int) -> list[int]:
        return [i % n for i in range(start, stop)]

    def shuffled(start: int, stop: int) -> list[int]:
        return [order.index_at(0, i % n) for i in range(start, stop)]

    costs = {
        **splitting_costs(text_spec.parent / "data"),
        "text": seconds_per_sample(text.samples_json, in_order, 1024, seconds),
        "shuffled": seconds_per_sample(text.samples_json, shuffled, 1024, seconds),
        "json_bytes": statistics.fmean(
            len(t) for t in text.samples_json(range(min(n, 4096)))
        ),
    }
    text.close()
    images = load_dataset(str(image_spec))
    m = images.num_samples

    def image_indices(start: int, stop: int) -> list[int]:
        return [i % m for i in range(start, stop)]

    costs["image"] = seconds_per_sample(images.samples_json, image_indices, 16, seconds)
    costs["image_bytes"] = statistics.fmean(
        len(t) for t in images.samples_json(range(min(m, 32)))
    )
    images.close()
    return costs


def splitting_costs(data: Path) -> dict[str, float]:
    """Seconds per word chunk (CHUNK_WORDS words) of cutting the documents of
    one row group into chunks, best of 3: Python's str.split and str.join,
    as dataset_source.py does, and pyarrow.compute's utf8_split_whitespace
    and binary_join (the same chunks, made in Arrow's C++), each from the
    Arrow column to Python strings."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    first = sorted(data.glob("*.parquet"))[0]
    group = pq.ParquetFile(first).read_row_group(0, columns=["text"])
    texts = group.column("text").combine_chunks()

    def python() -> list[str]:
        out: list[str] = []
        for text in texts.to_pylist():
            words = text.split()
            out += [
                " ".join(words[at : at + CHUNK_WORDS])
                for at in range(0, len(words), CHUNK_WORDS)
            ]
        return out

    def arrow() -> list[str]:
        words = pc.utf8_split_whitespace(texts)
        ends, total = [0], 0
        for count in pc.list_value_length(words).to_pylist():
            ends += [
                total + min(at + CHUNK_WORDS, count)
                for at in range(0, count, CHUNK_WORDS)
            ]
            total += count
        lists = pa.ListArray.from_arrays(pa.array(ends, pa.int32()), words.flatten())
        return pc.binary_join(lists, " ").to_pylist()

    chunks = python()
    if arrow() != chunks:
        raise RuntimeError("pyarrow's word chunks differ from Python's")
    costs = {}
    for name, cut in (("split_python", python), ("split_arrow", arrow)):
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            cut()
            best = min(best, time.perf_counter() - began)
        costs[name] = best / len(chunks)
    return costs


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
    spec: Path, cache: Path, clients: int, batch: int, seconds: float
) -> Start:
    """Start our server on `spec` with `cache` as $EIR_STREAM_CACHE; time it
    to "listening", take its memory, stream, take its memory again."""
    env = {"EIR_STREAM_CACHE": str(cache)}
    args = ("--dataset", str(spec), "--port", "0")
    with ServerProcess(*args, env=env, timeout=1800) as process:
        startup = process.startup_seconds
        time.sleep(1.0)
        listening = memory_mib(process.pid)
        server = Server(process.process, process.port, startup, "")
        targets = [
            (throughput.streaming_client, (process.url, batch, seconds))
        ] * clients
        run = run_clients(server, targets, seconds)
        streamed = memory_mib(process.pid)
    rate = sum(steady_rate(r, batch) for r in run.streams())
    return Start(startup, listening, streamed, rate)


def index_of(spec: Path, cache: Path) -> tuple[int, int, int]:
    """(index bytes, documents, blocks) of the source on `spec`, loaded in
    this process from the cache in `cache`."""
    from eirstream.datasets.source import load_dataset

    before = os.environ.get("EIR_STREAM_CACHE")
    os.environ["EIR_STREAM_CACHE"] = str(cache)
    try:
        source = load_dataset(str(spec))
    finally:
        if before is None:
            del os.environ["EIR_STREAM_CACHE"]
        else:
            os.environ["EIR_STREAM_CACHE"] = before
    found = source.index_nbytes(), source.index.rows, source.index.blocks
    source.close()
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
        parser.error("--seconds and --big-gb must be positive")
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
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/datasets.py", *given])
    seconds, clients, batch = args.seconds, args.text_clients, args.text_batch
    load_before = os.getloadavg()
    print(
        f"{command}\ncores: {os.cpu_count()}, load average {load_before[0]:.2f}; "
        f"{clients} clients x batch {batch} of word chunks, 1 x {args.image_batch} "
        f"images; {seconds:g} s per run, {args.repeats} rounds",
        flush=True,
    )

    def step(text: str) -> None:
        print(f"{text} ...", flush=True)

    rounds = [
        f" (round {n} of {args.repeats})" if args.repeats > 1 else ""
        for n in range(1, args.repeats + 1)
    ]
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-datasets-"))
    cache_before = os.environ.get("EIR_STREAM_CACHE")
    os.environ["EIR_STREAM_CACHE"] = str(work / "cache")  # servers inherit it
    try:
        step("writing the text corpus")
        began = time.perf_counter()
        corpus = write_text_corpus(
            work / "text",
            args.text_files,
            args.text_documents,
            args.text_row_group,
            args.seed,
        )
        step(f"writing the image file ({time.perf_counter() - began:.1f} s so far)")
        image_spec = write_image_dataset(
            work / "images", args.images, args.image_rows, args.seed
        )
        step("timing the sources in this process (counts the corpus once)")
        costs = in_process_costs(corpus.spec, image_spec, 3.0 if args.quick else 6.0)

        text_spec = ("--dataset", str(corpus.spec))
        ceiling_command = [sys.executable, str(CEILING_SERVER), "--dataset"]
        ceiling_command.append(str(corpus.spec))
        text_runs: dict[str, list[Result]] = {"ceiling": [], "order": [], "shuffle": []}
        for index, round_ in enumerate(rounds):
            for scenario in in_round_order(list(text_runs), index):
                if scenario == "ceiling":
                    step(f"word chunks: canned bytes (ceiling server){round_}")
                    server = running_process(ceiling_command)
                elif scenario == "order":
                    step(f"word chunks: our server, in index order{round_}")
                    server = running_server(None, 64, 0, text_spec)
                else:
                    step(f"word chunks: our server, --shuffle{round_}")
                    server = running_server(None, 64, 0, (*text_spec, "--shuffle"))
                text_runs[scenario].append(stream(server, clients, batch, seconds))
        vs_ceiling = median_ratio(
            totals(text_runs["order"]), totals(text_runs["ceiling"])
        )
        shuffled_vs_order = median_ratio(
            totals(text_runs["shuffle"]), totals(text_runs["order"])
        )
        ceiling = median_run(text_runs["ceiling"])
        in_order = median_run(text_runs["order"])
        shuffled = median_run(text_runs["shuffle"])

        image_options = ("--dataset", str(image_spec))
        image_runs: dict[int, list[Result]] = {1: [], 2: []}
        for index, round_ in enumerate(rounds):
            for workers in in_round_order([1, 2], index):
                step(f"images: --workers {workers}{round_}")
                server = running_server(workers, 64, 0, image_options)
                image_runs[workers].append(stream(server, 1, args.image_batch, seconds))
        two_vs_one = median_ratio(totals(image_runs[2]), totals(image_runs[1]))
        images1, images2 = median_run(image_runs[1]), median_run(image_runs[2])

        step(f"writing a corpus of at least {args.big_gb:g} GiB")
        began = time.perf_counter()
        big = write_big_corpus(work / "big", int(args.big_gb * 2**30), args.seed)
        written = time.perf_counter() - began
        firsts: list[Start] = []
        cached: list[Start] = []
        cache = work / "big-cache-0"
        for number, round_ in enumerate(rounds):
            cache = work / f"big-cache-{number}"
            step(f"big corpus: first start, empty cache{round_}")
            firsts.append(
                start_and_stream(big.spec, cache, clients, batch, seconds / 2)
            )
            step(f"big corpus: second start, same cache{round_}")
            cached.append(
                start_and_stream(big.spec, cache, clients, batch, seconds / 2)
            )
        index_nbytes, index_rows, index_blocks = index_of(big.spec, cache)
        from eirstream.datasets.source import index_bytes_per_document

        per_document = index_bytes_per_document()
        load_after = os.getloadavg()
    finally:
        if cache_before is None:
            os.environ.pop("EIR_STREAM_CACHE", None)
        else:
            os.environ["EIR_STREAM_CACHE"] = cache_before
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def rate(value: float, ratio: float | None = None, of: str = "") -> str:
        text = f"{value:,.0f} samples/s"
        return text if ratio is None else f"{text} ({ratio:.2f}x {of})"

    def busy(run: Run) -> str:
        return f"; workers busy {run.workers_cpu / run.wall:.2f} cores"

    def row(
        name: str, result: str, target: str = "", ok: bool | None = None
    ) -> tuple[str, str, str, str]:
        return name, result, target, "-" if ok is None else ("yes" if ok else "NO")

    def median_start(starts: list[Start]) -> str:
        times = [s.seconds for s in starts]
        spread = f" ({min(times):.2f} - {max(times):.2f})" if len(times) > 1 else ""
        return f"{statistics.median(times):.2f} s{spread}"

    def memory(starts: list[Start], when: str) -> str:
        taken = [getattr(s, when) for s in starts]
        server = statistics.median(m[0] for m in taken)
        workers = statistics.median(m[1] for m in taken)
        count = max(m[2] for m in taken)
        return f"server {server:.0f} MiB, {count} workers {workers:.0f} MiB in all"

    mib = 2**20
    counting = big.nbytes / mib / statistics.median(s.seconds for s in firsts)
    text_name = f"word chunks, {clients} clients x batch {batch}, default --workers"
    rows = [
        row(
            "word chunks in this process, index order / shuffled (baseline)",
            f"{costs['text'] * 1e6:.1f} / {costs['shuffled'] * 1e6:.1f} us/sample "
            f"({costs['json_bytes']:,.0f} bytes of JSON each)",
        ),
        row(
            "cutting one row group's documents into word chunks in this process: "
            "str.split + str.join / pyarrow.compute (baseline)",
            f"{costs['split_python'] * 1e6:.2f} / {costs['split_arrow'] * 1e6:.2f} "
            "us/chunk",
        ),
        row(
            f"{text_name}: canned bytes (ceiling server)",
            rate(ceiling[0]),
        ),
        row(
            f"{text_name}: in index order",
            rate(in_order[0], vs_ceiling, "ceiling") + busy(in_order[2]),
            f">= {TARGET_VS_CEILING}x ceiling",
            vs_ceiling >= TARGET_VS_CEILING,
        ),
        row(
            f"{text_name}: --shuffle",
            rate(shuffled[0], shuffled_vs_order, "index order") + busy(shuffled[2]),
            f">= {TARGET_SHUFFLED}x index order",
            shuffled_vs_order >= TARGET_SHUFFLED,
        ),
        row(
            "JPEG 256x256 -> 128x128 PNG in this process (baseline)",
            f"{costs['image'] * 1e3:.2f} ms/sample "
            f"({costs['image_bytes'] / 1024:,.0f} KiB of JSON each)",
        ),
        row(
            f"images, 1 client x batch {args.image_batch}, --workers 1",
            rate(images1[0]) + busy(images1[2]),
        ),
        row(
            f"images, 1 client x batch {args.image_batch}, --workers 2",
            rate(images2[0], two_vs_one, "--workers 1") + busy(images2[2]),
            f">= {TARGET_TWO_WORKERS}x --workers 1",
            two_vs_one >= TARGET_TWO_WORKERS,
        ),
        row(
            f"{big.nbytes / 2**30:.2f} GiB corpus: start to listening, empty cache",
            median_start(firsts) + f"; {counting:,.0f} MiB/s counted",
        ),
        row(
            f"{big.nbytes / 2**30:.2f} GiB corpus: start to listening, cached",
            median_start(cached),
        ),
        row("  memory 1 s after listening, empty cache", memory(firsts, "listening")),
        row("  memory 1 s after listening, cached", memory(cached, "listening")),
        row(
            f"  memory after {clients} clients streamed {seconds / 2:g} s, cached",
            memory(cached, "streamed")
            + f"; {statistics.median(s.rate for s in cached):,.0f} samples/s",
        ),
        row(
            "  index memory",
            f"{per_document} bytes per document "
            f"(index_bytes_per_document()); this corpus's index "
            f"{index_nbytes / mib:.2f} MiB for {index_rows:,} documents in "
            f"{index_blocks:,} row groups ({index_nbytes / index_rows:.2f} bytes "
            "per document)",
        ),
    ]
    print()
    print(
        f"Text corpus: {corpus.files} files, {corpus.documents:,} documents, "
        f"{corpus.row_groups} row groups, {corpus.nbytes / mib:.1f} MiB of Parquet; "
        f"big corpus: {big.files} files, {big.documents:,} documents, "
        f"{big.row_groups} row groups, {big.nbytes / mib:,.0f} MiB, "
        f"written in {written:.1f} s."
    )
    print()
    print(markdown(rows))
    print()

    def cpu(result: Result) -> str:
        total, _, run = result
        clients = run.clients_cpu()

        def share(seconds: float) -> str:
            per_sample = seconds / run.wall / total * 1e6 if total else 0.0
            return f"{seconds / run.wall:.0%} ({per_sample:.1f} us/sample)"

        return (
            f"server loop {share(run.server_cpu)}, its workers "
            f"{share(run.workers_cpu)}, clients {share(clients)} of one core"
        )

    def cpu_per_sample(result: Result) -> float:
        total, _, run = result
        clients = run.clients_cpu()
        used = run.server_cpu + run.workers_cpu + clients
        return used / run.wall / total * 1e6 if total else 0.0

    print(f"CPU, word chunks from the ceiling server: {cpu(ceiling)}")
    print(f"CPU, word chunks in index order: {cpu(in_order)}")
    print(f"CPU, word chunks --shuffle: {cpu(shuffled)}")
    print(f"CPU, images --workers 1: {cpu(images1)}; --workers 2: {cpu(images2)}")
    cores = os.cpu_count() or 1
    budget = cores / (TARGET_VS_CEILING * ceiling[0]) * 1e6
    print(
        f"CPU budget of {TARGET_VS_CEILING}x the ceiling on {cores} cores: "
        f"{budget:.1f} us a sample for clients, server and workers together; "
        f"the ceiling run used {cpu_per_sample(ceiling):.1f}, index order "
        f"{cpu_per_sample(in_order):.1f}"
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} cores)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": command,
                    "costs": costs,
                    "text": {k: totals(v) for k, v in text_runs.items()},
                    "images": {str(k): totals(v) for k, v in image_runs.items()},
                    "vs_ceiling": vs_ceiling,
                    "shuffled_vs_order": shuffled_vs_order,
                    "two_vs_one": two_vs_one,
                    "first_starts": [vars(s) for s in firsts],
                    "cached_starts": [vars(s) for s in cached],
                    "big_corpus_bytes": big.nbytes,
                    "index_nbytes": index_nbytes,
                    "index_bytes_per_document": per_document,
                    "load_before": load_before,
                    "load_after": load_after,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
