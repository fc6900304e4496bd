"""The `--dataset` spec: what a YAML file says, and what it means for the data.

    files: data/*.parquet       # a path, glob, folder or a list; fsspec URLs too
    inputs:
      caption: {type: sequence, column: text}
      painting: {type: image, column: image, size: [128, 128]}
      clinical: {type: tabular, columns: [age, bmi, sex]}
    outputs:
      style: {type: tabular, columns: [style]}

* `load_spec` reads and checks the file and returns a `DatasetSpec`.
* `resolve_files` lists the data files its `files` name (paths, globs,
  folders, Hugging Face `save_to_disk` folders; any fsspec URL), each with
  the identity the index cache is keyed by.
* `check_schema` checks that a data file's Arrow schema has every column an
  entry reads, of a type that entry can encode.
* `encode_entry` turns one row's cells into an entry's EIR value.

Every problem with the spec or the files is a `DatasetProblem` (a
ValueError) with a one-line message; `dataset_source` puts `--dataset <spec
path>:` in front of it. Optional packages (PyYAML, fsspec, pyarrow, Pillow)
are imported when needed, so a missing one is reported as such.
"""

from __future__ import annotations

import base64
import difflib
import glob
import importlib
import io
import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import ModuleType
from typing import TYPE_CHECKING, Any

from eirstream.encoders import (
    IMAGE_MODES,
    PNG_SIGNATURE,
    encode_array,
    png_header,
    survival_row,
    tabular_row,
)

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("parquet", "jsonl", "csv", "arrow", "hf")
TOP_KEYS = ("files", "format", "inputs", "outputs", "cache_mb")
ENTRY_KEYS: dict[str, tuple[str, ...]] = {
    "sequence": ("type", "column", "chunk_words", "min_words"),
    "tabular": ("type", "columns", "categorical"),
    "image": ("type", "column", "size", "mode"),
    "array": ("type", "column", "shape"),
    "survival": ("type", "event_column", "time_column"),
}
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "sequence": ("column",),
    "tabular": ("columns",),
    "image": ("column",),
    "array": ("column",),
    "survival": ("event_column", "time_column"),
}
SIDE_TYPES = {
    "inputs": ("sequence", "tabular", "image", "array"),
    "outputs": ("sequence", "tabular", "image", "array", "survival"),
}
MODES = ("L", "RGB", "RGBA")  # image modes EIR reads
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
DEFAULT_CACHE_MB = 256
# pip names of the optional packages, by module name
PACKAGES = {"pyarrow": "pyarrow", "yaml": "PyYAML", "fsspec": "fsspec", "PIL": "Pillow"}


class DatasetProblem(ValueError):
    """A problem with the spec or the data it names; the message is one line."""


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) made one space."""
    return re.sub(r"\s+", " ", str(text)).strip()


def did_you_mean(word: str, known: Sequence[str], listed: bool = False) -> str:
    """ "; did you mean 'x'?" for the closest known word, else the known list
    (nothing if the message `listed` them already)."""
    close = difflib.get_close_matches(word, list(known), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}" if known and not listed else ""


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional package, or say which one is missing and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetProblem(
            f"{purpose} needs the Python package {PACKAGES.get(module, module)}, "
            "which is not installed; pip install -r requirements-datasets.txt"
        ) from None


@dataclass(frozen=True)
class Entry:
    """One input or output of the spec: its EIR name and type, and the columns
    it reads."""

    side: str  # "inputs" or "outputs"
    name: str
    type: str
    column: str | None = None
    columns: tuple[str, ...] = ()
    categorical: frozenset[str] = frozenset()
    size: tuple[int, ...] | None = None  # image (height, width)
    mode: str | None = None  # image L, RGB or RGBA
    shape: tuple[int, ...] | None = None  # array shape, if given
    chunk_words: int | None = None
    min_words: int = 1
    event_column: str | None = None
    time_column: str | None = None

    @property
    def where(self) -> str:
        """Where it is in the spec, e.g. "inputs.caption"."""
        return f"{self.side}.{self.name}"

    @property
    def reads(self) -> tuple[str, ...]:
        """The columns it reads, in order."""
        if self.type == "tabular":
            return self.columns
        if self.type == "survival":
            return (str(self.event_column), str(self.time_column))
        return (str(self.column),)


@dataclass(frozen=True)
class DatasetSpec:
    """A checked spec. `base` is the spec's folder (a path or URL), against
    which relative `files` are resolved."""

    path: str
    base: str
    files: tuple[str, ...]
    format: str | None
    entries: tuple[Entry, ...]
    cache_bytes: int

    @property
    def chunked(self) -> Entry | None:
        """The entry with `chunk_words`, if any (at most one)."""
        return next((e for e in self.entries if e.chunk_words), None)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the entries read, each once, in spec order."""
        return tuple(dict.fromkeys(c for e in self.entries for c in e.reads))

    def side(self, side: str) -> tuple[Entry, ...]:
        """The entries of "inputs" or "outputs"."""
        return tuple(e for e in self.entries if e.side == side)


