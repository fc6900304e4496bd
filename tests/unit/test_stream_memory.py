"""Idle named streams are cheap: each of eight streams that a run opened and
left (it connected, took a batch and went away) holds less than 1 MiB,
beyond its read-ahead (the made samples, in readahead.py, which the server
lets go of when a stream's last connection closes).

What a stream holds is measured with tracemalloc on the registry alone
(`Streams` over `SampleStream.maker`, as the server builds it): its cursor
and its seats. With --shuffle the streams of a server share one
`EpochOrder` (order.py), whose caches (the windows a peek went through,
the layouts of the last epochs) are the server's, not a stream's: the
default stream, which the server opens and reads ahead for when it starts,
has them made before the measurement. While a stream is served, the
read-ahead peeks its next indices (`peek`, up to the read-ahead's size);
one test measures what a batch alone leaves, the other what a batch and a
peek as far as a read-ahead goes leave. The sources: the simulator of
--max-iterations 1,000,000, in index order and shuffled, and the shape of a
FineWeb-scale word-chunk dataset (117 million samples in 7,300 blocks,
mixed 512 at a time), shuffled and endless as a dataset is.
bench/idle_streams.py measures a real server's RSS the same way.
"""

import gc
import tracemalloc
from collections.abc import Collection
from typing import Any

import pytest

from data_simulator import SimulatedHealthData
from eirstream.sizing import SizeBounds
from eirstream.stream import SampleStream
from eirstream.streams import DEFAULT_STREAM, Streams

MIB = 2**20
STREAMS = 8
BATCH = 32
READ_AHEAD = SizeBounds().max_read_ahead  # the farthest the read-ahead peeks


class FineWebScale:
    """The shape of a FineWeb-scale word-chunk dataset, for the stream: its
    length, its row groups and its shuffle window; it makes no sample."""

    num_samples = 7300 * 16_027  # 117 million word chunks
    block_sizes = [16_027] * 7300
    shuffle_window = 512  # a dataset of word chunks mixes 512 at a time

    def indices_of(self, ids: Collection[str]) -> set[int]:
        return set()


SOURCES = {
    "simulator": (lambda: SimulatedHealthData(max_iterations=1_000_000), False, 1),
    "simulator, shuffled": (
        lambda: SimulatedHealthData(max_iterations=1_000_000),
        True,
        1,
    ),
    "FineWeb-scale, shuffled": (FineWebScale, True, None),
}


def left_by_runs(source: Any, shuffle: bool, epochs: int | None, peek: int) -> int:
    """Bytes that STREAMS named streams hold after a run on each connected,
    took a batch, had `peek` indices peeked ahead and went away."""
    streams = Streams(
        SampleStream.maker(source, epochs=epochs, shuffle=shuffle, seed=0)
    )
    # The server opens the default stream and reads ahead for it at start.
    streams.open(DEFAULT_STREAM).stream.peek(READ_AHEAD)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for k in range(STREAMS):
            stream = streams.open(f"run-{k}").stream
            conn = f"conn#{k}"
            stream.connect(conn)
            assert stream.take(conn, BATCH) is not None
            if peek:
                assert len(stream.peek(peek)) == peek
            stream.disconnect(conn)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(streams) == STREAMS + 1 and not streams.with_connections()
    for named in streams:
        status = named.stream.status()
        served = 0 if named.name == DEFAULT_STREAM else BATCH
        assert status["samples_served_total"] == served, named.name
    return after - before


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_stream_left_after_a_batch_holds_under_1_mib(name: str) -> None:
    make, shuffle, epochs = SOURCES[name]
    held = left_by_runs(make(), shuffle, epochs, peek=0)
    assert held / STREAMS < MIB, f"{held / STREAMS / 1024:,.0f} KiB per stream"


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_stream_left_after_its_read_ahead_peeked_holds_under_1_mib(
    name: str,
) -> None:
    make, shuffle, epochs = SOURCES[name]
    held = left_by_runs(make(), shuffle, epochs, peek=READ_AHEAD)
    assert held / STREAMS < MIB, f"{held / STREAMS / 1024:,.0f} KiB per stream"
