"""Serve a dataset of files as a sample source: the reading layer of `--dataset`.

`make_source(dataset="spec.yaml")` returns a `DatasetSource`; the spec (see
`dataset_spec.py`) names the files and which columns feed which EIR inputs
and outputs. It stays cheap on datasets far larger than memory:

* **Blocks.** A sample index maps to (file, block, row) from metadata: a
  block is a Parquet row group or an Arrow record batch; a CSV or JSON Lines
  file is one block. Samples are made a block at a time from the spec's
  columns only, and the last blocks used stay in a per-process cache bounded
  in bytes (`cache_mb`), so runs of indices and indices shuffled within a
  block read it once.
* **Index.** Per block its file, its number in the file and where its rows
  and samples start; in word-chunk mode also one 32-bit chunk count per
  document, summed per block when the block is used.
* **Disk cache.** What had to be counted is kept per data file in
  `$EIR_STREAM_CACHE` (else `~/.cache/eir-stream/`), keyed by the file's
  identity (URL, size, etag or modification time) and the counting rule.
  The server's process counts, in parallel; its workers and later starts
  read the cache.

Sample ids are `r<row>` (rows numbered across all files) or `r<row>c<chunk>`
(word chunks), safe as file names; `index_of` maps them back by bisection.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import logging
import multiprocessing
import os
import posixpath
import re
import sys
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import astuple, dataclass
from itertools import accumulate
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eirstream.datasets.spec import (
    DataFile,
    DatasetProblem,
    DatasetSpec,
    Entry,
    check_schema,
    chunk_count,
    encode_entry,
    filesystem,
    fixed_shape,
    info_entry,
    is_local,
    load_spec,
    one_line,
    require,
    resolve_files,
)
from eirstream.eirformat import NESTED_OUTPUT_TYPES, build_sample, check_dataset_info
from eirstream.encoders import infer_shape
from eirstream.sources import in_index_order

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("eirstream.datasets")

CACHE_MAGIC = b"EIR-STREAM-INDEX 1\n"
PROGRESS_SECONDS = 5.0  # between INFO lines while counting
OPEN_FILES = 8  # data files each process keeps open
# Word chunks shuffled this many at a time (stream_order.py): a task of a
# few thousand consecutive positions then splits each document it touches
# once, and shares few documents with the tasks beside it, on other workers.
CHUNK_WINDOW = 512
CHUNK_MARK = "\x00"  # where a chunk's text goes in a template: JSON never holds it raw
SAMPLE_ID = re.compile(r"r(0|[1-9][0-9]*)(?:c(0|[1-9][0-9]*))?")

ChunkRule = tuple[str, int, int]  # (column, chunk_words, min_words)


def make_source(
    *,
    dataset: str,
    seed: int = 0,
    sequence_length: int = 64,
    max_iterations: int | None = None,
    **_: Any,
) -> DatasetSource:
    """The factory `--source dataset_source:make_source` calls, in the server
    and in every worker process. `seed` and `sequence_length` do not change
    a dataset; `max_iterations` caps `num_samples`."""
    return load_dataset(dataset, max_iterations=max_iterations)


def load_dataset(path: str, *, max_iterations: int | None = None) -> DatasetSource:
    """The `DatasetSource` of the spec at `path`. Every problem with the spec
    or its files raises ValueError("--dataset <path>: ...") on one line."""
    try:
        return DatasetSource(load_spec(path), max_iterations=max_iterations)
    except DatasetProblem as exc:
        raise ValueError(f"--dataset {path}: {one_line(exc)}") from None


def index_bytes_per_document() -> int:
    """Memory the word-chunk index costs per document, in bytes: one 32-bit
    chunk count. Each block (row group) adds 32 bytes on top, whatever the
    mode."""
    return array("I").itemsize


def cache_dir() -> Path:
    """Where counts are kept: $EIR_STREAM_CACHE, else ~/.cache/eir-stream."""
    configured = os.environ.get("EIR_STREAM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "eir-stream"


# =============================================================================
# Reading one file a block at a time
# =============================================================================
class FileReader:
    """One data file, read a block at a time: a Parquet row group, an Arrow
    record batch, or the whole of a CSV or JSON Lines file. Keeps the file
    open (and its footer parsed) between reads."""

    def __init__(self, file: DataFile) -> None:
        import pyarrow as pa

        self.pa = pa
        self.file = file
        self._fs, self._path = filesystem(file.url)
        self._local = is_local(self._fs)
        self._handle: Any = None  # the open file (a memory map when local Arrow)
        self._parquet: Any = None
        self._ipc: Any = None
        self._schema: pa.Schema | None = None  # of an Arrow stream
        self._whole: pa.Table | None = None  # a CSV/JSON Lines file, while counting

    def close(self) -> None:
        """Let go of the open file."""
        for closable in (self._parquet, self._handle):
            if closable is not None:
                closable.close()
        self._handle = self._parquet = self._ipc = self._whole = None

    def _open(self) -> Any:
        if self._handle is None:
            if self._local and self.file.fmt == "arrow":
                self._handle = self.pa.memory_map(self._path)
            else:  # pyarrow reads a Python file only if told it is readable
                handle = self._fs.open(self._path, "rb")
                self._handle = self.pa.PythonFile(handle, mode="r")
        return self._handle

    def _parquet_file(self) -> Any:
        if self._parquet is None:
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(self._path if self._local else self._open())
        return self._parquet

    def _ipc_file(self) -> Any:
        if self._ipc is None:
            self._ipc = self.pa.ipc.open_file(self._open())
        return self._ipc

    def _stream_schema(self) -> pa.Schema:
        if self._schema is None:
            handle = self._open()
            handle.seek(0)
            self._schema = self.pa.ipc.read_schema(self.pa.ipc.read_message(handle))
        return self._schema

    def layout(self) -> tuple[str, list[int], list[int], pa.Schema]:
        """(kind, rows per block, byte offset per block, schema): Parquet
        from its footer, Arrow by its record batches (memory-mapped when
        local), CSV and JSON Lines by reading them through."""
        fmt = self.file.fmt
        if fmt == "parquet":
            parquet = self._parquet_file()
            meta = parquet.metadata
            rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            return "parquet", rows, [], parquet.schema_arrow
        if fmt == "arrow":
            handle = self._open()
            if handle.read(6) == b"ARROW1":
                ipc = self._ipc_file()
                rows = [
                    ipc.get_batch(i).num_rows for i in range(ipc.num_record_batches)
                ]
                return "arrow-file", rows, [], ipc.schema
            return self._stream_layout()
        self._whole = self._read_whole(())
        return fmt, [self._whole.num_rows], [], self._whole.schema

    def _stream_layout(self) -> tuple[str, list[int], list[int], pa.Schema]:
        """An Arrow IPC stream (what `save_to_disk` writes) has no footer: walk
        its messages once and note where each record batch starts."""
        ipc, schema, handle = self.pa.ipc, self._stream_schema(), self._open()
        rows: list[int] = []
        offsets: list[int] = []
        while True:
            at = handle.tell()
            try:
                message = ipc.read_message(handle)
            except EOFError:
                break
            if message.type == "dictionary batch":
                raise DatasetProblem(
                    f"{self.file.url} is a dictionary-encoded Arrow stream, which "
                    "cannot be read by record batch; write it as Parquet instead"
                )
            if message.type == "record batch":
                offsets.append(at)
                rows.append(ipc.read_record_batch(message, schema).num_rows)
        return "arrow-stream", rows, offsets, schema

    def read(
        self, kind: str, block: int, offset: int, columns: Sequence[str]
    ) -> pa.Table:
        """The `columns` of one block (`offset`: where an Arrow stream's is)."""
        names = list(columns)
        if kind == "parquet":
            return self._parquet_file().read_row_group(block, columns=names)
        if kind == "arrow-file":
            batch = self._ipc_file().get_batch(block)
        elif kind == "arrow-stream":
            schema, handle = self._stream_schema(), self._open()
            handle.seek(offset)
            message = self.pa.ipc.read_message(handle)
            batch = self.pa.ipc.read_record_batch(message, schema)
        else:
            whole = self._whole if self._whole is not None else self._read_whole(names)
            return whole.select(names)
        return self.pa.Table.from_batches([batch]).select(names)

    def _read_whole(self, columns: Sequence[str]) -> pa.Table:
        import pyarrow.csv as pa_csv
        import pyarrow.json as pa_json

        compression = self.file.compression
        with self._fs.open(self._path, "rb", compression=compression) as raw:
            handle = self.pa.PythonFile(raw, mode="r")
            if self.file.fmt == "csv":
                options = pa_csv.ConvertOptions(include_columns=list(columns))
                return pa_csv.read_csv(handle, convert_options=options)
            table = pa_json.read_json(handle)
        return table.select(list(columns)) if columns else table


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
    """Read what the index needs of one file (run in worker processes): its
    blocks and, with `rule`, each document's word chunks. Checks the file's
    columns against the entries first."""
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
    """The cached layout of `file` (its chunk counts only `with_chunks`), or
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
        log.warning("cannot write the index cache %s: %s", path, exc)
        return False


def count_task(
    file: tuple[Any, ...], entries: tuple[Entry, ...], rule: ChunkRule | None
) -> FileLayout:
    """`count_file` of a DataFile given as a tuple: what a worker process
    gets (a tuple pickles smaller than the dataclass)."""
    return count_file(DataFile(*file), entries, rule)


def _executor(files: list[DataFile], rule: ChunkRule | None) -> futures.Executor:
    """Processes for word counting (CPU-bound Python) in the server's main
    process; threads for metadata (I/O), for in-memory filesystems (which
    other processes cannot see), and in a worker process that finds no cache
    (so that workers do not each start a pool)."""
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
    pool = _executor(files, rule)
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
                log.info(f"counting {what}: {finished}, {so_far}")
    except BrokenProcessPool as exc:
        raise DatasetProblem(f"counting {what} failed: {one_line(exc)}") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# =============================================================================
# The index: where each sample is
# =============================================================================
class DatasetIndex:
    """Per block: its file, its number in that file, and where its rows and
    samples start; in word-chunk mode also each document's chunk count."""

    def __init__(
        self,
        layouts: list[FileLayout],
        chunks_of: Callable[[int], array] | None = None,
    ) -> None:
        """`chunks_of(n)`: the chunk counts of file n, in word-chunk mode;
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
        """Where each row's chunks start among the block's samples (one more
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
        log.info("counting %d of %d files of %s", len(todo), len(files), spec.path)
    for position, layout in count_files(spec, [files[i] for i in todo], rule):
        number = todo[position]
        if save_layout(files[number], rule, layout):
            layout.chunks = None  # read back from the cache in order, below
        layouts[number] = layout
    done = [layout for layout in layouts if layout is not None]
    assert len(done) == len(files)

    def chunks_of(number: int) -> array:
        """A file's chunk counts: kept, else cached, else counted again (its
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


# =============================================================================
# The source
# =============================================================================
class BlockCache:
    """The last blocks (and chunk sums) used in this process, least recently
    used first out, holding at most `max_bytes`. A block larger than that is
    used and let go."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> Any:
        """The value kept under `key`, or None."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        """Keep `value` (of `nbytes` bytes), dropping the oldest to make room."""
        if key in self._items or nbytes > self.max_bytes:
            return
        while self._items and self.nbytes + nbytes > self.max_bytes:
            _, (_, size) = self._items.popitem(last=False)
            self.nbytes -= size
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes


class DatasetSource:
    """A dataset as a `SampleSource` (sample_sources.py): `num_samples` rows
    or word chunks, each sample made from one row of one block.

    `block_sizes` lists the samples of each block in index order (shuffle by
    blocks to keep reads local), and `shuffle_window` says how many to mix
    at a time: `CHUNK_WINDOW` for word chunks, else the stream's default.
    `cache` is this process's `BlockCache`.
    """

    def __init__(self, spec: DatasetSpec, max_iterations: int | None = None) -> None:
        require("pyarrow", "reading data files")
        if any(e.type == "image" for e in spec.entries):
            require("PIL", "an image entry")
        self.spec = spec
        self.files = resolve_files(spec)
        self.index, counted = build_index(spec, self.files)
        total = self.index.samples
        self.num_samples = (
            total if max_iterations is None else min(total, max_iterations)
        )
        self.block_sizes = _capped(self.index, self.num_samples)
        self.shuffle_window = CHUNK_WINDOW if spec.chunked else None
        self.cache = BlockCache(spec.cache_bytes)
        self.files_counted = counted
        self.files_cached = len(self.files) - counted
        self._readers: OrderedDict[int, FileReader] = OrderedDict()
        self._lock = threading.RLock()
        # (global row, its words) of the document split last: its next chunk
        # asked alone (`sample`) is not split again.
        self._last_document: tuple[int, list[str]] = (-1, [])
        self._warned = False  # about a block larger than the cache
        self._chunked = spec.chunked
        # Word chunks are made a document at a time (`_chunks_json`) when the
        # chunked column feeds sequence entries only, whose value is the text.
        self._by_document = spec.chunked is not None and all(
            entry.type == "sequence"
            for entry in spec.entries
            if spec.chunked.column in entry.reads
        )
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._info = self._dataset_info()
        try:
            check_dataset_info(self._info)
        except ValueError as exc:  # as every problem: one line naming the spec
            raise DatasetProblem(str(exc)) from None
        self._dump = json.JSONEncoder(separators=(",", ":")).encode
        self._keys = {e.name: self._dump(e.name) for e in spec.entries}
        self._outputs = [
            (e.name, e.type, self._keys[e.name])
            for e in spec.entries
            if e.side == "outputs"
        ]
        sizes = f"{self.index.rows:,} rows, {self.num_samples:,} samples"
        log.info(
            f"dataset {spec.path}: {len(self.files)} files, {self.index.blocks} "
            f"blocks, {sizes}; index of {self.files_cached} files from the cache "
            f"in {cache_dir()}, {counted} counted"
        )

    # ------------------------------------------------------------------ info
    def dataset_info(self) -> dict[str, Any]:
        """The `getInfo` payload: each input and output with its type (and
        the shape of arrays, and of images given both size and mode)."""
        return json.loads(json.dumps(self._info))

    def _dataset_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"inputs": {}, "outputs": {}}
        for entry in self.spec.entries:
            if entry.type == "array":
                self._shapes[entry.where] = self._array_shape(entry)
            shape = self._shapes.get(entry.where)
            info[entry.side][entry.name] = info_entry(entry, shape)
        return info

    def _array_shape(self, entry: Entry) -> tuple[int, ...]:
        """The declared shape, else the one its Arrow type fixes, else that of
        the first row."""
        if entry.shape:
            return entry.shape
        starts = self.index.row_start
        block = next(
            (b for b in range(self.index.blocks) if starts[b + 1] > starts[b]), None
        )
        if block is None:
            raise DatasetProblem(
                f"{entry.where}: the dataset has no rows to take an array shape from"
            )
        url = self.files[self.index.block_file[block]].url
        try:
            column = self._block(block)[0][str(entry.column)]
        except Exception as exc:  # whatever the library says, it is unreadable
            raise DatasetProblem(f"cannot read {url}: {one_line(exc)}") from None
        shape = fixed_shape(column.type)
        if shape:
            return shape
        try:
            return infer_shape(column[0].as_py(), f"{entry.where}'s first row")
        except ValueError as exc:
            raise DatasetProblem(
                f"{exc} (in {url}); give the shape in the spec: shape: [...]"
            ) from None

    # -------------------------------------------------------------- samples
    def sample(self, index: int) -> dict[str, Any]:
        """Sample `index`: the same dict every time."""
        sample_id, encoded = self._encoded(index)
        return build_sample(
            self._info, sample_id, encoded["inputs"], encoded["outputs"]
        )

    def _encoded(self, index: int) -> tuple[str, dict[str, dict[str, Any]]]:
        """Sample `index`'s id and its encoded values by side and name."""
        block, row_in_block, row, chunk = self._locate(index)
        arrays, _ = self._block(block)
        sample_id = f"r{row}" if chunk is None else f"r{row}c{chunk}"
        chunk_text = (
            None
            if chunk is None
            else self._chunk_text(arrays, row_in_block, row, chunk)
        )
        folder = self._folder(block)
        encoded: dict[str, dict[str, Any]] = {"inputs": {}, "outputs": {}}
        for entry in self.spec.entries:
            encoded[entry.side][entry.name] = self._value(
                entry, arrays, row_in_block, chunk_text, folder, sample_id
            )
        return sample_id, encoded

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """`sample` of each index, in order."""
        return [self.sample(i) for i in indices]

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        """Each sample as compact JSON text (what the server sends), made in
        index order (shuffled indices then read each block and document in
        one go) and returned in the order asked."""
        make = self._chunks_json if self._by_document else self._samples_json
        return in_index_order(make, indices)

    def _samples_json(self, ascending: list[int]) -> list[str]:
        return [self._sample_json(index) for index in ascending]

    def _sample_json(self, index: int) -> str:
        """json.dumps(sample(index), separators=(",", ":")), written from the
        encoded values without building the sample's dicts."""
        sample_id, encoded = self._encoded(index)
        dump = self._dump
        values = {
            side: {name: dump(value) for name, value in named.items()}
            for side, named in encoded.items()
        }
        return self._json_up_to_id(values) + dump(sample_id) + "}"

    def _json_up_to_id(self, values: dict[str, dict[str, str]]) -> str:
        """A sample's JSON from its values' JSON texts by side and name, up
        to its id's value: each value is written once, also where
        build_sample repeats it (a sequence output under inputs)."""
        inputs = dict(values["inputs"])
        labels = []
        for name, kind, key in self._outputs:
            text = values["outputs"][name]
            labels.append(
                f"{key}:{{{key}:{text}}}"
                if kind in NESTED_OUTPUT_TYPES
                else f"{key}:{text}"
            )
            if kind == "sequence":
                inputs[name] = text
        given = ",".join(f"{self._keys[name]}:{text}" for name, text in inputs.items())
        labelled = ",".join(labels)
        return f'{{"inputs":{{{given}}},"target_labels":{{{labelled}}},"sample_id":'

    def _chunks_json(self, ascending: list[int]) -> list[str]:
        """`_sample_json` of each index (ascending) in word-chunk mode, a
        document at a time: the document is split once, its other values are
        encoded once into a template, and each chunk's JSON is its text
        dropped into that template. This is the loop run for every word chunk
        served, hence the comprehension."""
        made: list[str] = []
        if ascending:  # in range: the last here, each document's first below
            self._locate(ascending[-1])
        starts = self.index.sample_start
        assert self._chunked is not None and self._chunked.chunk_words
        escape, size = encode_basestring_ascii, self._chunked.chunk_words
        at, count = 0, len(ascending)
        while at < count:
            block, row_in_block, row, _ = self._locate(ascending[at])
            prefix = self._prefix(block)
            first = starts[block] + prefix[row_in_block]  # the document's chunk 0
            end = starts[block] + prefix[row_in_block + 1]
            stop = bisect_left(ascending, end, at)
            numbers = [index - first for index in ascending[at:stop]]
            arrays, _ = self._block(block)
            words = self._document_words_of(arrays, row_in_block, row)
            parts = self._template(block, arrays, row_in_block, f"r{row}c{numbers[0]}")
            made += [
                escape(" ".join(words[number * size : (number + 1) * size])).join(parts)
                + f'"r{row}c{number}"}}'
                for number in numbers
            ]
            at = stop
        return made

    def _template(
        self, block: int, arrays: dict[str, Any], row_in_block: int, sample_id: str
    ) -> list[str]:
        """The JSON of a word chunk of this row up to its id, cut where the
        chunk's text goes (`_sample_json` = text.join(parts) + id + "}")."""
        assert self._chunked is not None
        folder, chunked = self._folder(block), self._chunked.column
        values: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}}
        for entry in self.spec.entries:
            if entry.type == "sequence" and entry.column == chunked:
                values[entry.side][entry.name] = CHUNK_MARK
                continue
            value = self._value(entry, arrays, row_in_block, None, folder, sample_id)
            values[entry.side][entry.name] = self._dump(value)
        return self._json_up_to_id(values).split(CHUNK_MARK)

    def sample_id(self, index: int) -> str:
        """The id of sample `index`, without reading any data."""
        _, _, row, chunk = self._locate(index)
        return f"r{row}" if chunk is None else f"r{row}c{chunk}"

    def _locate(self, index: int) -> tuple[int, int, int, int | None]:
        """(block, row in it, global row, chunk or None) of sample `index`."""
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"sample index {index} is not in 0..{self.num_samples - 1}"
            )
        block = self.index.block_of_sample(index)
        offset = index - self.index.sample_start[block]
        if self.index.chunks is None:
            return block, offset, self.index.row_start[block] + offset, None
        prefix = self._prefix(block)
        row = bisect_right(prefix, offset) - 1
        return block, row, self.index.row_start[block] + row, offset - prefix[row]

    def _chunk_text(
        self, arrays: dict[str, Any], row_in_block: int, row: int, chunk: int
    ) -> str:
        """The words of chunk `chunk` of the document in global row `row`."""
        assert self._chunked is not None and self._chunked.chunk_words
        size = self._chunked.chunk_words
        words = self._document_words_of(arrays, row_in_block, row)
        return " ".join(words[chunk * size : (chunk + 1) * size])

    def _document_words_of(
        self, arrays: dict[str, Any], row_in_block: int, row: int
    ) -> list[str]:
        """The words of the document in global row `row`. Only the chunks
        asked for are joined: a task of consecutive positions holds all of a
        document's chunks in index order, but only some of them shuffled,
        and another task, on another worker maybe, the rest. A task makes
        its samples in index order, so it splits each document once."""
        assert self._chunked is not None
        last, words = self._last_document  # one read: Dask runs tasks in threads
        if last == row:
            return words
        words = arrays[str(self._chunked.column)][row_in_block].as_py().split()
        self._last_document = (row, words)
        return words

    def _value(
        self,
        entry: Entry,
        arrays: dict[str, Any],
        row: int,
        chunk_text: str | None,
        folder: str,
        sample_id: str,
    ) -> Any:
        """The encoded value of `entry` for one row (`chunk_text` in place of
        the chunked column's); a failure names the sample and the entry."""
        chunked = self._chunked.column if self._chunked else None

        def cell(column: str) -> Any:
            if chunk_text is not None and column == chunked:
                return chunk_text
            return arrays[column][row].as_py()

        try:
            return encode_entry(entry, cell, self._shapes.get(entry.where), folder)
        except Exception as exc:
            raise ValueError(
                f"sample {sample_id}: {entry.where}: {type(exc).__name__}: "
                f"{one_line(exc)}"
            ) from exc

    def _folder(self, block: int) -> str:
        """The folder of a block's data file (images may be paths within it)."""
        return posixpath.dirname(self.files[self.index.block_file[block]].url)

    # --------------------------------------------------------------- blocks
    def _prefix(self, block: int) -> array:
        with self._lock:
            prefix = self.cache.get(("prefix", block))
            if prefix is None:
                prefix = self.index.prefix(block)
                self.cache.put(("prefix", block), prefix, len(prefix) * prefix.itemsize)
            return prefix

    def _block(self, block: int) -> tuple[dict[str, Any], int]:
        """({column: Arrow array}, bytes) of one block, from the cache or
        read (only the spec's columns)."""
        with self._lock:
            cached = self.cache.get(("block", block))
            if cached is not None:
                return cached
            number = self.index.block_file[block]
            table = self._reader(number).read(
                self.index.kinds[number],
                self.index.block_no[block],
                self.index.offsets[block],
                self.spec.columns,
            )
            arrays = {
                name: table.column(name).combine_chunks() for name in self.spec.columns
            }
            value = (arrays, sum(a.nbytes for a in arrays.values()))
            if value[1] > self.cache.max_bytes and not self._warned:
                self._warned = True
                log.warning(
                    f"a block of {value[1] / 2**20:.1f} MiB is larger than cache_mb "
                    f"({self.cache.max_bytes / 2**20:.1f} MiB), so it is read again "
                    "for every chunk of samples: raise cache_mb in the spec"
                )
            self.cache.put(("block", block), value, value[1])
            return value

    def _reader(self, number: int) -> FileReader:
        reader = self._readers.get(number)
        if reader is None:
            reader = self._readers[number] = FileReader(self.files[number])
            while len(self._readers) > OPEN_FILES:
                self._readers.popitem(last=False)[1].close()
        self._readers.move_to_end(number)
        return reader

    def close(self) -> None:
        """Close the open files and empty the cache."""
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
            self.cache = BlockCache(self.cache.max_bytes)

    # ------------------------------------------------------------------ ids
    def index_of(self, sample_id: str) -> int | None:
        """The index of `sample_id`, or None if this dataset has no such sample."""
        found = self.indices_of([sample_id])
        return found.pop() if found else None

    def indices_of(self, sample_ids: Sequence[str]) -> set[int]:
        """The indices of the ids that are this dataset's (others are left out)."""
        parsed = []
        for sample_id in sample_ids:
            match = (
                SAMPLE_ID.fullmatch(sample_id) if isinstance(sample_id, str) else None
            )
            if match and (match[2] is None) == (self.index.chunks is None):
                parsed.append(
                    (int(match[1]), None if match[2] is None else int(match[2]))
                )
        parsed.sort(key=lambda pair: pair[0])  # rows of a block together: one sum
        found = set()
        for row, chunk in parsed:
            index = self._index_of_row(row, chunk)
            if index is not None and index < self.num_samples:
                found.add(index)
        return found

    def _index_of_row(self, row: int, chunk: int | None) -> int | None:
        if row >= self.index.rows:
            return None
        if chunk is None:
            return row
        assert self.index.chunks is not None
        if chunk >= self.index.chunks[row]:
            return None
        block = self.index.block_of_row(row)
        within = self._prefix(block)[row - self.index.row_start[block]]
        return self.index.sample_start[block] + within + chunk

    def index_nbytes(self) -> int:
        """Memory of this source's index, in bytes (not counting the cache)."""
        return self.index.nbytes()


def _capped(index: DatasetIndex, total: int) -> list[int]:
    """Samples per block; under a cap (`total` below all samples), the blocks
    after the cap are left out."""
    starts, capped = index.sample_start, total < index.samples
    return [
        min(starts[block + 1], total) - starts[block]
        for block in range(index.blocks)
        if not capped or starts[block] < total
    ]
