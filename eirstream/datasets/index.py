"""The index of a dataset: where each sample is, counted once and cached.

* **Blocks.** A sample index maps to (file, block, row) from metadata: a
  block is a Parquet row group or an Arrow record batch; a CSV or JSON Lines
  file is one block. `DatasetIndex` holds, per block, its file, its number
  in the file and where its rows and samples start; in word-chunk mode also
  one 32-bit word-chunk count per document, summed per block when the block
  is used (`prefix`).
* **Counting.** `count_file` reads what the index needs of one file (its
  `FileLayout`); `build_index` counts the files the cache lacks in parallel.
* **Disk cache.** What had to be counted is kept per data file in
  `$EIR_STREAM_CACHE` (else `~/.cache/eir-stream/`), keyed by the file's
  identity (URL, size, etag or modification time) and the counting rule.
  The server's process counts; its workers and later starts read the cache.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import astuple, dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from eirstream.datasets.files import DataFile, FileReader
from eirstream.datasets.spec import DatasetProblem, DatasetSpec, Entry, one_line
from eirstream.datasets.values import check_schema
from eirstream.datasets.words import ChunkRule, chunk_count

logger = logging.getLogger("eirstream.datasets.index")

CACHE_MAGIC = b"EIR-STREAM-INDEX 1\n"
PROGRESS_SECONDS = 5.0  # between INFO lines while counting


def cache_dir() -> Path:
    """Where counts are kept: $EIR_STREAM_CACHE, else ~/.cache/eir-stream."""
    configured = os.environ.get("EIR_STREAM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "eir-stream"


def index_bytes_per_document() -> int:
    """Memory the word-chunk index costs per document, in bytes: one 32-bit
    word-chunk count. Each block (row group) adds 32 bytes on top, whatever
    the mode."""
    return array("I").itemsize


# =============================================================================
# Counting: blocks and word chunks of each file, and the disk cache
# =============================================================================
@dataclass
class FileLayout:
    """What the index needs of one file; what the disk cache holds for it."""

    kind: str  # parquet, arrow-file, arrow-stream, csv or jsonl
    rows: list[int]  # rows of each block
    samples: list[int]  # samples of each block (its word chunks, else its rows)
    offsets: list[int]  # where each block starts (Arrow streams only)
    schema: bytes  # the file's Arrow schema, serialized
    chunks: array | None = None  # word chunks of each row, in word-chunk mode


def count_file(
    file: DataFile, entries: tuple[Entry, ...], rule: ChunkRule | None
) -> FileLayout:
    """Read what the index needs of one file (in a counting process or
    thread): its blocks and, with `rule`, each document's word-chunk count.
    Checks the file's columns against the entries first."""
    reader = None
    try:
        reader = FileReader(file)
        kind, rows, offsets, schema = reader.layout()
        check_schema(schema, entries, file.url)
        samples, chunks = rows, None
        if rule is not None:
            column, words, min_words = rule
            chunks, samples = array("I"), []
            for block in range(len(rows)):
                offset = offsets[block] if offsets else 0
                texts = reader.read(kind, block, offset, [column]).column(0)
                counts = array(
                    "I", (chunk_count(t, words, min_words) for t in texts.to_pylist())
                )
                chunks += counts
                samples.append(sum(counts))
        serialized = schema.serialize().to_pybytes()
        return FileLayout(kind, rows, samples, offsets, serialized, chunks)
    except DatasetProblem:
        raise
    except Exception as exc:  # whatever the library says, the file is unreadable
        raise DatasetProblem(
            f"cannot read {file.url}: {type(exc).__name__}: {one_line(exc)}"
        ) from None
    finally:
        if reader is not None:
            reader.close()


def _cache_key(file: DataFile, rule: ChunkRule | None) -> str:
    identity = [file.url, file.size, file.stamp, file.fmt, file.compression]
    return json.dumps([*identity, rule, sys.byteorder])


def _cache_path(key: str) -> Path:
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.idx"