def load_spec(path: str) -> DatasetSpec:
    """Read and check the YAML spec at `path` (a local path or fsspec URL)."""
    yaml = require("yaml", "reading the spec")
    text = _read_text(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or exc
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DatasetProblem(f"not valid YAML: {one_line(problem)}{at}") from None
    return parse_spec(raw, path)


def _read_text(path: str) -> str:
    if "://" not in path:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as file:
                return file.read()
        except OSError as exc:
            raise DatasetProblem(
                f"cannot read the spec: {exc.strerror or one_line(exc)}"
            ) from None
    fsspec = require("fsspec", "reading a spec from a URL")
    try:
        with fsspec.open(path, "rt", encoding="utf-8") as file:
            return file.read()
    except (OSError, ImportError, ValueError) as exc:
        raise DatasetProblem(f"cannot read the spec: {one_line(exc)}") from None


def spec_folder(path: str) -> str:
    """The folder relative `files` are resolved against."""
    if "://" in path:
        return posixpath.dirname(path)
    return os.path.dirname(os.path.abspath(os.path.expanduser(path)))


def parse_spec(raw: Any, path: str) -> DatasetSpec:
    """Check the parsed YAML of a spec and build the `DatasetSpec`."""
    if not isinstance(raw, dict):
        raise DatasetProblem(
            "the spec must be a mapping with files, inputs and outputs, got "
            f"{type(raw).__name__}"
        )
    _check_keys(raw, TOP_KEYS, "the spec")
    for key in ("files", "outputs"):
        if key not in raw:
            raise DatasetProblem(f"the spec needs {key!r}")
    fmt = raw.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise DatasetProblem(
            f"format {fmt!r} is not one of {', '.join(FORMATS)}"
            f"{did_you_mean(str(fmt), FORMATS, listed=True)}"
        )
    entries: list[Entry] = []
    for side in ("inputs", "outputs"):
        block = raw.get(side) or {}
        if not isinstance(block, dict) or (side == "outputs" and not block):
            raise DatasetProblem(
                f"{side} must be a mapping of EIR {side[:-1]} name -> entry"
                + (" with at least one output" if side == "outputs" else "")
            )
        entries += [_entry(side, name, value) for name, value in block.items()]
    _check_entries(entries)
    return DatasetSpec(
        path=path,
        base=spec_folder(path),
        files=_files(raw["files"]),
        format=fmt,
        entries=tuple(entries),
        cache_bytes=_cache_bytes(raw.get("cache_mb", DEFAULT_CACHE_MB)),
    )


def _check_keys(mapping: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise DatasetProblem(
                f"unknown key {key!r} in {where}{did_you_mean(str(key), known)}"
            )


def _files(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise DatasetProblem(
            f"files must be a path, glob, folder or URL, or a list of them; got "
            f"{value!r:.80}"
        )
    return tuple(items)


def _cache_bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise DatasetProblem(f"cache_mb must be a number above 0, got {value!r}")
    return int(value * 2**20)


def _entry(side: str, name: Any, raw: Any) -> Entry:
    where = f"{side}.{name}"
    if not isinstance(name, str) or not name:
        raise DatasetProblem(f"{side} names must be non-empty strings, got {name!r}")
    if not isinstance(raw, dict):
        raise DatasetProblem(
            f"{where} must be a mapping such as {{type: sequence, column: text}}"
        )
    kind = raw.get("type")
    allowed = SIDE_TYPES[side]
    if kind not in allowed:
        hint = did_you_mean(str(kind), allowed, listed=True) if kind else ""
        if kind == "survival":
            hint = "; survival is an output type only"
        raise DatasetProblem(
            f"{where} needs a type, one of {', '.join(allowed)}; got {kind!r}{hint}"
        )
    _check_keys(raw, ENTRY_KEYS[kind], where)
    for key in REQUIRED_KEYS[kind]:
        if key not in raw:
            raise DatasetProblem(f"{where} ({kind}) needs {key!r}")
    return Entry(
        side=side,
        name=name,
        type=kind,
        column=_opt_name(raw, "column", where),
        columns=_names(raw, "columns", where),
        categorical=frozenset(_names(raw, "categorical", where)),
        size=_ints(raw, "size", where, length=2),
        mode=_mode(raw, where),
        shape=_ints(raw, "shape", where),
        chunk_words=_opt_int(raw, "chunk_words", where),
        min_words=_opt_int(raw, "min_words", where) or 1,
        event_column=_opt_name(raw, "event_column", where),
        time_column=_opt_name(raw, "time_column", where),
    )


def _opt_name(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise DatasetProblem(f"{where}.{key} must be a column name, got {value!r}")
    return value


def _names(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise DatasetProblem(
            f"{where}.{key} must be a non-empty list of column names, got {value!r}"
        )
    return tuple(value)


def _opt_int(raw: dict[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value < 1
    ):
        raise DatasetProblem(
            f"{where}.{key} must be a whole number >= 1, got {value!r}"
        )
    return value


def _ints(
    raw: dict[str, Any], key: str, where: str, length: int | None = None
) -> tuple[int, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or (length is not None and len(value) != length)
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        )
    ):
        wanted = "[height, width]" if length == 2 else "a list of positive integers"
        raise DatasetProblem(f"{where}.{key} must be {wanted}, got {value!r}")
    return tuple(value)


def _mode(raw: dict[str, Any], where: str) -> str | None:
    mode = raw.get("mode")
    if mode is not None and mode not in MODES:
        raise DatasetProblem(
            f"{where}.mode must be one of {', '.join(MODES)}, got {mode!r}"
        )
    return mode


def _same_image(given: Entry, target: Entry) -> bool:
    """Whether an input and an output of one name are the same image, as a
    diffusion model wants them (EIR pairs the two by name)."""
    return (given.type, given.column, given.size, given.mode) == (
        "image",
        target.column,
        target.size,
        target.mode,
    ) and target.type == "image"


def _check_entries(entries: list[Entry]) -> None:
    """Rules that span entries: names, word chunks and categorical columns."""
    inputs = {e.name: e for e in entries if e.side == "inputs"}
    for entry in entries:
        twin = inputs.get(entry.name) if entry.side == "outputs" else None
        if twin is not None and not _same_image(twin, entry):
            raise DatasetProblem(
                f"{entry.name!r} is both an input and an output; only an image "
                "may be both (a diffusion model's input and target), reading the "
                "same column with the same size and mode; a sequence output is "
                "fed back as an input by itself"
            )
        extra = entry.categorical - set(entry.columns)
        if extra:
            raise DatasetProblem(
                f"{entry.where}.categorical names {sorted(extra)[0]!r}, which is "
                "not in its columns"
            )
        if entry.min_words != 1 and not entry.chunk_words:
            raise DatasetProblem(f"{entry.where}.min_words needs chunk_words")
        if entry.chunk_words and entry.min_words > entry.chunk_words:
            raise DatasetProblem(
                f"{entry.where}.min_words ({entry.min_words}) is more than "
                f"chunk_words ({entry.chunk_words}); no chunk could be kept"
            )
    chunked = [e for e in entries if e.chunk_words]
    if len(chunked) > 1:
        raise DatasetProblem(
            f"chunk_words is set on {chunked[0].where} and {chunked[1].where}; at "
            "most one entry may split its column into word chunks (every entry "
            "that reads that column gets the chunk's text)"
        )


# =============================================================================
# Files: what the spec's `files` name
# =============================================================================
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
            "pip install it (hf:// needs huggingface_hub, s3:// needs s3fs; see "
            "requirements-datasets.txt)"
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
        url = _join(spec.base, pattern)
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


def _join(base: str, pattern: str) -> str:
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
# Values: one entry of one row, encoded for EIR
# =============================================================================
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_value(value: Any, entry: Entry, folder: str) -> str:
    """An image entry's value: PNG bytes pass through as they are (8-bit
    grey, RGB or RGBA, no resize, no change of mode); anything else (JPEG,
    other PNGs) is decoded and written again as PNG."""
    data = _image_bytes(value, folder)
    from PIL import Image

    if entry.size is None and data.startswith(PNG_SIGNATURE):
        try:
            channels = png_header(data)[2]
        except ValueError:
            channels = 0
        if channels and entry.mode in (None, IMAGE_MODES[channels]):
            with Image.open(io.BytesIO(data)) as image:
                image.verify()  # chunk checksums: a corrupt file fails here
            return _b64(data)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        picture = image.convert(entry.mode or _eir_mode(image))
    if entry.size is not None:
        height, width = entry.size
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return _b64(out.getvalue())


def _eir_mode(image: Any) -> str:
    """The EIR mode (L, RGB, RGBA) closest to a Pillow image's mode."""
    if image.mode in ("L", "RGB", "RGBA"):
        return str(image.mode)
    if image.mode in ("LA", "PA") or "transparency" in image.info:
        return "RGBA"
    return "L" if image.mode in ("1", "I", "I;16", "F") else "RGB"


def _image_bytes(value: Any, folder: str) -> bytes:
    """The file bytes of a binary value or of Hugging Face's Image struct
    {bytes, path} (a path alone is read, relative to the data file)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path:
            fs, where = filesystem(path if "://" in path else _join(folder, path))
            data = fs.cat_file(where)
        value = data
    if not isinstance(value, bytes) or not value:
        raise ValueError(f"no image bytes in the row (got {type(value).__name__})")
    return value


def tabular_value(value: Any, categorical: bool) -> Any:
    """A cell as EIR wants it: text for categories, a number for the rest."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    if categorical and isinstance(value, int | float):
        return str(value)
    return value


def chunk_count(text: str | None, words: int, min_words: int) -> int:
    """Samples of one document under `chunk_words: words`: its full chunks
    of `words` whitespace-separated words, plus the rest if it has at least
    `min_words` words."""
    if not text:
        return 0
    full, rest = divmod(len(text.split()), words)
    return full + (1 if rest >= min_words else 0)


def info_entry(entry: Entry, shape: tuple[int, ...] | None) -> dict[str, Any]:
    """The `getInfo` item of an entry: its type, an array's `shape`, and an
    image's shape and mode when both `size` and `mode` fix them."""
    item: dict[str, Any] = {"type": entry.type}
    if entry.type == "array" and shape:
        item["shape"] = list(shape)
    if entry.type == "image" and entry.size and entry.mode:
        channels = {mode: c for c, mode in IMAGE_MODES.items()}[entry.mode]
        item["shape"], item["mode"] = [*entry.size, channels], entry.mode
    return item


def encode_entry(
    entry: Entry,
    cell: Callable[[str], Any],
    shape: tuple[int, ...] | None,
    folder: str,
) -> Any:
    """The EIR value of `entry` for one row, given `cell(column)`, the row's
    value of a column; `shape` is an array entry's, `folder` the data file's
    (for images stored as paths)."""
    if entry.type == "sequence":
        text = cell(str(entry.column))
        if not isinstance(text, str):
            raise ValueError(f"column {entry.column!r} is {text!r}, not text")
        return text
    if entry.type == "tabular":
        values = {
            c: tabular_value(cell(c), c in entry.categorical) for c in entry.columns
        }
        return tabular_row(values, entry.where)
    if entry.type == "image":
        return image_value(cell(str(entry.column)), entry, folder)
    if entry.type == "array":
        return encode_array(cell(str(entry.column)), shape)
    event, time = cell(str(entry.event_column)), cell(str(entry.time_column))
    time = float(time) if isinstance(time, Decimal) else time
    return survival_row(event, time, str(entry.event_column), str(entry.time_column))


# =============================================================================
# Columns of a data file against the entries
# =============================================================================
def check_schema(schema: pa.Schema, entries: tuple[Entry, ...], label: str) -> None:
    """DatasetProblem unless `schema` has every column the entries read, each
    of a type its entry can encode. `label` names the file."""
    names = list(schema.names)
    for entry in entries:
        for column in entry.reads:
            if column not in names:
                raise DatasetProblem(
                    f"column {column!r} ({entry.where}) is not in {label}; its "
                    f"columns: {', '.join(names) or 'none'}{_close(column, names)}"
                )
            problem = type_problem(entry, column, schema.field(column).type)
            if problem:
                raise DatasetProblem(
                    f"column {column!r} ({entry.where}, {entry.type}) in {label} "
                    f"{problem}"
                )


def _close(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Arrow type families, by the names of their `pyarrow.types.is_*` tests (a
# test this pyarrow lacks is a type it cannot produce)
NUMBERS = ("integer", "floating", "decimal")
TEXTS = ("string", "large_string", "string_view")
BYTES = ("binary", "large_binary", "binary_view", "fixed_size_binary")
LISTS = ("list", "large_list", "fixed_size_list", "list_view", "large_list_view")
OTHERS = ("boolean", "temporal")


def _is(dtype: pa.DataType, *families: tuple[str, ...]) -> bool:
    """Whether `dtype` (or a dictionary's values) is of one of `families`."""
    import pyarrow as pa

    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    tests = (getattr(pa.types, f"is_{name}", None) for f in families for name in f)
    return any(test is not None and test(dtype) for test in tests)


def type_problem(entry: Entry, column: str, dtype: pa.DataType) -> str:
    """Why a column of Arrow type `dtype` cannot feed `entry` ("" if it can)."""
    holds = f"holds {dtype}"
    if entry.type == "sequence":
        return "" if _is(dtype, TEXTS) else f"{holds}; a sequence needs text"
    if entry.type == "image":
        if _is(dtype, BYTES) or (
            _is(dtype, ("struct",))
            and dtype.get_field_index("bytes") >= 0
            and _is(dtype.field("bytes").type, BYTES)
        ):
            return ""
        return (
            f"{holds}; an image column holds PNG or JPEG bytes, or Hugging Face's "
            "Image struct {bytes, path}"
        )
    if entry.type == "array":
        leaf = dtype
        while _is(leaf, LISTS):
            leaf = leaf.value_type
        if leaf is not dtype and _is(leaf, NUMBERS):
            return ""
        return f"{holds}; an array column holds lists of numbers"
    if entry.type == "survival" and column == entry.time_column:
        return "" if _is(dtype, NUMBERS) else f"{holds}; survival time is a number"
    if entry.type == "survival":
        ok = _is(dtype, ("boolean", "integer"), TEXTS)
        return "" if ok else f"{holds}; an event is 0/1"
    ok = _is(dtype, NUMBERS, TEXTS, OTHERS)
    return "" if ok else f"{holds}; a tabular column holds numbers, text or bools"


def fixed_shape(dtype: pa.DataType) -> tuple[int, ...] | None:
    """The shape an array column's Arrow type fixes, if it is nested
    fixed-size lists all the way down; else None."""
    import pyarrow as pa

    shape: list[int] = []
    while pa.types.is_fixed_size_list(dtype):
        shape.append(dtype.list_size)
        dtype = dtype.value_type
    if not shape or _is(dtype, LISTS) or 0 in shape:
        return None
    return tuple(shape)
