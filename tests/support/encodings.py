"""Independent ways to read the encoders' output back, and pixels to encode.

Written from the PNG specification and the float32 layout, sharing nothing
with eirstream.encoders: tests/unit/test_encoders.py decodes every modality
with them, and tests/eirtrain/test_eir_decoders.py compares EIR's own
deserializers with the pixels and values given.
"""

import base64
import random
import struct
import zlib
from typing import Any


def decode_floats(text: str) -> list[float]:
    """The float32 values of an `array` value (base64, little-endian)."""
    data = base64.b64decode(text, validate=True)
    assert len(data) % 4 == 0, len(data)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def as_float32(value: float) -> float:
    """`value` rounded to the nearest float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def flat(nested: Any) -> list[Any]:
    """The leaves of nested lists, in C order."""
    if isinstance(nested, list | tuple):
        return [leaf for item in nested for leaf in flat(item)]
    return [nested]


def decode_png(text_or_bytes: str | bytes) -> dict[str, Any]:
    """{'width', 'height', 'channels', 'pixels' (rows of tuples), 'filters'}."""
    data = (
        base64.b64decode(text_or_bytes, validate=True)
        if isinstance(text_or_bytes, str)
        else text_or_bytes
    )
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    pos, png_chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        png_chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert png_chunks[0][0] == b"IHDR" and png_chunks[-1] == (b"IEND", b"")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", png_chunks[0][1]
    )
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3, 6: 4}[color]
    raw = zlib.decompress(
        b"".join(body for kind, body in png_chunks if kind == b"IDAT")
    )
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    rows, filters, prior = [], [], [0] * stride
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        out: list[int] = []
        for i, x in enumerate(line):
            a = out[i - channels] if i >= channels else 0
            b = prior[i]
            c = prior[i - channels] if i >= channels else 0
            if kind == 0:
                guess = 0
            elif kind == 1:
                guess = a
            elif kind == 2:
                guess = b
            elif kind == 3:
                guess = (a + b) // 2
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                guess = a if pa <= pb and pa <= pc else b if pb <= pc else c
            else:
                raise AssertionError(f"unknown filter type {kind}")
            out.append((x + guess) % 256)
        filters.append(kind)
        rows.append([tuple(out[i : i + channels]) for i in range(0, stride, channels)])
        prior = out
    return {
        "width": width,
        "height": height,
        "channels": channels,
        "pixels": rows,
        "filters": filters,
    }


def pixel_tuples(pixels: Any) -> list[list[tuple[int, ...]]]:
    """Pixel rows with every pixel as a tuple of channels (grey: one)."""
    return [
        [tuple(p) if isinstance(p, list | tuple) else (p,) for p in row]
        for row in pixels
    ]


def random_image(rng: random.Random, height: int, width: int, channels: int) -> Any:
    """Noise: rows of grey ints, or of lists of `channels` ints."""
    if channels == 1:
        return [[rng.randrange(256) for _ in range(width)] for _ in range(height)]
    return [
        [[rng.randrange(256) for _ in range(channels)] for _ in range(width)]
        for _ in range(height)
    ]


def gradient_image(height: int, width: int, channels: int) -> list[Any]:
    """Smooth content, where the predicting filters beat filter 0."""
    return [
        [
            [(3 * x + 5 * y + 40 * c) % 256 for c in range(channels)]
            for x in range(width)
        ]
        for y in range(height)
    ]
