"""The state file's format: what `--state PATH` writes, read back and checked.

The file is lines of UTF-8 text. Each line is a JSON object, a tab, the
CRC-32 of the JSON's bytes in 8 hex digits, and a newline, so a line cut
short or changed is known as such. The first line is a *snapshot*:

    {"format": "eirstream-state", "version": 1,
     "settings": {...what the samples and their order depend on...},
     "streams": {"<name>": {"progress": {...}, "validation": "<ids>"}, ...}}

Every later line is an *update* of one stream, which replaces what the
lines before said of it:

    {"stream": "<name>", "progress": {...}}
    {"stream": "<name>", "validation": "<ids>", "progress": {...}}

A progress object is a `Progress` (progress.py): `epoch`, `position`,
`front` (indices), `unsent` (takes not sent: [front indices, start epoch,
start position, stop epoch, stop position]), `sent`, `sent_in_pass`,
`rewinds`, and `over`: true when rule 7 ended the pass (left out when
false; a file without it reads as false). Validation ids are kept as
sample indices, sorted, their differences as unsigned 64-bit little-endian
integers, zlib-compressed and base64-encoded: a few bytes an id.

Reading (`read_state`) checks everything and raises `StateError`, one line
naming what is wrong and how to start afresh: a file from a newer format
version, settings that differ from the server's (each named, on either
side), a corrupt or truncated line, a file of another kind (its first line
neither names the format nor looks like a state file's line). One
exception: a last line without its newline is what a write cut short by a
machine crash leaves; it is dropped and the state before it used
(`ReadState.dropped`). statefile.py does the writing; this module no I/O.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any

from eirstream.progress import Progress, StreamState, Take

FORMAT = "eirstream-state"
VERSION = 1
AFRESH = "to start afresh, give another --state path or delete the file"
NOT_STATE = "it is not an eirstream state file (line 1)"

# What every state file's first line holds, and what any whole line looks
# like: a first line with neither is some other file's, not a corrupt one
# (one changed byte cannot take both away).
_MARK = b'"format":"%s"' % FORMAT.encode()
_BEGINNING = b"{" + _MARK  # how a state file begins
_LINE = re.compile(rb"\{.*\}\t[0-9a-f]{8}", re.DOTALL)
_UNSET = object()


class StateError(ValueError):
    """A state file this server cannot use; the text is one line."""


# -- one line ------------------------------------------------------------------
def encode_line(record: Mapping[str, Any]) -> bytes:
    """One line of the file: JSON, a tab, its CRC-32, a newline."""
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def decode_line(line: bytes, number: int) -> dict[str, Any]:
    """The record of a whole line (its newline stripped), or StateError."""
    body, tab, crc = line.rpartition(b"\t")
    if not tab or len(crc) != 8 or b"%08x" % zlib.crc32(body) != crc:
        raise StateError(f"line {number} is corrupt (its checksum does not match)")
    try:
        record = json.loads(body)
    except ValueError:
        raise StateError(f"line {number} is corrupt (not JSON)") from None
    if not isinstance(record, dict):
        raise StateError(f"line {number} is corrupt (not a JSON object)")
    return record


# -- the parts of a record ------------------------------------------------------
def encode_progress(progress: Progress) -> dict[str, Any]:
    encoded = {
        "epoch": progress.epoch,
        "position": progress.position,
        "front": list(progress.front),
        "unsent": [[list(t.front), *t.start, *t.stop] for t in progress.unsent],
        "sent": progress.served_total,
        "sent_in_pass": progress.served_in_pass,
        "rewinds": progress.rewinds,
    }
    if progress.over:
        encoded["over"] = True
    return encoded


_OVER = ',"over":true'


def progress_line(name: str, progress: Progress) -> bytes:
    """The update line of a stream's progress: the bytes that
    `encode_line({"stream": name, "progress": encode_progress(progress)})`
    gives, written without building the JSON's dicts, because one goes
    out before every reply."""
    p = progress
    unsent = ",".join(
        f"[[{','.join(map(str, t.front))}],{t.start[0]},{t.start[1]},"
        f"{t.stop[0]},{t.stop[1]}]"
        for t in p.unsent
    )
    body = (
        f'{{"stream":{json.dumps(name)},"progress":{{"epoch":{p.epoch},'
        f'"position":{p.position},"front":[{",".join(map(str, p.front))}],'
        f'"unsent":[{unsent}],"sent":{p.served_total},'
        f'"sent_in_pass":{p.served_in_pass},"rewinds":{p.rewinds}'
        f"{_OVER if p.over else ''}}}}}"
    ).encode()
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def decode_progress(value: Any) -> Progress:
    """A `Progress` from its JSON; ValueError (or TypeError) if malformed."""
    counts = [value[key] for key in ("epoch", "position", "sent", "sent_in_pass")]
    counts.append(value["rewinds"])
    front = value["front"]
    unsent = []
    for take in value["unsent"]:
        taken, *ends = take
        if len(ends) != 4:
            raise ValueError(f"an unsent take needs 5 parts, got {take!r}")
        unsent.append(Take(_indices(taken), (ends[0], ends[1]), (ends[2], ends[3])))
        counts += ends
    if not all(type(n) is int and n >= 0 for n in counts):
        raise ValueError("counts must be integers, 0 or more")
    over = value.get("over", False)
    if type(over) is not bool:
        raise ValueError(f"over must be true or false, got {over!r:.20}")
    epoch, position, sent, in_pass, rewinds = counts[:5]
    return Progress(
        epoch, position, _indices(front), tuple(unsent), sent, in_pass, rewinds, over
    )


def _indices(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(i) is int and i >= 0 for i in value):
        raise ValueError(f"expected a list of indices, got {value!r:.60}")
    return tuple(value)


def encode_indices(indices: tuple[int, ...]) -> str:
    """Sorted indices as text: their differences, packed and compressed."""
    steps = array("Q", (b - a for a, b in pairwise((0, *indices))))
    return base64.b64encode(zlib.compress(steps.tobytes())).decode()


def decode_indices(text: Any) -> tuple[int, ...]:
    """The indices `encode_indices` wrote; ValueError if malformed."""
    if not isinstance(text, str):
        raise ValueError("validation ids must be a string")
    steps = array("Q")
    steps.frombytes(zlib.decompress(base64.b64decode(text, validate=True)))
    return tuple(accumulate(steps))


# -- records ----------------------------------------------------------------------
def snapshot(
    settings: Mapping[str, Any], streams: Mapping[str, dict[str, Any]]
) -> bytes:
    """The first line: `settings` and each stream's encoded progress and
    validation ids ({"progress": ..., "validation": ...})."""
    return encode_line(
        {"format": FORMAT, "version": VERSION, "settings": settings, "streams": streams}
    )


def progress_update(name: str, progress: Progress) -> tuple[bytes, dict[str, Any]]:
    """An update line for a stream's progress, and the encoded progress."""
    encoded = encode_progress(progress)
    return encode_line({"stream": name, "progress": encoded}), encoded


