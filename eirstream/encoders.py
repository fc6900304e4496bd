"""Encode your own data the way EIR's streaming client reads it (standard library).

EIR's `eirtrain` (eir-dl 0.25.0) accepts six modalities over the stream
(its `bytes` input type is not among them: the streaming setup cannot store
it). Each value in a sample is plain JSON; binary ones travel as base64 text:

==========  ==========================================  =======================
modality    what goes on the wire                       helper here
==========  ==========================================  =======================
sequence    the text itself (a string)                  (none needed)
tabular     {column: string (categorical) or number}    `tabular_row`
array       base64 of float32 values, C order           `encode_array`
omics       base64 of one byte (0/1) per bool, 2-D       `encode_omics`,
            (EIR's layout: 4 rows x SNPs, one-hot)      `one_hot_genotypes`
image       base64 of a PNG file (grey, RGB or RGBA)    `encode_image`
survival    {event column: "0"/"1", time column: num}   `survival_row`
==========  ==========================================  =======================

Binary values are little-endian (what numpy uses on every common platform).
Array and omics entries in `getInfo` must carry their `shape`; an image entry
may carry `shape` ([height, width, channels]) and `mode` ("L", "RGB", "RGBA").

Where a value sits in a sample also depends on the modality: every input is
`inputs[name] = value`; tabular and survival outputs are
`target_labels[name] = {column: value}`; array, image and sequence outputs are
nested once more, `target_labels[name] = {name: value}`, and a sequence output
is repeated as `inputs[name]` (EIR feeds it back in to generate it).
eirformat.py applies those rules and checks a source's output before EIR
sees it. `eirstream --source module:factory --check` checks a source.
"""

from __future__ import annotations

import base64
import math
import struct
import sys
import zlib
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> PIL mode name
FLOAT32_MAX = 3.4028234663852886e38
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type
_PNG_CHANNELS = {0: 1, 2: 3, 6: 4}
_SHOWN = 60  # characters of an offending value quoted in an error


