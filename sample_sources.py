"""Sources of samples: the interface, loading `--source`, and making chunks.

Everything here runs wherever samples are made: in the server process, in a
local worker process, or on a Dask worker on another machine. So it needs
nothing beyond the standard library, and it imports none of the server.

* `SampleSource`: what the server asks of a source of samples.
* `load_source`: builds a source from "module:factory" or
  "path/to/file.py:factory" (what `--source` names).
* `encode_chunk` / `make_chunk`: the samples of a list of indices as one blob
  of UTF-8 JSON, a `MadeChunk`. This is the task an engine runs.
"""

import hashlib
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache, partial
from itertools import accumulate, islice, repeat
from operator import add, le
from typing import Any, NamedTuple, Protocol, runtime_checkable


@runtime_checkable
class SampleSource(Protocol):
    """What the server needs from a source of samples.

    * `dataset_info()`: the `getInfo` payload, {"inputs": {...}, "outputs": {...}}.
    * `sample(index)`: sample number `index` as EIR expects it (a dict with
      "inputs", "target_labels" and "sample_id"); the same dict every time.
    * `samples(indices)`: several at once (loop over `sample` if nothing faster).
    * `num_samples`: how many samples the stream has, or None for unbounded.
    * `index_of(sample_id)`: the index that produces `sample_id`, or None if
      this source never produces it (used to skip validation ids).
    * optionally `indices_of(sample_ids)`: the same for a whole list at once,
      as a set of the indices found (EIR can send hundreds of thousands of
      validation ids in one message; without it, `index_of` is called per id).
    * optionally, for `--shuffle`, `block_sizes` and `shuffle_window` (see
      `SampleStream.for_source` in data_simulator.py).
    """

    num_samples: int | None

    def dataset_info(self) -> dict[str, Any]: ...

    def sample(self, index: int) -> dict[str, Any]: ...

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...

    def index_of(self, sample_id: str) -> int | None: ...