def validation_update(name: str, indices: tuple[int, ...]) -> tuple[bytes, str]:
    """An update line for a stream's validation ids, and the encoded ids."""
    encoded = encode_indices(indices)
    return encode_line({"stream": name, "validation": encoded}), encoded


# -- reading ------------------------------------------------------------------------
@dataclass
class ReadState:
    """What a state file holds, checked."""

    streams: dict[str, StreamState] = field(default_factory=dict)
    # Encoded, as the file has them: for the next snapshot.
    encoded: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: bool = False  # a last line cut short was dropped


def read_state(data: bytes, settings: Mapping[str, Any]) -> ReadState:
    """Check and read a state file's bytes, written for a server with
    `settings`; StateError (one line) for anything this server cannot use."""
    if not data:
        raise StateError(f"the file is empty; {AFRESH}")
    lines = data.split(b"\n")
    read = ReadState(dropped=lines[-1] != b"")
    if read.dropped and len(lines) == 1:
        if not _BEGINNING.startswith(data[: len(_BEGINNING)]):
            raise StateError(NOT_STATE)
        raise StateError("the file is truncated: its first line has no end")
    try:
        head = decode_line(lines[0], 1)
    except StateError:
        if _MARK not in lines[0] and not _LINE.fullmatch(lines[0]):
            raise StateError(NOT_STATE) from None
        raise
    check_head(head, settings)
    streams = head.get("streams")
    if not isinstance(streams, dict):
        raise StateError("line 1 is corrupt (no streams)")
    for name, parts in streams.items():
        read.encoded[name] = _checked(parts, name, 1)
    for number, line in enumerate(lines[1:-1], start=2):
        update = decode_line(line, number)
        name = update.pop("stream", None)
        if not isinstance(name, str) or not update:
            raise StateError(f"line {number} is corrupt (not a stream's update)")
        merged = {**read.encoded.get(name, {}), **update}
        read.encoded[name] = _checked(merged, name, number)
    for name, parts in read.encoded.items():
        if "progress" not in parts:
            raise StateError(f"stream {name!r} has no progress: the file is corrupt")
        progress = decode_progress(parts["progress"])
        validation = decode_indices(parts.get("validation", encode_indices(())))
        read.streams[name] = StreamState(progress, validation)
    return read


def _checked(parts: Any, name: str, number: int) -> dict[str, Any]:
    """A stream's encoded parts, once they decode; StateError if not."""
    try:
        if not isinstance(parts, dict) or set(parts) - {"progress", "validation"}:
            raise ValueError("unknown parts")
        if "progress" in parts:
            decode_progress(parts["progress"])
        if "validation" in parts:
            decode_indices(parts["validation"])
    except (ValueError, TypeError, KeyError, zlib.error) as exc:
        raise StateError(f"line {number} is corrupt (stream {name!r}: {exc})") from None
    return dict(parts)


def check_head(head: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """StateError unless the first line is a snapshot this server reads,
    written for the same `settings`."""
    if head.get("format") != FORMAT:
        raise StateError(NOT_STATE)
    version = head.get("version")
    if type(version) is not int:
        raise StateError("line 1 is corrupt (no format version)")
    if version > VERSION:
        raise StateError(
            f"it was written by a newer eirstream (format version {version}; this "
            f"one reads version {VERSION}): upgrade eirstream, or {AFRESH}"
        )
    saved = head.get("settings")
    if not isinstance(saved, dict):
        raise StateError("line 1 is corrupt (no settings)")
    differ = [
        f"{key} {_shown(saved, key)} in the file, {_shown(settings, key)} here"
        for key in {**settings, **saved}
        if saved.get(key, _UNSET) != settings.get(key, _UNSET)
    ]
    if differ:
        raise StateError(
            "it was written for other settings (" + "; ".join(differ) + "): the "
            f"samples or their order would differ; {AFRESH}"
        )


def _shown(settings: Mapping[str, Any], key: str) -> str:
    """A setting's value as the error names it."""
    return repr(settings[key]) if key in settings else "not set"
