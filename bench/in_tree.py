"""In-process measurements of one tree, run in a fresh Python process.

    python bench/in_tree.py TREE LAYOUT NAME '{"argument": value, ...}'

puts TREE first on sys.path (in place of this script's folder), runs the
measurement NAME with those arguments and prints its result as JSON on the
last line of stdout. bench/trees.py's `Tree.measure` runs it, from TREE, for
this tree and for a baseline tree alike. Nothing here imports this tree's
modules: the names a measurement needs come from NAMES, by LAYOUT ("package":
eirstream/; "loose": the top-level modules before it), and `bench.<module>`
is TREE's own bench/ (its heavy source, for instance).
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PACKAGE_DATASETS = "eirstream.datasets.source"
NAMES = {
    "package": {
        "load_dataset": f"{PACKAGE_DATASETS}:load_dataset",
        "index_bytes_per_document": f"{PACKAGE_DATASETS}:index_bytes_per_document",
        "EpochOrder": "eirstream.order:EpochOrder",
        "WINDOW_INDICES": "eirstream.order:WINDOW_INDICES",
        "heavy_source": "bench.heavy_source:make_source",
    },
    "loose": {
        "load_dataset": "dataset_source:load_dataset",
        "index_bytes_per_document": "dataset_source:index_bytes_per_document",
        "EpochOrder": "stream_order:EpochOrder",
        "WINDOW_INDICES": "stream_order:WINDOW_INDICES",
        "heavy_source": "bench.heavy_source:make_source",
    },
}


def named(layout: str, name: str) -> Any:
    """What NAMES[layout][name] ("module:attribute") names, imported."""
    module, _, attribute = NAMES[layout][name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def seconds_per_sample(
    make: Callable[[Sequence[int]], Any],
    indices: Callable[[int, int], Sequence[int]],
    per_call: int,
    seconds: float,
) -> float:
    """Best of 3 runs of about seconds / 3 each: the time `make` takes per
    sample, asked for `per_call` indices at a time (`indices(start, stop)`,
    made outside the timing)."""
    best, start = float("inf"), 0
    for _ in range(3):
        spent, made = 0.0, 0
        while spent < seconds / 3:
            asked = indices(start, start + per_call)
            began = time.perf_counter()
            make(asked)
            spent += time.perf_counter() - began
            start, made = start + per_call, made + per_call
        best = min(best, spent / made)
    return best


def heavy_ms_per_sample(layout: str, seconds: float) -> float:
    """The tree's heavy source (bench/heavy_source.py): ms per sample."""
    source = named(layout, "heavy_source")()
    return 1000 * seconds_per_sample(
        source.samples_json, lambda start, stop: range(start, stop), 10, seconds
    )


def dataset_costs(
    layout: str, text_spec: str, image_spec: str, chunk_words: int, seconds: float
) -> dict[str, float]:
    """Seconds per sample of the tree's dataset source (made, JSON text): word
    chunks in index order and in the shuffled order of epoch 0, and images;
    their JSON's bytes per sample; and `splitting_costs`."""
    load_dataset = named(layout, "load_dataset")
    text = load_dataset(text_spec)
    n = text.num_samples
    window = text.shuffle_window or named(layout, "WINDOW_INDICES")
    order = named(layout, "EpochOrder")(n, 0, text.block_sizes, window)

    def in_order(start: int, stop: int) -> list[int]:
        return [i % n for i in range(start, stop)]

    def shuffled(start: int, stop: int) -> list[int]:
        return [order.index_at(0, i % n) for i in range(start, stop)]

    costs = {
        **splitting_costs(Path(text_spec).parent / "data", chunk_words),
        "text": seconds_per_sample(text.samples_json, in_order, 1024, seconds),
        "shuffled": seconds_per_sample(text.samples_json, shuffled, 1024, seconds),
        "json_bytes": statistics.fmean(
            len(t) for t in text.samples_json(range(min(n, 4096)))
        ),
    }
    text.close()
    images = load_dataset(image_spec)
    m = images.num_samples

    def image_indices(start: int, stop: int) -> list[int]:
        return [i % m for i in range(start, stop)]

    costs["image"] = seconds_per_sample(images.samples_json, image_indices, 16, seconds)
    costs["image_bytes"] = statistics.fmean(
        len(t) for t in images.samples_json(range(min(m, 32)))
    )
    images.close()
    return costs


def splitting_costs(data: Path, chunk_words: int) -> dict[str, float]:
    """Seconds per word chunk of cutting the documents of one row group into
    word chunks of `chunk_words` words, best of 3: Python's str.split and
    str.join, as the dataset source does, and pyarrow.compute's
    utf8_split_whitespace and binary_join (the same word chunks, made in
    Arrow's C++), each from the Arrow column to Python strings."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    first = sorted(data.glob("*.parquet"))[0]
    group = pq.ParquetFile(first).read_row_group(0, columns=["text"])
    texts = group.column("text").combine_chunks()

    def python() -> list[str]:
        out: list[str] = []
        for text in texts.to_pylist():
            words = text.split()
            out += [
                " ".join(words[at : at + chunk_words])
                for at in range(0, len(words), chunk_words)
            ]
        return out

    def arrow() -> list[str]:
        words = pc.utf8_split_whitespace(texts)
        ends, total = [0], 0
        for count in pc.list_value_length(words).to_pylist():
            ends += [
                total + min(at + chunk_words, count)
                for at in range(0, count, chunk_words)
            ]
            total += count
        lists = pa.ListArray.from_arrays(pa.array(ends, pa.int32()), words.flatten())
        return pc.binary_join(lists, " ").to_pylist()

    word_chunks = python()
    if arrow() != word_chunks:
        raise RuntimeError("pyarrow's word chunks differ from Python's")
    costs = {}
    for name, cut in (("split_python", python), ("split_arrow", arrow)):
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            cut()
            best = min(best, time.perf_counter() - began)
        costs[name] = best / len(word_chunks)
    return costs


def dataset_index(layout: str, spec: str) -> dict[str, int]:
    """The index of the dataset at `spec` (from the cache in
    $EIR_STREAM_CACHE): its bytes, documents and blocks, and the tree's
    index_bytes_per_document()."""
    source = named(layout, "load_dataset")(spec)
    found = {
        "nbytes": source.index_nbytes(),
        "rows": source.index.rows,
        "blocks": source.index.blocks,
        "per_document": named(layout, "index_bytes_per_document")(),
    }
    source.close()
    return found


MEASUREMENTS: dict[str, Callable[..., Any]] = {
    "heavy_ms_per_sample": heavy_ms_per_sample,
    "dataset_costs": dataset_costs,
    "dataset_index": dataset_index,
}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 4 or argv[1] not in NAMES or argv[2] not in MEASUREMENTS:
        print(
            f"usage: in_tree.py TREE {{{','.join(NAMES)}}} "
            f"{{{','.join(MEASUREMENTS)}}} JSON-ARGUMENTS; got {list(argv)!r}",
            file=sys.stderr,
        )
        return 2
    tree, layout, name, arguments = argv
    sys.path[0] = str(Path(tree).resolve())  # the tree, not this script's folder
    result = MEASUREMENTS[name](layout, **json.loads(arguments))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