def show(value: Any) -> str:
    """`value` as quoted in an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


_LISTS = (list, tuple)


def _is_sequence(value: Any) -> bool:
    if type(value) in _LISTS:
        return True
    return isinstance(value, Sequence) and not isinstance(
        value, str | bytes | bytearray
    )


def _position(path: Sequence[int]) -> str:
    return "".join(f"[{i}]" for i in path)


# =============================================================================
# Nested lists -> shape and flat values
# =============================================================================
def infer_shape(values: Any, what: str = "array") -> tuple[int, ...]:
    """The shape of a rectangular nested list; ValueError if it is ragged."""
    return _flatten(values, what)[0]


def _flatten(values: Any, what: str) -> tuple[tuple[int, ...], list[Any]]:
    """(shape, leaves in C order) of a rectangular nested list of scalars."""
    if not _is_sequence(values):
        raise ValueError(
            f"{what} must be a nested list (or tuple) of values, got "
            f"{type(values).__name__} {show(values)}"
        )
    shape: list[int] = []
    probe: Any = values
    while _is_sequence(probe):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    if 0 in shape:
        raise ValueError(f"{what} has no values (shape {tuple(shape)})")
    leaves: list[Any] = []
    depth = len(shape)

    def walk(node: Any, path: list[int]) -> None:
        level = len(path)
        if (
            level == depth - 1
            and type(node) in _LISTS
            and len(node) == shape[level]
            and not any(type(leaf) in _LISTS for leaf in node)
        ):
            leaves.extend(node)  # fast path: a row of plain values
            return
        if level == depth:
            if _is_sequence(node):
                raise ValueError(
                    f"ragged {what}: {what}{_position(path)} is a list, but "
                    f"{what}{_position([0] * level)} is a single value"
                )
            leaves.append(node)
            return
        if not _is_sequence(node):
            raise ValueError(
                f"ragged {what}: {what}{_position(path)} is a single value "
                f"({show(node)}), but {what}{_position([0] * level)} is a list "
                f"of {shape[level]}"
            )
        if len(node) != shape[level]:
            raise ValueError(
                f"ragged {what}: {what}{_position(path)} has {len(node)} "
                f"entries, but {what}{_position([0] * level)} has {shape[level]}"
            )
        for i, child in enumerate(node):
            walk(child, [*path, i])

    walk(values, [])
    return tuple(shape), leaves


def _shaped(
    values: Any, shape: Sequence[int] | None, what: str
) -> tuple[tuple[int, ...], list[Any]]:
    """Shape and flat values; `values` may be flat when `shape` is given."""
    found, leaves = _flatten(values, what)
    if shape is None:
        return found, leaves
    wanted = tuple(shape)
    if not wanted or any(
        not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in wanted
    ):
        raise ValueError(
            f"shape must be a list of positive integers, got {show(shape)}"
        )
    if found == wanted or (len(found) == 1 and found[0] == math.prod(wanted)):
        return wanted, leaves
    raise ValueError(
        f"{what} has shape {found} ({len(leaves)} values), which does not fit the "
        f"declared shape {wanted} ({math.prod(wanted)} values)"
    )


def _index(flat_position: int, shape: Sequence[int]) -> str:
    path = []
    for size in reversed(shape):
        path.append(flat_position % size)
        flat_position //= size
    return _position(list(reversed(path)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# =============================================================================
# Array and omics
# =============================================================================
def array_bytes(values: Any, shape: Sequence[int] | None = None) -> bytes:
    """Raw float32 bytes (little-endian, C order) of a nested list of numbers."""
    found, leaves = _shaped(values, shape, "array")
    for position, value in enumerate(leaves):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(
                f"array{_index(position, found)} must be a number, got "
                f"{type(value).__name__} {show(value)}"
            )
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise ValueError(
                f"array{_index(position, found)} is {value!r}, which float32 "
                "cannot hold as a finite number"
            )
    packed = array("f", leaves)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def encode_array(values: Any, shape: Sequence[int] | None = None) -> str:
    """An `array` value: base64 of float32 values in C order.

    `values` is a nested list whose shape is inferred (ragged -> ValueError),
    or a flat list when `shape` is given. Put the same shape in `getInfo`.
    """
    return _b64(array_bytes(values, shape))


def encode_omics(values: Any, shape: Sequence[int] | None = None) -> str:
    """An `omics` value: base64 of one byte per boolean (0 or 1), C order.

    EIR reads omics as a 2-D array; its convention is one-hot genotypes, four
    rows (0, 1, 2 copies of the alternative allele, missing) by SNPs, which
    `one_hot_genotypes` builds. Entries must be bools or the integers 0/1.
    """
    found, leaves = _shaped(values, shape, "omics")
    if len(found) != 2:
        raise ValueError(
            f"omics must be 2-D (EIR's layout: 4 rows x SNPs), got shape {found}"
        )
    out = bytearray(len(leaves))
    for position, value in enumerate(leaves):
        if (
            value is True
            or value is False
            or (isinstance(value, int) and value in (0, 1))
        ):
            out[position] = 1 if value else 0
        else:
            raise ValueError(
                f"omics{_index(position, found)} must be a bool (or 0/1), got "
                f"{type(value).__name__} {show(value)}"
            )
    return _b64(bytes(out))


def one_hot_genotypes(genotypes: Sequence[int | None]) -> list[list[bool]]:
    """EIR's omics layout for SNP genotypes: 4 rows x len(genotypes).

    A genotype is the count of the alternative allele (0, 1 or 2); None (or 3)
    is missing. Column j has True in row genotypes[j] and False elsewhere.
    """
    if not _is_sequence(genotypes) or not genotypes:
        raise ValueError(
            f"genotypes must be a non-empty list of 0, 1, 2 or None, got "
            f"{show(genotypes)}"
        )
    rows = [[False] * len(genotypes) for _ in range(4)]
    for j, genotype in enumerate(genotypes):
        row = 3 if genotype is None else genotype
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row <= 3:
            raise ValueError(
                f"genotypes[{j}] must be 0, 1, 2 or None (missing), got "
                f"{show(genotype)}"
            )
        rows[row][j] = True
    return rows


# =============================================================================
# Images (PNG, 8 bits per channel)
# =============================================================================
def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(kind: int, row: bytes, prior: bytes, bpp: int) -> bytes:
    """One scanline filtered with PNG filter `kind` (0 None ... 4 Paeth).

    Each byte x becomes x minus a prediction from a (the byte one pixel to the
    left), b (the byte above) and c (above-left), modulo 256.
    """
    if kind == 0:
        return row
    if kind == 2:
        return bytes((x - b) & 0xFF for x, b in zip(row, prior, strict=True))
    left = bytes(bpp) + row[:-bpp]
    if kind == 1:
        return bytes((x - a) & 0xFF for x, a in zip(row, left, strict=True))
    if kind == 3:
        return bytes(
            (x - ((a + b) >> 1)) & 0xFF
            for x, a, b in zip(row, left, prior, strict=True)
        )
    above_left = bytes(bpp) + prior[:-bpp]
    return bytes(
        (x - _paeth(a, b, c)) & 0xFF
        for x, a, b, c in zip(row, left, prior, above_left, strict=True)
    )


# Byte -> its magnitude read as a signed byte, for libpng's filter heuristic:
# the filter whose output has the smallest sum of magnitudes usually
# compresses best.
_MAGNITUDE = bytes(v if v < 128 else 256 - v for v in range(256))


def _cost(filtered: bytes) -> int:
    return sum(filtered.translate(_MAGNITUDE))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type and data."""
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def image_shape(pixels: Any) -> tuple[int, int, int]:
    """(height, width, channels) of pixel rows, as `getInfo` wants it."""
    shape, _ = _image_leaves(pixels)
    return shape


