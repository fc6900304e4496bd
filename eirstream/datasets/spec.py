"""The `--dataset` spec: what a YAML file says, checked.

    files: data/*.parquet       # a path, glob, folder or a list; fsspec URLs too
    inputs:
      caption: {type: sequence, column: text}
      painting: {type: image, column: image, size: [128, 128]}
      clinical: {type: tabular, columns: [age, bmi, sex]}
    outputs:
      style: {type: tabular, columns: [style]}

`load_spec` reads and checks the file and returns a `DatasetSpec`: its
`files` as written and one `Entry` per input and output. What the files hold
is read by the modules above this one (files, values, index, source).

Every problem with the spec or the files is a `DatasetProblem` (a
ValueError) with a one-line message; `source.load_dataset` puts `--dataset
<spec path>:` in front of it. `require` imports an optional package (PyYAML,
fsspec, pyarrow, Pillow) when it is needed, so a missing one is reported as
such, with the extra that installs it.
"""

from __future__ import annotations

import difflib
import importlib
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

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
DEFAULT_CACHE_MB = 256
# pip names of the optional packages, by module name
PACKAGES = {"pyarrow": "pyarrow", "yaml": "PyYAML", "fsspec": "fsspec", "PIL": "Pillow"}
INSTALL = "pip install 'eirstream[datasets]'"  # what installs every one of them


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
            f"which is not installed; {INSTALL}"
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
