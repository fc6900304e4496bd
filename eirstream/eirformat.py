"""EIR's sample format: where each value of a sample goes, written as JSON in
one place, and the checks of a source's output before EIR sees it.

Every input is `inputs[name] = value`; tabular and survival outputs are
`target_labels[name] = {column: value}`; array, image and sequence outputs
are nested once more, `target_labels[name] = {name: value}`, and a sequence
output is repeated as `inputs[name]` (EIR feeds it back in to generate it).
`SampleLayout` applies those rules to one `getInfo` payload: `sample` builds
the dict, `json` writes the same sample as compact JSON text (what the
server sends), and `writer` makes the fast path of a source whose samples
always carry the same names (the tutorial's simulator uses it). Both
write through `SampleLayout.write`, every value escaped by `value_json`:
the text is ASCII (\\u escapes for the rest, lone surrogates too), so
whatever a value holds, eirtrain reads back exactly that. It is the text
json.dumps writes, as the server writes the dicts of a source that writes
no JSON of its own. `check_dataset_info` and `check_sample` raise
ValueError naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from eirstream.encoders import IMAGE_MODES, png_header, show, tabular_row

INPUT_TYPES = frozenset({"sequence", "tabular", "array", "omics", "image"})
OUTPUT_TYPES = frozenset({"sequence", "tabular", "array", "image", "survival"})
NESTED_OUTPUT_TYPES = frozenset({"array", "image", "sequence"})
SAMPLE_KEYS = ("inputs", "target_labels", "sample_id")


def value_json(value: Any) -> str:
    """One value as compact JSON text, exactly as `json.dumps(value,
    separators=(",", ":"))` writes it: any text is escaped (quotes,
    backslashes, control characters, non-ASCII as \\u escapes)."""
    if type(value) is str:  # the common case, without json.dumps' overhead
        return encode_basestring_ascii(value)
    return _encode(value)


_encode = json.JSONEncoder(separators=(",", ":")).encode


class SampleLayout:
    """EIR's layout of a sample for one `getInfo` payload: `sample` builds it
    as a dict, `json` writes it as the compact JSON text of that dict (what
    the server sends), `write` does so from values already written as JSON,
    and `writer` makes a fast `write` for samples that always carry the same
    names. This is the one place that knows where a value goes."""

    MAX_WRITERS = 64  # `json`'s writers kept, one per set of names in order

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.inputs = frozenset(info.get("inputs", {}))
        self.outputs = {
            name: entry.get("type") for name, entry in info.get("outputs", {}).items()
        }
        self._keys = {name: value_json(name) for name in (*self.inputs, *self.outputs)}
        self._writers: dict[tuple[tuple[str, ...], ...], Callable[..., str]] = {}

    def _check(self, inputs: Iterable[str], outputs: Iterable[str]) -> None:
        for name in inputs:
            if name not in self.inputs:
                raise ValueError(
                    f"input {name!r} is not in the dataset info's inputs "
                    f"({', '.join(sorted(self.inputs)) or 'none'})"
                )
        for name in outputs:
            if name not in self.outputs:
                raise ValueError(
                    f"output {name!r} is not in the dataset info's outputs "
                    f"({', '.join(sorted(self.outputs)) or 'none'})"
                )

    def sample(
        self, sample_id: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The sample as a dict, from encoded values keyed by name. Output
        values are nested per modality and sequence outputs are repeated
        under `inputs`; a name the info does not declare raises ValueError."""
        self._check(inputs, outputs)
        sample_inputs = dict(inputs)
        target_labels: dict[str, Any] = {}
        for name, value in outputs.items():
            kind = self.outputs[name]
            target_labels[name] = (
                {name: value} if kind in NESTED_OUTPUT_TYPES else value
            )
            if kind == "sequence":
                sample_inputs[name] = value
        return {
            "inputs": sample_inputs,
            "target_labels": target_labels,
            "sample_id": sample_id,
        }

    def json(
        self, sample_id: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> str:
        """`json.dumps(self.sample(...), separators=(",", ":"))`, written
        without building the dicts. Any text is escaped, so a value may hold
        quotes, backslashes, newlines or any Unicode."""
        names = (tuple(inputs), tuple(outputs))
        write = self._writers.get(names)
        if write is None:
            write = self.writer(*names)  # checks the names
            if len(self._writers) >= self.MAX_WRITERS:
                self._writers.clear()
            self._writers[names] = write
        return write(
            value_json(sample_id),
            *map(value_json, inputs.values()),
            *map(value_json, outputs.values()),
        )

    def write(
        self, sample_id: str, inputs: Mapping[str, str], outputs: Mapping[str, str]
    ) -> str:
        """The sample's JSON from its id and values already written as JSON
        text (by `value_json`), names unchecked. Each value's text is used
        as it is, once per place it goes: a caller may put a marker in a
        value's place and split the result, to fill it in later."""
        keys = self._keys
        given = dict(inputs)
        labels = []
        for name, text in outputs.items():
            key, kind = keys[name], self.outputs[name]
            if kind in NESTED_OUTPUT_TYPES:
                labels.append(f"{key}:{{{key}:{text}}}")
            else:
                labels.append(f"{key}:{text}")
            if kind == "sequence":
                given[name] = text
        written = ",".join([f"{keys[name]}:{text}" for name, text in given.items()])
        return (
            f'{{"inputs":{{{written}}},"target_labels":{{{",".join(labels)}}},'
            f'"sample_id":{sample_id}}}'
        )

    def writer(
        self, inputs: Sequence[str], outputs: Sequence[str]
    ) -> Callable[..., str]:
        """`write` made once for samples that always carry these inputs and
        outputs, in this order: a function of (sample_id, *input values,
        *output values), each already written as JSON text (by `value_json`),
        that returns the sample's JSON. Each call is one `str.format` of a
        template that `write` itself wrote, so the layout stays in `write`.
        A name the info does not declare, or named twice, raises ValueError."""
        for side, names in (("inputs", inputs), ("outputs", outputs)):
            if len(set(names)) != len(names):
                raise ValueError(f"{side} name a value twice: {list(names)}")
        self._check(inputs, outputs)
        marked = self.write(  # field 0 is the id, then the values in order
            _field(0),
            {name: _field(at) for at, name in enumerate(inputs, 1)},
            {name: _field(at) for at, name in enumerate(outputs, 1 + len(inputs))},
        )
        # Split at the marks: the text around the fields, then field numbers.
        pieces = marked.split(_MARK)
        template = "".join(
            "{" + piece + "}" if at % 2 else piece.replace("{", "{{").replace("}", "}}")
            for at, piece in enumerate(pieces)
        )
        return template.format


# A field's place in the text `write` writes for `writer`: JSON text that
# `value_json` wrote never holds a raw control character, so the mark cannot
# be part of a name or of the layout around the values.
_MARK = "\x00"


def _field(number: int) -> str:
    return f"{_MARK}{number}{_MARK}"


def build_sample(
    info: Mapping[str, Any],
    sample_id: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
) -> dict[str, Any]:
    """A sample as EIR expects it, from encoded values keyed by name: the
    same as `SampleLayout(info).sample(sample_id, inputs, outputs)`."""
    return SampleLayout(info).sample(sample_id, inputs, outputs)


def _is_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and bool(shape)
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    )