def load_source(spec: str, settings: dict[str, Any]) -> SampleSource:
    """Build a source from "module:factory" or "path/to/file.py:factory".

    A module is imported from sys.path, to which the current directory is
    added (so `--source mydata:make` finds ./mydata.py wherever the server
    script lives). A file is loaded directly, and its folder is added to
    sys.path so it can import its neighbours. The factory may be a dotted
    attribute (`module:Class.create`); it gets `settings` (seed,
    sequence_length, max_iterations) as keyword arguments. Every problem
    raises ValueError with a one-line message naming the spec.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(
            f"--source must be module:factory or path/to/file.py:factory, got {spec!r}"
        )
    module = _import_source_module(target, spec)
    try:  # the standard resolver walks "Class.create"; the module is imported
        factory = pkgutil.resolve_name(f"{module.__name__}:{attr}")
    except AttributeError:
        raise ValueError(
            f"--source {spec!r}: {target} has no attribute {attr!r}"
        ) from None
    except ValueError:
        raise ValueError(
            f"--source {spec!r}: {attr!r} is not a (dotted) Python name"
        ) from None
    if not callable(factory):
        raise ValueError(
            f"--source {spec!r}: {attr} is a {type(factory).__name__}, not a "
            "callable factory"
        )
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as exc:
        raise ValueError(
            f"--source {spec!r}: {attr} must accept the keyword arguments "
            f"{', '.join(settings)} (or **kwargs): {exc}"
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin); just call it
    try:
        source = factory(**settings)
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: {attr}(...) failed: {type(exc).__name__}: {exc}"
        ) from exc
    _check_made_source(source, spec)
    return source


DATASET_SOURCE = "dataset_source:make_source"  # what --dataset serves


def load_dataset_source(settings: dict[str, Any]) -> SampleSource:
    """The source of `--dataset` (settings["dataset"] names the spec). It
    checks its own `getInfo` payload, and every problem it raises already
    names the spec in one line, so they pass through as they are."""
    try:
        from dataset_source import make_source
    except ImportError as exc:
        raise ValueError(
            f"--dataset needs the {exc.name or 'dataset'} package: "
            "pip install -r requirements-datasets.txt"
        ) from None
    return make_source(**settings)


def _check_made_source(source: Any, spec: str) -> None:
    """ValueError unless what the factory made fits SampleSource and
    describes its data."""
    problems = _interface_problems(source)
    if problems:
        raise ValueError(
            f"--source {spec!r}: the {type(source).__name__} it made does not fit "
            f"SampleSource (sample_sources.py): {'; '.join(problems)}"
        )
    try:
        info = source.dataset_info()
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: dataset_info() failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(info, dict) or not isinstance(info.get("outputs"), dict):
        raise ValueError(
            f"--source {spec!r}: dataset info needs 'inputs' and 'outputs' dicts, "
            f"got {info!r:.80}"
        )


def load_checked_source(spec: str, settings: dict[str, Any]) -> SampleSource:
    """`load_source`, plus the full check of its `getInfo` payload when
    stream_encoders.py is beside us (the server runs without it)."""
    source = load_source(spec, settings)
    try:
        from stream_encoders import check_dataset_info
    except ImportError:
        return source
    try:
        check_dataset_info(source.dataset_info())
    except ValueError as exc:
        raise ValueError(f"--source {spec!r}: {exc}") from None
    return source


def _interface_problems(source: Any) -> list[str]:
    problems = [
        f"no {name}() method"
        for name in ("dataset_info", "sample", "index_of")
        if not callable(getattr(source, name, None))
    ]
    if not callable(getattr(source, "samples", len)):
        problems.append("samples is not a method")
    if not hasattr(source, "num_samples"):
        problems.append("no num_samples attribute (an int, or None for unbounded)")
    else:
        bound = source.num_samples
        if bound is not None and (
            not isinstance(bound, int) or isinstance(bound, bool) or bound < 0
        ):
            problems.append(
                f"num_samples is {bound!r} (need an int >= 0, or None for unbounded)"
            )
    return problems


def is_file_spec(target: str) -> bool:
    """Whether the part of a --source spec before the colon names a file."""
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_source_module(target: str, spec: str) -> Any:
    """The module named by the part of a --source spec before the colon."""
    if is_file_spec(target):
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise ValueError(f"--source {spec!r}: no such file {path}")
        stem = os.path.splitext(os.path.basename(path))[0]
        digest = hashlib.sha1(path.encode()).hexdigest()[:8]
        name = f"_source_{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.append(folder)
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--source {spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ValueError(
                f"--source {spec!r}: importing {path} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    importlib.invalidate_caches()  # files (or zips) may have come since
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ValueError(
                f"--source {spec!r}: no module named {exc.name!r} (looked in the "
                f"current directory {cwd} and on sys.path); run from the folder "
                "that holds it, or give its file: path/to/file.py:factory"
            ) from None
        raise ValueError(
            f"--source {spec!r}: importing {target} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}"
        ) from exc


def encode_samples(source: SampleSource, indices: Sequence[int]) -> list[str]:
    """Compact JSON text of each sample, ready to be joined into a `data` reply.

    Uses the source's optional `samples_json(indices)` when it has one (the
    simulated data writes its JSON directly), else `samples`, else `sample`.
    """
    fast = getattr(source, "samples_json", None)
    if fast is not None:
        texts = list(fast(indices))
    else:
        many = getattr(source, "samples", None)
        samples = many(indices) if many else [source.sample(i) for i in indices]
        texts = [json.dumps(s, separators=(",", ":")) for s in samples]
    if len(texts) != len(indices):
        method = "samples_json" if fast is not None else "samples"
        raise ValueError(
            f"the source's {method} gave {len(texts)} samples for "
            f"{len(indices)} indices"
        )
    return texts


class MadeChunk(NamedTuple):
    """The samples of a list of indices, as made by `encode_chunk`.

    `blob` holds each sample's compact UTF-8 JSON followed by a comma, in the
    order of the indices; sample k is `blob[offsets[k]:offsets[k + 1]]`,
    empty where the source raised for it. A reply is then one slice of the
    blob per run of samples, and a chunk crosses a process boundary as two
    objects, not thousands.
    """

    blob: bytes
    offsets: list[int]  # one more than the indices: where the last one ends
    failures: dict[int, str]  # index -> the exception, as one line of text
    seconds: float  # wall time of the making, waiting included


ENCODE_SLICE = 512  # samples asked of the source at a time (see encode_chunk)


def encode_chunk(source: SampleSource, indices: Sequence[int]) -> MadeChunk:
    """The samples of `indices`; one that raises does not cost its neighbours.

    The source is asked for ENCODE_SLICE samples at a time, in ascending
    index order: a source that reads its data in blocks (a dataset) then
    reads each block and row once per chunk, also when the chunk's indices
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
    return MadeChunk(b"".join(pieces), offsets, failures, time.perf_counter() - started)


def is_ascending(indices: Sequence[int]) -> bool:
    """Whether each index is at least the one before it."""
    return all(map(le, indices, islice(indices, 1, None)))


def in_index_order(
    make: Callable[[list[int]], list[str]], indices: Sequence[int]
) -> list[str]:
    """`make(ascending)`, one result per index, asked for the indices in
    ascending order and returned in the order of `indices`: a source that
    reads blocks and rows then reads each once, however they are shuffled."""
    if is_ascending(indices):
        return make(list(indices))
    order = sorted(range(len(indices)), key=indices.__getitem__)
    made = make([indices[at] for at in order])
    out = [""] * len(indices)
    for at, text in zip(order, made, strict=True):
        out[at] = text
    return out


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


def make_chunk(
    spec: str, settings: tuple[tuple[str, Any], ...], indices: list[int]
) -> MadeChunk:
    """A chunk made where the source is loaded by name: the task a worker
    process or a Dask worker runs."""
    return encode_chunk(cached_source(spec, settings), indices)
