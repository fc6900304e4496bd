"""One entry of one row, encoded for EIR; and which Arrow types each entry reads.

* `encode_entry` turns one row's cells into an entry's EIR value: text for a
  sequence, a row of tabular or survival values, an array as base64 float32,
  an image as base64 PNG (PNG bytes pass through, anything else is decoded
  and written again).
* `info_entry` is an entry's item of the `getInfo` payload.
* `check_schema` checks that a data file's Arrow schema has every column an
  entry reads, of a type that entry can encode; `fixed_shape` is the shape an
  array column's type fixes.

Pillow and pyarrow are imported when first used (`DatasetSource` requires
them first, so a missing one is reported by name).
"""

from __future__ import annotations

import base64
import difflib
import io
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from eirstream.datasets.files import filesystem, join_path
from eirstream.datasets.spec import DatasetProblem, Entry
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
                image.verify()  # PNG chunk checksums: a corrupt file fails here
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
            fs, where = filesystem(path if "://" in path else join_path(folder, path))
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