def _check_info_entry(kind: Any, entry: Mapping[str, Any], where: str) -> None:
    shape = entry.get("shape")
    if (kind in ("array", "omics") or shape is not None) and not _is_shape(shape):
        raise ValueError(
            f"{where} needs 'shape', a list of positive integers, got {show(shape)}"
        )
    if kind == "omics" and len(shape) != 2:
        raise ValueError(f"{where}: omics shape must be 2-D, got {shape}")
    if kind == "image":
        if shape is not None and (len(shape) != 3 or shape[2] not in IMAGE_MODES):
            raise ValueError(
                f"{where}: image shape must be [height, width, channels] with 1, 3 "
                f"or 4 channels, got {shape}"
            )
        mode = entry.get("mode")
        if mode is not None and mode not in IMAGE_MODES.values():
            raise ValueError(
                f"{where}: mode must be one of L, RGB, RGBA, got {show(mode)}"
            )


def check_dataset_info(info: Any) -> None:
    """ValueError unless `info` is a `getInfo` payload EIR can use."""
    if not isinstance(info, Mapping):
        raise ValueError(
            f"dataset info must be a dict with 'inputs' and 'outputs', got "
            f"{type(info).__name__} {show(info)}"
        )
    for side, allowed in (("inputs", INPUT_TYPES), ("outputs", OUTPUT_TYPES)):
        entries = info.get(side)
        if not isinstance(entries, Mapping):
            raise ValueError(
                f"dataset info needs {side!r}: a dict of name -> {{'type': ...}}, "
                f"got {show(entries)}"
            )
        for name, entry in entries.items():
            where = f"dataset info {side}[{name!r}]"
            if not isinstance(name, str) or not name:
                raise ValueError(f"dataset info {side} names must be non-empty strings")
            if not isinstance(entry, Mapping) or "type" not in entry:
                raise ValueError(
                    f"{where} must be a dict with a 'type', got {show(entry)}"
                )
            if entry["type"] not in allowed:
                raise ValueError(
                    f"{where} has type {show(entry['type'])}; EIR streams {side} "
                    f"of type {', '.join(sorted(allowed))}"
                )
            _check_info_entry(entry["type"], entry, where)
    if not info["outputs"]:
        raise ValueError("dataset info has no outputs; EIR trains at least one")


