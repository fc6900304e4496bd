"""Making a task: the samples of a list of indices, as one blob of JSON.

This is the work an engine runs, in the server's thread, a local worker
process or a Dask worker: `make_task` loads the source by name (once per
process) and `encode_task` turns its samples into a `MadeTask`. Nothing
here knows about the stream or the read-ahead, so it is all a worker needs.
"""

import time
from collections.abc import Iterable, Sequence
from functools import cache, partial
from itertools import accumulate, repeat
from operator import add
from typing import Any, NamedTuple

from eirstream.loading import load_source
from eirstream.sources import SampleSource, encode_samples, in_index_order, is_ascending


class MadeTask(NamedTuple):
    """The samples of a list of indices, as made by `encode_task`.

    `blob` holds each sample's compact UTF-8 JSON followed by a comma, in the
    order of the indices; sample k is `blob[offsets[k]:offsets[k + 1]]`,
    empty where the source raised for it. A reply is then one slice of the
    blob per run of samples, and a made task crosses a process boundary as two
    objects, not thousands.
    """

    blob: bytes
    offsets: list[int]  # one more than the indices: where the last one ends
    failures: dict[int, str]  # index -> the exception, as one line of text
    seconds: float  # wall time of the making, waiting included


ENCODE_SLICE = 512  # samples asked of the source at a time (see encode_task)


def encode_task(source: SampleSource, indices: Sequence[int]) -> MadeTask:
    """The samples of `indices`; one that raises does not cost its neighbours.

    The source is asked for ENCODE_SLICE samples at a time, in ascending
    index order: a source that reads its data in blocks (a dataset) then
    reads each block and row once per task, also when the task's indices
    are shuffled. Where they are ascending already (the usual case), each
    slice is encoded while its text is still in the CPU's cache; else the
    texts are put back in the order asked first. A slice that raises is
    asked again one index at a time, to find the culprits.
    """
    started = time.perf_counter()
    failures: dict[int, str] = {}
    pieces: list[bytes] = []
    offsets: list[int] = [0]
    if is_ascending(indices):
        for at in range(0, len(indices), ENCODE_SLICE):
            texts = _make_texts(source, indices[at : at + ENCODE_SLICE], failures)
            _encode_texts(texts, pieces, offsets)
    else:
        asked = in_index_order(partial(_make_all_texts, source, failures), indices)
        for at in range(0, len(asked), ENCODE_SLICE):
            _encode_texts(asked[at : at + ENCODE_SLICE], pieces, offsets)
    return MadeTask(b"".join(pieces), offsets, failures, time.perf_counter() - started)


def _make_all_texts(
    source: SampleSource, failures: dict[int, str], ascending: list[int]
) -> list[str]:
    """`_make_texts` of `ascending`, ENCODE_SLICE indices at a time."""
    return [
        text
        for at in range(0, len(ascending), ENCODE_SLICE)
        for text in _make_texts(source, ascending[at : at + ENCODE_SLICE], failures)
    ]


def _make_texts(
    source: SampleSource, wanted: Sequence[int], failures: dict[int, str]
) -> list[str]:
    """`encode_samples` of `wanted`, with "" (and an entry in `failures`) for
    each index the source raises for."""
    try:
        return encode_samples(source, wanted)
    except Exception:
        texts = []
        for index in wanted:
            try:
                texts += encode_samples(source, [index])
            except Exception as exc:
                texts.append("")
                failures[index] = f"{type(exc).__name__}: {exc}"
        return texts


def _encode_texts(texts: list[str], pieces: list[bytes], offsets: list[int]) -> None:
    """Append `texts` to a blob under way: each text as UTF-8 plus a comma to
    `pieces`, and where each one ends to `offsets`. This is the one loop run
    for every sample served, hence the maps instead of a comprehension."""
    sizes: Iterable[int] | None = None
    if "" in texts:  # a failed sample takes no bytes, not even a comma
        sizes = [len(text.encode()) + 1 if text else 0 for text in texts]
        texts = [text for text in texts if text]
    texts.append("")  # so that the last sample gets its comma too
    joined = ",".join(texts)
    del texts[-1]
    encoded = joined.encode()
    if sizes is None:  # ASCII (the usual case): a byte per character
        if len(encoded) == len(joined):
            sizes = map(add, map(len, texts), repeat(1))
        else:
            sizes = [len(text.encode()) + 1 for text in texts]
    offsets += accumulate(sizes, initial=offsets.pop())
    pieces.append(encoded)


@cache
def cached_source(spec: str, settings: tuple[tuple[str, Any], ...]) -> SampleSource:
    """The source of `spec`, loaded once per process (settings as sorted items)."""
    return load_source(spec, dict(settings))


def make_task(
    spec: str, settings: tuple[tuple[str, Any], ...], indices: list[int]
) -> MadeTask:
    """A task made where the source is loaded by name: what a worker
    process or a Dask worker runs."""
    return encode_task(cached_source(spec, settings), indices)
