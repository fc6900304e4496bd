"""The data files of a spec: finding them, and reading them a block at a time.

* `resolve_files` lists the data files a spec's `files` name (paths, globs,
  folders, Hugging Face `save_to_disk` folders; any fsspec URL), each a
  `DataFile` with the identity the index cache is keyed by.
* `FileReader` reads one file a block at a time: a Parquet row group, an
  Arrow record batch, or the whole of a CSV or JSON Lines file.
* `OpenFiles` keeps a process's readers open; `BlockCache` keeps the blocks
  it read last, bounded in bytes (the spec's `cache_mb`).

fsspec opens every path and URL; pyarrow reads what is in the files. Both
are imported when first used.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eirstream.datasets.spec import DatasetProblem, DatasetSpec, one_line, require

if TYPE_CHECKING:
    import pyarrow as pa

EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
# fsspec `info()` keys that change when a file's content does, best first
STAMP_KEYS = (
    "ETag",
    "etag",
    "md5Hash",
    "blob_id",
    "mtime",
    "LastModified",
    "last_modified",
    "updated",
    "created",
)
OPEN_FILES = 8  # data files each process keeps open


@dataclass(frozen=True)
class DataFile:
    """One data file and its identity (what the disk cache is keyed by)."""

    url: str  # an absolute local path, or a URL with its protocol
    fmt: str  # parquet, jsonl, csv or arrow
    size: int
    stamp: str  # etag or modification time: changes with the content
    compression: str | None = None  # of a CSV or JSON Lines file


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) of a path or URL."""
    fsspec = require("fsspec", "reading data files")
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise DatasetProblem(
            f"reading {url} needs a package that is not installed ({one_line(exc)}); "
            "pip install it (hf:// needs huggingface_hub, s3:// needs s3fs)"
        ) from None
    except (ValueError, OSError) as exc:
        raise DatasetProblem(f"cannot open {url}: {one_line(exc)}") from None


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local one (read natively)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def _stamp(info: dict[str, Any]) -> str:
    """What in a file's fsspec `info()` changes with its content, as text."""
    for key in STAMP_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.timestamp()
        if isinstance(value, float):
            value = f"{value:.6f}"
        return f"{key}={value}"
    return ""


def resolve_files(spec: DatasetSpec) -> list[DataFile]:
    """The data files of the spec, in order, each once."""
    found: dict[str, DataFile] = {}
    for pattern in spec.files:
        url = join_path(spec.base, pattern)
        try:
            files = _resolve(spec, pattern, url)
        except DatasetProblem:
            raise
        except (OSError, ValueError) as exc:
            raise DatasetProblem(f"cannot list {url}: {one_line(exc)}") from None
        if not files:
            raise DatasetProblem(
                f"files: {pattern!r} matched no file (looked for {url})"
            )
        for file in files:
            found.setdefault(file.url, file)
    return list(found.values())


def join_path(base: str, pattern: str) -> str:
    """`pattern` (a path, glob or URL) relative to the folder `base`."""
    if "://" in pattern:
        return pattern
    pattern = os.path.expanduser(pattern)
    if "://" in base and not pattern.startswith("/"):
        return posixpath.join(base, pattern)
    return os.path.join(base, pattern)


def _resolve(spec: DatasetSpec, pattern: str, url: str) -> list[DataFile]:
    fs, path = filesystem(url)
    if glob.has_magic(path):
        out: list[DataFile] = []
        for match, info in sorted(fs.glob(path, detail=True).items()):
            if info.get("type") == "directory":
                out += _folder(fs, match, spec, pattern)
            elif not _hidden(match) and (file := _data_file(fs, match, info, spec)):
                out.append(file)
        return out
    if fs.isdir(path):
        return _folder(fs, path, spec, pattern)
    if not fs.exists(path):
        return []
    file = _data_file(fs, path, fs.info(path), spec)
    if file is None:
        raise DatasetProblem(
            f"cannot tell the format of {url} from its name; add format: parquet, "
            "jsonl, csv or arrow to the spec"
        )
    return [file]


def _hidden(path: str) -> bool:
    return posixpath.basename(path.rstrip("/"))[:1] in (".", "_")


def _folder(fs: Any, path: str, spec: DatasetSpec, pattern: str) -> list[DataFile]:
    """The data files in a folder: a Hugging Face `save_to_disk` folder's
    shards in its own order, or else every file of a known format below it."""
    names = {posixpath.basename(p.rstrip("/")): p for p in fs.ls(path, detail=False)}
    if "dataset_dict.json" in names:
        splits = sorted(n for n, p in names.items() if fs.isdir(p))
        raise DatasetProblem(
            f"{pattern!r} is a Hugging Face DatasetDict folder; point files at one "
            f"split: {', '.join(posixpath.join(pattern, s) for s in splits)}"
        )
    if spec.format == "hf" or "state.json" in names or "dataset_info.json" in names:
        if "state.json" in names:
            try:
                with fs.open(names["state.json"], "rb") as handle:
                    shards = [d["filename"] for d in json.load(handle)["_data_files"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetProblem(
                    f"cannot read {names['state.json']}: {one_line(exc)}"
                ) from None
        else:
            shards = sorted(n for n in names if n.endswith(".arrow"))
        paths = [posixpath.join(path, shard) for shard in shards]
        files = [_data_file(fs, p, fs.info(p), spec, "arrow") for p in paths]
    else:
        found = fs.find(path, detail=True)
        files = [
            _data_file(fs, p, info, spec)
            for p, info in sorted(found.items())
            if not any(_hidden(part) for part in posixpath.relpath(p, path).split("/"))
        ]
    return [file for file in files if file is not None]


def _data_file(
    fs: Any, path: str, info: dict[str, Any], spec: DatasetSpec, fmt: str = ""
) -> DataFile | None:
    """A DataFile, or None if its format is neither given nor known by name."""
    from fsspec.utils import infer_compression

    compression = infer_compression(path)
    stem = posixpath.splitext(path)[0] if compression else path
    if not fmt:
        extension = posixpath.splitext(stem)[1].lower()
        fmt = (
            "arrow"
            if spec.format == "hf"
            else spec.format or EXTENSIONS.get(extension, "")
        )
    if not fmt:
        return None
    url = path if is_local(fs) else fs.unstrip_protocol(path)
    compression = compression if fmt in ("csv", "jsonl") else None
    return DataFile(url, fmt, int(info.get("size") or 0), _stamp(info), compression)


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
# Blocks kept: open files and the blocks last read, per process
# =============================================================================
class OpenFiles:
    """The data files this process reads, each kept open by a `FileReader`
    (at most `OPEN_FILES`, the least recently used closed first)."""

    def __init__(self, files: Sequence[DataFile]) -> None:
        self.files = files
        self._readers: OrderedDict[int, FileReader] = OrderedDict()

    def reader(self, number: int) -> FileReader:
        """The reader of file `number`, opened if it is not open."""
        reader = self._readers.get(number)
        if reader is None:
            reader = self._readers[number] = FileReader(self.files[number])
            while len(self._readers) > OPEN_FILES:
                self._readers.popitem(last=False)[1].close()
        self._readers.move_to_end(number)
        return reader

    def close(self) -> None:
        """Close every open file."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


class BlockCache:
    """The last blocks (and word-chunk sums) used in this process, least
    recently used first out, holding at most `max_bytes`. A block larger
    than that is used and let go."""

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