def _decode_b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(
            f"{where} must be a base64 string, got {type(value).__name__} {show(value)}"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not valid base64: {show(value)}") from None


def _check_value(kind: str, entry: Mapping[str, Any], value: Any, where: str) -> None:
    if kind == "sequence":
        if not isinstance(value, str):
            raise ValueError(
                f"{where} must be a string, got {type(value).__name__} {show(value)}"
            )
    elif kind in ("tabular", "survival"):
        tabular_row(value, where)
    elif kind in ("array", "omics"):
        data = _decode_b64(value, where)
        count = math.prod(entry["shape"])
        size = 4 * count if kind == "array" else count
        if len(data) != size:
            raise ValueError(
                f"{where} holds {len(data)} bytes; shape {entry['shape']} of "
                f"{'float32' if kind == 'array' else 'bool'} needs {size}"
            )
        if kind == "omics" and data.strip(b"\x00\x01"):
            raise ValueError(f"{where} has bytes other than 0 and 1 (not bools)")
    elif kind == "image":
        data = _decode_b64(value, where)
        try:
            found = png_header(data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        shape = entry.get("shape")
        if shape is not None and list(found) != list(shape):
            raise ValueError(
                f"{where} is a {found[0]}x{found[1]} PNG with {found[2]} channel(s); "
                f"the dataset info says shape {shape}"
            )


def check_sample(sample: Any, info: Mapping[str, Any]) -> None:
    """ValueError unless `sample` is what EIR expects for the dataset `info`."""
    if not isinstance(sample, Mapping) or set(sample) != set(SAMPLE_KEYS):
        keys = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
        raise ValueError(
            f"a sample must be a dict with exactly the keys inputs, target_labels, "
            f"sample_id; got {keys}"
        )
    sid = sample["sample_id"]
    if not isinstance(sid, str) or not sid:
        raise ValueError(f"sample_id must be a non-empty string, got {show(sid)}")
    inputs, targets = sample["inputs"], sample["target_labels"]
    for key, part in (("inputs", inputs), ("target_labels", targets)):
        if not isinstance(part, Mapping):
            raise ValueError(f"{sid}: {key} must be a dict, got {show(part)}")
    declared_in, declared_out = info["inputs"], info["outputs"]
    sequence_outputs = {n for n, e in declared_out.items() if e["type"] == "sequence"}
    for name, value in inputs.items():
        where = f"{sid}: inputs[{name!r}]"
        if name in declared_in:
            _check_value(declared_in[name]["type"], declared_in[name], value, where)
        elif name in sequence_outputs:
            _check_value("sequence", {}, value, where)
        else:
            raise ValueError(
                f"{where} is neither an input nor a sequence output of the dataset "
                "info; EIR fails on unknown input names"
            )
    for name, value in targets.items():
        where = f"{sid}: target_labels[{name!r}]"
        if name not in declared_out:
            raise ValueError(f"{where} is not an output of the dataset info")
        kind = declared_out[name]["type"]
        if kind in NESTED_OUTPUT_TYPES:
            if not isinstance(value, Mapping) or list(value) != [name]:
                raise ValueError(
                    f"{where} must be nested as {{{name!r}: value}} for a {kind} "
                    f"output, got {show(value)}"
                )
            value = value[name]
            where += f"[{name!r}]"
        _check_value(kind, declared_out[name], value, where)
        if kind == "sequence" and inputs.get(name) != value:
            raise ValueError(
                f"{sid}: sequence output {name!r} must also be sent as "
                f"inputs[{name!r}] with the same text"
            )