def _image_leaves(pixels: Any) -> tuple[tuple[int, int, int], list[Any]]:
    given, leaves = _flatten(pixels, "image")
    shape = (*given, 1) if len(given) == 2 else given
    if len(shape) != 3 or shape[2] not in IMAGE_MODES:
        raise ValueError(
            "image must be rows of pixels: height x width (grey) or height x "
            f"width x channels with 1, 3 or 4 channels; got shape {given}"
        )
    for position, value in enumerate(leaves):
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not (0 <= value <= 255)
        ):
            raise ValueError(
                f"image{_index(position, given)} must be an integer 0..255, got "
                f"{type(value).__name__} {show(value)}"
            )
    return (shape[0], shape[1], shape[2]), leaves


def png_bytes(pixels: Any, png_filter: int | None = None) -> bytes:
    """A PNG file (8-bit grey, RGB or RGBA) of pixel rows.

    `pixels[y][x]` is an integer 0..255 (grey) or a list of 3 (RGB) or 4 (RGBA)
    integers. `png_filter` picks the PNG row filter: None chooses per row
    (smaller files), 0..4 forces one (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth).
    """
    if png_filter is not None and png_filter not in range(5):
        raise ValueError(f"png_filter must be None or 0..4, got {show(png_filter)}")
    (height, width, channels), leaves = _image_leaves(pixels)
    stride = width * channels
    raw = bytes(leaves)
    prior = bytes(stride)
    scanlines = bytearray()
    for y in range(height):
        row = raw[y * stride : (y + 1) * stride]
        if png_filter is None:
            kind, filtered = min(
                ((k, _filter_row(k, row, prior, channels)) for k in range(5)),
                key=lambda pair: _cost(pair[1]),
            )
        else:
            kind, filtered = png_filter, _filter_row(png_filter, row, prior, channels)
        scanlines.append(kind)
        scanlines += filtered
        prior = row
    header = struct.pack(
        ">IIBBBBB", width, height, 8, _PNG_COLOR_TYPES[channels], 0, 0, 0
    )
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(scanlines), 9))
        + _png_chunk(b"IEND", b"")
    )


def encode_image(pixels: Any, png_filter: int | None = None) -> str:
    """An `image` value: base64 of the PNG of `pixels` (see `png_bytes`)."""
    return _b64(png_bytes(pixels, png_filter))


def png_header(data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's header; ValueError if not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file (wrong signature or no IHDR chunk first)")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or color not in _PNG_CHANNELS:
        raise ValueError(
            f"PNG must be 8-bit grey, RGB or RGBA; got bit depth {depth}, colour "
            f"type {color}"
        )
    return height, width, _PNG_CHANNELS[color]


# =============================================================================
# Tabular and survival
# =============================================================================
def tabular_row(row: Mapping[str, Any], what: str = "tabular") -> dict[str, Any]:
    """A `tabular` value, checked: {column name: string or number}.

    Send categorical values as strings and continuous ones as numbers: EIR
    reads the setup samples back from CSV with categorical columns as text,
    so an integer or bool category later fails as an unseen label. Every
    column must be named in the config (input_cat_columns / input_con_columns,
    or target_cat_columns / target_con_columns). Missing values (None, NaN)
    are rejected: EIR's streaming path does not impute tabular values.
    Returns a plain dict copy.
    """
    if not isinstance(row, Mapping):
        raise ValueError(
            f"{what} must be a dict of column -> value, got "
            f"{type(row).__name__} {show(row)}"
        )
    if not row:
        raise ValueError(f"{what} has no columns")
    for column, value in row.items():
        if not isinstance(column, str) or not column:
            raise ValueError(
                f"{what} column names must be non-empty strings, got {show(column)}"
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(
                f"{what}[{column!r}] must be a string (categorical) or a number "
                f"(continuous), got {type(value).__name__} {show(value)}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(
                f"{what}[{column!r}] is {value!r}; missing or infinite values "
                "cannot be streamed"
            )
    return dict(row)


def survival_row(
    event: Any, time: Any, event_column: str = "Event", time_column: str = "Time"
) -> dict[str, Any]:
    """A `survival` value: {event_column: "0"/"1", time_column: time}.

    `event` is whether the event happened (1, True, "1") or the observation
    was censored (0, False, "0"); it is sent as the string "1"/"0", which EIR
    label-encodes to 1/0. `time` is a finite number >= 0. Name the same
    columns in the output config's event_columns / time_columns.
    """
    if event in (0, 1, "0", "1") and not isinstance(event, float):
        flag = "1" if event in (1, "1") else "0"  # True == 1, False == 0
    else:
        raise ValueError(
            f"survival event must be 0/1 (or False/True, '0'/'1'), got "
            f"{type(event).__name__} {show(event)}"
        )
    if (
        not isinstance(time, int | float)
        or isinstance(time, bool)
        or not math.isfinite(time)
        or time < 0
    ):
        raise ValueError(
            f"survival time must be a finite number >= 0, got {show(time)}"
        )
    if event_column == time_column:
        raise ValueError(f"event and time columns must differ, both {event_column!r}")
    return tabular_row({event_column: flag, time_column: time}, "survival")
