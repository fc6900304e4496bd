"""Serve a dataset of files as a sample source: what `--dataset` serves.

`make_source(dataset="spec.yaml")` returns a `DatasetSource`; the spec (see
spec.py) names the files and which columns feed which EIR inputs and
outputs. It stays cheap on datasets far larger than memory: the index
(index.py) maps a sample index to (file, block, row) and is counted once
into a disk cache; samples are made a block at a time from the spec's
columns only, and the last blocks used stay in a per-process cache bounded
in bytes (`cache_mb`), so runs of indices and indices shuffled within a
block read it once. Each sample's JSON is written by eirformat's
`SampleLayout`, the one writer of EIR's sample layout.

Sample ids are `r<row>` (rows numbered across all files) or `r<row>c<chunk>`
(word chunks), safe as file names; `index_of` maps them back by bisection.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from eirstream.datasets.files import BlockCache, OpenFiles, resolve_files
from eirstream.datasets.index import (
    DatasetIndex,
    build_index,
    cache_dir,
    index_bytes_per_document,
)
from eirstream.datasets.spec import (
    DatasetProblem,
    DatasetSpec,
    Entry,
    load_spec,
    one_line,
    require,
)
from eirstream.datasets.values import encode_entry, fixed_shape, info_entry
from eirstream.datasets.words import TEXT_MARK, ChunkTemplate, chunk_id, chunk_text
from eirstream.eirformat import SampleLayout, check_dataset_info, value_json
from eirstream.encoders import infer_shape
from eirstream.sources import in_index_order

# bench/datasets.py reads the index's cost per document from here
__all__ = ["DatasetSource", "index_bytes_per_document", "load_dataset", "make_source"]

logger = logging.getLogger("eirstream.datasets.source")

# Word chunks shuffled this many at a time (order.py): a task of a few
# thousand consecutive positions then splits each document it touches once,
# and shares few documents with the tasks beside it, on other workers.
CHUNK_WINDOW = 512
SAMPLE_ID = re.compile(r"r(0|[1-9][0-9]*)(?:c(0|[1-9][0-9]*))?")


def make_source(
    *,
    dataset: str,
    seed: int = 0,
    sequence_length: int = 64,
    max_iterations: int | None = None,
    **_: Any,
) -> DatasetSource:
    """The factory `--dataset` serves (loading.DATASET_SOURCE), called in the
    server and in every worker. `seed` and `sequence_length` do not change a
    dataset; `max_iterations` caps `num_samples`."""
    return load_dataset(dataset, max_iterations=max_iterations)


def load_dataset(path: str, *, max_iterations: int | None = None) -> DatasetSource:
    """The `DatasetSource` of the spec at `path`. Every problem with the spec
    or its files raises ValueError("--dataset <path>: ...") on one line."""
    try:
        return DatasetSource(load_spec(path), max_iterations=max_iterations)
    except DatasetProblem as exc:
        raise ValueError(f"--dataset {path}: {one_line(exc)}") from None


def row_sample_id(row: int, chunk: int | None) -> str:
    """The id of a row's sample (`r<row>`), or of one of its word chunks
    (`r<row>c<chunk>`): what SAMPLE_ID reads back."""
    return f"r{row}" if chunk is None else chunk_id(row, chunk)


class DatasetSource:
    """A dataset as a `SampleSource` (sources.py): `num_samples` rows or word
    chunks, each sample made from one row of one block.

    `block_sizes` lists the samples of each block in index order (shuffle by
    blocks to keep reads local), and `shuffle_window` says how many to mix
    at a time: `CHUNK_WINDOW` for word chunks, else the stream's default.
    `cache` is this process's `BlockCache`.
    """

    def __init__(self, spec: DatasetSpec, max_iterations: int | None = None) -> None:
        require("pyarrow", "reading data files")
        if any(e.type == "image" for e in spec.entries):
            require("PIL", "an image entry")
        self.spec = spec
        self.files = resolve_files(spec)
        self.index, counted = build_index(spec, self.files)
        total = self.index.samples
        self.num_samples = (
            total if max_iterations is None else min(total, max_iterations)
        )
        self.block_sizes = _capped(self.index, self.num_samples)
        self.shuffle_window = CHUNK_WINDOW if spec.chunked else None
        self.cache = BlockCache(spec.cache_bytes)
        self.files_counted = counted
        self.files_cached = len(self.files) - counted
        self._open = OpenFiles(self.files)
        self._lock = threading.RLock()
        # (global row, its words) of the document split last: its next word
        # chunk asked alone (`sample`) is not split again.
        self._last_document: tuple[int, list[str]] = (-1, [])
        self._warned = False  # about a block larger than the cache
        self._chunked = spec.chunked
        # Word chunks are made a document at a time (`_chunks_json`) when the
        # chunked column feeds sequence entries only, whose value is the text.
        self._by_document = spec.chunked is not None and all(
            entry.type == "sequence"
            for entry in spec.entries
            if spec.chunked.column in entry.reads
        )
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._info = self._dataset_info()
        try:
            check_dataset_info(self._info)
        except ValueError as exc:  # as every problem: one line naming the spec
            raise DatasetProblem(str(exc)) from None
        self._layout = SampleLayout(self._info)
        sizes = f"{self.index.rows:,} rows, {self.num_samples:,} samples"
        logger.info(
            f"dataset {spec.path}: {len(self.files)} files, {self.index.blocks} "
            f"blocks, {sizes}; index of {self.files_cached} files from the cache "
            f"in {cache_dir()}, {counted} counted"
        )

    # ------------------------------------------------------------------ info
    def dataset_info(self) -> dict[str, Any]:
        """The `getInfo` payload: each input and output with its type (and
        the shape of arrays, and of images given both size and mode)."""
        return json.loads(json.dumps(self._info))

    def _dataset_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"inputs": {}, "outputs": {}}
        for entry in self.spec.entries:
            if entry.type == "array":
                self._shapes[entry.where] = self._array_shape(entry)
            shape = self._shapes.get(entry.where)
            info[entry.side][entry.name] = info_entry(entry, shape)
        return info

    def _array_shape(self, entry: Entry) -> tuple[int, ...]:
        """The declared shape, else the one its Arrow type fixes, else that of
        the first row."""
        if entry.shape:
            return entry.shape
        starts = self.index.row_start
        block = next(
            (b for b in range(self.index.blocks) if starts[b + 1] > starts[b]), None
        )
        if block is None:
            raise DatasetProblem(
                f"{entry.where}: the dataset has no rows to take an array shape from"
            )
        url = self.files[self.index.block_file[block]].url
        try:
            column = self._block(block)[0][str(entry.column)]
        except Exception as exc:  # whatever the library says, it is unreadable
            raise DatasetProblem(f"cannot read {url}: {one_line(exc)}") from None
        shape = fixed_shape(column.type)
        if shape:
            return shape
        try:
            return infer_shape(column[0].as_py(), f"{entry.where}'s first row")
        except ValueError as exc:
            raise DatasetProblem(
                f"{exc} (in {url}); give the shape in the spec: shape: [...]"
            ) from None

    # -------------------------------------------------------------- samples
    def sample(self, index: int) -> dict[str, Any]:
        """Sample `index`: the same dict every time."""
        sample_id, encoded = self._encoded(index)
        return self._layout.sample(sample_id, encoded["inputs"], encoded["outputs"])

    def _encoded(self, index: int) -> tuple[str, dict[str, dict[str, Any]]]:
        """Sample `index`'s id and its encoded values by side and name."""
        block, row_in_block, row, chunk = self._locate(index)
        arrays, _ = self._block(block)
        sample_id = row_sample_id(row, chunk)
        text = None
        if chunk is not None:
            words = self._document_words_of(arrays, row_in_block, row)
            text = chunk_text(words, chunk, self._chunk_words())
        folder = self._folder(block)
        encoded: dict[str, dict[str, Any]] = {"inputs": {}, "outputs": {}}
        for entry in self.spec.entries:
            encoded[entry.side][entry.name] = self._value(
                entry, arrays, row_in_block, text, folder, sample_id
            )
        return sample_id, encoded

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """`sample` of each index, in order."""
        return [self.sample(i) for i in indices]

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        """Each sample as compact JSON text (what the server sends), made in
        index order (shuffled indices then read each block and document in
        one go) and returned in the order asked."""
        make = self._chunks_json if self._by_document else self._samples_json
        return in_index_order(make, indices)

    def _samples_json(self, ascending: list[int]) -> list[str]:
        """json.dumps(sample(index), separators=(",", ":")) of each index,
        written from the encoded values without building the sample's dicts."""
        made = []
        for index in ascending:
            sample_id, encoded = self._encoded(index)
            made.append(
                self._layout.json(sample_id, encoded["inputs"], encoded["outputs"])
            )
        return made

    def _chunks_json(self, ascending: list[int]) -> list[str]:
        """`_samples_json` of indices (ascending) in word-chunk mode, a
        document at a time: the document is split once, its other values are
        written once into a `ChunkTemplate`, and each word chunk's JSON is
        its text dropped into that template."""
        made: list[str] = []
        if ascending:  # in range: the last here, each document's first below
            self._locate(ascending[-1])
        starts, size = self.index.sample_start, self._chunk_words()
        at, count = 0, len(ascending)
        while at < count:
            block, row_in_block, row, _ = self._locate(ascending[at])
            prefix = self._prefix(block)
            first = starts[block] + prefix[row_in_block]  # its word chunk 0
            end = starts[block] + prefix[row_in_block + 1]
            stop = bisect_left(ascending, end, at)
            numbers = [index - first for index in ascending[at:stop]]
            arrays, _ = self._block(block)
            words = self._document_words_of(arrays, row_in_block, row)
            template = self._template(block, arrays, row_in_block, row, numbers[0])
            made += template.write(words, size, row, numbers)
            at = stop
        return made

    def _template(
        self,
        block: int,
        arrays: dict[str, Any],
        row_in_block: int,
        row: int,
        chunk: int,
    ) -> ChunkTemplate:
        """The template of the word chunks of one document: every value but
        the word chunk's text written once (`chunk` names the sample in an
        error)."""
        folder, chunked = self._folder(block), self._column_chunked()
        sample_id = chunk_id(row, chunk)
        written: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}}
        for entry in self.spec.entries:
            if entry.type == "sequence" and entry.column == chunked:
                written[entry.side][entry.name] = TEXT_MARK
                continue
            value = self._value(entry, arrays, row_in_block, None, folder, sample_id)
            written[entry.side][entry.name] = value_json(value)
        return ChunkTemplate(self._layout, written["inputs"], written["outputs"])

    def sample_id(self, index: int) -> str:
        """The id of sample `index`, without reading any data."""
        _, _, row, chunk = self._locate(index)
        return row_sample_id(row, chunk)

    def _locate(self, index: int) -> tuple[int, int, int, int | None]:
        """(block, row in it, global row, word chunk or None) of sample `index`."""
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"sample index {index} is not in 0..{self.num_samples - 1}"
            )
        block = self.index.block_of_sample(index)
        offset = index - self.index.sample_start[block]
        if self.index.chunks is None:
            return block, offset, self.index.row_start[block] + offset, None
        prefix = self._prefix(block)
        row = bisect_right(prefix, offset) - 1
        return block, row, self.index.row_start[block] + row, offset - prefix[row]

    def _column_chunked(self) -> str:
        """The column cut into word chunks (in word-chunk mode)."""
        assert self._chunked is not None
        return str(self._chunked.column)

    def _chunk_words(self) -> int:
        """Words in a word chunk (in word-chunk mode)."""
        assert self._chunked is not None and self._chunked.chunk_words
        return self._chunked.chunk_words

    def _document_words_of(
        self, arrays: dict[str, Any], row_in_block: int, row: int
    ) -> list[str]:
        """The words of the document in global row `row`. Only the word
        chunks asked for are joined: a task of consecutive positions holds
        all of a document's word chunks in index order, but only some of them
        shuffled, and another task, on another worker maybe, the rest. A task
        makes its samples in index order, so it splits each document once."""
        last, words = self._last_document  # one read: Dask runs tasks in threads
        if last == row:
            return words
        words = arrays[self._column_chunked()][row_in_block].as_py().split()
        self._last_document = (row, words)
        return words

    def _value(
        self,
        entry: Entry,
        arrays: dict[str, Any],
        row: int,
        text: str | None,
        folder: str,
        sample_id: str,
    ) -> Any:
        """The encoded value of `entry` for one row (`text`, a word chunk's,
        in place of the chunked column's); a failure names the sample and
        the entry."""
        chunked = self._chunked.column if self._chunked else None

        def cell(column: str) -> Any:
            if text is not None and column == chunked:
                return text
            return arrays[column][row].as_py()

        try:
            return encode_entry(entry, cell, self._shapes.get(entry.where), folder)
        except Exception as exc:
            raise ValueError(
                f"sample {sample_id}: {entry.where}: {type(exc).__name__}: "
                f"{one_line(exc)}"
            ) from exc

    def _folder(self, block: int) -> str:
        """The folder of a block's data file (images may be paths within it)."""
        return posixpath.dirname(self.files[self.index.block_file[block]].url)

    # --------------------------------------------------------------- blocks
    def _prefix(self, block: int) -> array:
        """Where each row's word chunks start in the block (index.prefix), kept."""
        with self._lock:
            prefix = self.cache.get(("prefix", block))
            if prefix is None:
                prefix = self.index.prefix(block)
                self.cache.put(("prefix", block), prefix, len(prefix) * prefix.itemsize)
            return prefix

    def _block(self, block: int) -> tuple[dict[str, Any], int]:
        """({column: Arrow array}, bytes) of one block, from the cache or
        read (only the spec's columns)."""
        with self._lock:
            cached = self.cache.get(("block", block))
            if cached is not None:
                return cached
            number = self.index.block_file[block]
            table = self._open.reader(number).read(
                self.index.kinds[number],
                self.index.block_no[block],
                self.index.offsets[block],
                self.spec.columns,
            )
            arrays = {
                name: table.column(name).combine_chunks() for name in self.spec.columns
            }
            value = (arrays, sum(a.nbytes for a in arrays.values()))
            if value[1] > self.cache.max_bytes and not self._warned:
                self._warned = True
                logger.warning(
                    f"a block of {value[1] / 2**20:.1f} MiB is larger than cache_mb "
                    f"({self.cache.max_bytes / 2**20:.1f} MiB), so it is read again "
                    "for every task that needs it: raise cache_mb in the spec"
                )
            self.cache.put(("block", block), value, value[1])
            return value

    def close(self) -> None:
        """Close the open files and empty the cache."""
        with self._lock:
            self._open.close()
            self.cache = BlockCache(self.cache.max_bytes)

    # ------------------------------------------------------------------ ids
    def index_of(self, sample_id: str) -> int | None:
        """The index of `sample_id`, or None if this dataset has no such sample."""
        found = self.indices_of([sample_id])
        return found.pop() if found else None

    def indices_of(self, sample_ids: Sequence[str]) -> set[int]:
        """The indices of the ids that are this dataset's (others are left out)."""
        parsed = []
        for sample_id in sample_ids:
            match = (
                SAMPLE_ID.fullmatch(sample_id) if isinstance(sample_id, str) else None
            )
            if match and (match[2] is None) == (self.index.chunks is None):
                parsed.append(
                    (int(match[1]), None if match[2] is None else int(match[2]))
                )
        parsed.sort(key=lambda pair: pair[0])  # rows of a block together: one sum
        found = set()
        for row, chunk in parsed:
            index = self._index_of_row(row, chunk)
            if index is not None and index < self.num_samples:
                found.add(index)
        return found

    def _index_of_row(self, row: int, chunk: int | None) -> int | None:
        if row >= self.index.rows:
            return None
        if chunk is None:
            return row
        assert self.index.chunks is not None
        if chunk >= self.index.chunks[row]:
            return None
        block = self.index.block_of_row(row)
        within = self._prefix(block)[row - self.index.row_start[block]]
        return self.index.sample_start[block] + within + chunk

    def index_nbytes(self) -> int:
        """Memory of this source's index, in bytes (not counting the cache)."""
        return self.index.nbytes()


def _capped(index: DatasetIndex, total: int) -> list[int]:
    """Samples per block; under a cap (`total` below all samples), the blocks
    after the cap are left out."""
    starts, capped = index.sample_start, total < index.samples
    return [
        min(starts[block + 1], total) - starts[block]
        for block in range(index.blocks)
        if not capped or starts[block] < total
    ]