def load_layout(
    file: DataFile, rule: ChunkRule | None, with_chunks: bool = True
) -> FileLayout | None:
    """The cached layout of `file` (its word-chunk counts only `with_chunks`), or
    None if there is none for its identity (or it is unreadable)."""
    key = _cache_key(file, rule)
    try:
        data = _cache_path(key).read_bytes()
        if not data.startswith(CACHE_MAGIC):
            return None
        end = data.index(b"\n", len(CACHE_MAGIC))
        head = json.loads(data[len(CACHE_MAGIC) : end])
        if head["key"] != key:
            return None
        body = memoryview(data)[end + 1 :]
        schema = bytes(body[: head["schema"]])
        chunks = None
        counts = body[head["schema"] :]
        if rule is not None and len(counts) != 4 * sum(head["rows"]):
            return None
        if rule is not None and with_chunks:
            chunks = array("I")
            chunks.frombytes(counts)
        return FileLayout(
            head["kind"], head["rows"], head["samples"], head["offsets"], schema, chunks
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_layout(file: DataFile, rule: ChunkRule | None, layout: FileLayout) -> bool:
    """Write `layout` to the cache (atomically); False if the cache is not
    writable, which only costs a recount next time."""
    key = _cache_key(file, rule)
    path = _cache_path(key)
    head = {
        "key": key,
        "kind": layout.kind,
        "rows": layout.rows,
        "samples": layout.samples,
        "offsets": layout.offsets,
        "schema": len(layout.schema),
    }
    temporary = path.parent / f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(CACHE_MAGIC + json.dumps(head).encode() + b"\n")
            handle.write(layout.schema)
            if layout.chunks is not None:
                layout.chunks.tofile(handle)
        os.replace(temporary, path)
        return True
    except OSError as exc:
        logger.warning("cannot write the index cache %s: %s", path, exc)
        return False


def count_task(
    file: tuple[Any, ...], entries: tuple[Entry, ...], rule: ChunkRule | None
) -> FileLayout:
    """`count_file` of a DataFile given as a tuple: what a worker process
    gets (a tuple pickles smaller than the dataclass)."""
    return count_file(DataFile(*file), entries, rule)


def counting_pool(files: list[DataFile], rule: ChunkRule | None) -> futures.Executor:
    """The pool that counts `files`: processes for word chunks (CPU-bound
    Python) in the server's main process; threads for metadata (I/O), for
    in-memory filesystems (which other processes cannot see), and in a
    worker process that finds no cache (so that workers do not each start a
    pool)."""
    workers = min(os.cpu_count() or 1, len(files))
    local = not any(f.url.startswith("memory:") for f in files)
    if rule is not None and local and multiprocessing.parent_process() is None:
        context = multiprocessing.get_context("spawn")
        return futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    return futures.ThreadPoolExecutor(max_workers=min(16, len(files)))


def count_files(
    spec: DatasetSpec, files: list[DataFile], rule: ChunkRule | None
) -> Iterable[tuple[int, FileLayout]]:
    """(position in `files`, layout) of each file, counted in parallel, as
    each is done; one INFO line every PROGRESS_SECONDS while it takes."""
    if len(files) <= 1:
        yield from ((0, count_file(file, spec.entries, rule)) for file in files)
        return
    what = "word chunks" if rule else "blocks"
    started = last = time.monotonic()
    rows = 0
    pool = counting_pool(files, rule)
    try:
        pending = {
            pool.submit(count_task, astuple(file), spec.entries, rule): number
            for number, file in enumerate(files)
        }
        waiting = set(pending)
        while waiting:
            done, waiting = futures.wait(waiting, timeout=PROGRESS_SECONDS)
            for future in done:
                layout = future.result()
                rows += sum(layout.rows)
                yield pending[future], layout
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                finished = f"{len(pending) - len(waiting)} of {len(files)} files"
                so_far = f"{rows:,} rows so far, {last - started:.0f} s"
                logger.info(f"counting {what}: {finished}, {so_far}")
    except BrokenProcessPool as exc:
        raise DatasetProblem(f"counting {what} failed: {one_line(exc)}") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# =============================================================================
# The index: where each sample is
# =============================================================================
class DatasetIndex:
    """Per block: its file, its number in that file, and where its rows and
    samples start; in word-chunk mode also each document's word-chunk count."""

    def __init__(
        self,
        layouts: list[FileLayout],
        chunks_of: Callable[[int], array] | None = None,
    ) -> None:
        """`chunks_of(n)`: the word-chunk counts of file n, in word-chunk mode;
        asked one file at a time, so only one file's are held twice."""
        self.kinds = [layout.kind for layout in layouts]
        self.block_file = array("I")
        self.block_no = array("I")
        self.offsets = array("Q")  # per block; 0 unless an Arrow stream
        self.row_start = array("Q", [0])
        self.sample_start = array("Q", [0])
        self.chunks = array("I") if chunks_of else None
        for number, layout in enumerate(layouts):
            for block, (rows, samples) in enumerate(
                zip(layout.rows, layout.samples, strict=True)
            ):
                self.block_file.append(number)
                self.block_no.append(block)
                self.offsets.append(layout.offsets[block] if layout.offsets else 0)
                self.row_start.append(self.row_start[-1] + rows)
                self.sample_start.append(self.sample_start[-1] + samples)
            if chunks_of is not None and self.chunks is not None:
                self.chunks += chunks_of(number)
        self.blocks = len(self.block_file)
        self.rows = self.row_start[-1]
        self.samples = self.sample_start[-1]

    def nbytes(self) -> int:
        """Memory of the index arrays."""
        arrays = [self.block_file, self.block_no, self.offsets, self.row_start]
        arrays += [self.sample_start, *([self.chunks] if self.chunks else [])]
        return sum(len(a) * a.itemsize for a in arrays)

    def block_of_sample(self, index: int) -> int:
        """The block that holds sample `index` (0 <= index < samples)."""
        return bisect_right(self.sample_start, index, 0, self.blocks) - 1

    def block_of_row(self, row: int) -> int:
        """The block that holds global row `row` (0 <= row < rows)."""
        return bisect_right(self.row_start, row, 0, self.blocks) - 1

    def prefix(self, block: int) -> array:
        """Where each row's word chunks start among the block's samples (one more
        entry than rows: the last is the block's sample count)."""
        assert self.chunks is not None
        counts = self.chunks[self.row_start[block] : self.row_start[block + 1]]
        return array("Q", accumulate(counts, initial=0))


def build_index(spec: DatasetSpec, files: list[DataFile]) -> tuple[DatasetIndex, int]:
    """The index of `files` from the disk cache, counting what is not there
    (in parallel); also how many files were counted."""
    import pyarrow as pa

    chunked = spec.chunked
    rule = None
    if chunked is not None and chunked.chunk_words:
        rule = (str(chunked.column), chunked.chunk_words, chunked.min_words)
    layouts = [load_layout(f, rule, with_chunks=False) for f in files]
    for file, layout in zip(files, layouts, strict=True):
        if layout is not None:  # same content, but the spec may have changed
            schema = pa.ipc.read_schema(pa.py_buffer(layout.schema))
            check_schema(schema, spec.entries, file.url)
    todo = [i for i, layout in enumerate(layouts) if layout is None]
    if todo:
        logger.info("counting %d of %d files of %s", len(todo), len(files), spec.path)
    for position, layout in count_files(spec, [files[i] for i in todo], rule):
        number = todo[position]
        if save_layout(files[number], rule, layout):
            layout.chunks = None  # read back from the cache in order, below
        layouts[number] = layout
    done = [layout for layout in layouts if layout is not None]
    assert len(done) == len(files)

    def chunks_of(number: int) -> array:
        """A file's word-chunk counts: kept, else cached, else counted again (its
        cache file was removed in the meantime)."""
        layout = done[number]
        if layout.chunks is None:
            file = files[number]
            layout = load_layout(file, rule) or count_file(file, spec.entries, rule)
        chunks, done[number].chunks = layout.chunks, None
        assert chunks is not None
        return chunks

    index = DatasetIndex(done, chunks_of if rule else None)
    return index, len(todo)
