"""What the server asks of a source of samples, and the plain helpers over one.

Everything here runs wherever samples are made: in the server process, in a
local worker process, or on a Dask worker on another machine. It needs only
the standard library and imports nothing else of ours.
"""

import json
from collections.abc import Callable, Sequence
from itertools import islice
from operator import le
from typing import Any, Protocol, runtime_checkable


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
      `SampleStream.for_source` in stream.py).
    """

    num_samples: int | None

    def dataset_info(self) -> dict[str, Any]: ...

    def sample(self, index: int) -> dict[str, Any]: ...

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...

    def index_of(self, sample_id: str) -> int | None: ...


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
