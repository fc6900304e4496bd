"""A near-free sample source: 1,024 samples made once, then only relabelled.

Sample k is the pool's sample k % 1024 with the id `sample_<k>`, so making a
sample costs a string concatenation. Served by our server it measures the
server's own cost per sample (stream bookkeeping, messages, sockets), which
the benchmark compares with a server that does nothing but send the same
bytes (bench/ceiling_server.py). Use it as

    python simulation_streamer.py --source bench/pool_source.py:make_source
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_simulator import SAMPLE_ID_PREFIX, SimulatedHealthData, sample_id

POOL_SIZE = 1024


class PooledSamples(SimulatedHealthData):
    """The first POOL_SIZE simulated samples, repeated with fresh ids."""

    def __init__(
        self,
        seed: int = 0,
        sequence_length: int = 64,
        max_iterations: int | None = None,
    ) -> None:
        super().__init__(seed, sequence_length, max_iterations)
        made = SimulatedHealthData(seed, sequence_length)
        self._pool = made.samples(range(POOL_SIZE))
        # Each sample's JSON up to its id, which is always the last key.
        suffix = f'"{SAMPLE_ID_PREFIX}'
        self._heads = [
            text[: text.rindex(suffix)] for text in made.samples_json(range(POOL_SIZE))
        ]

    def sample(self, index: int) -> dict[str, Any]:
        pooled = self._pool[index % POOL_SIZE]
        return {**pooled, "sample_id": sample_id(index)}

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        heads = self._heads
        return [f'{heads[i % POOL_SIZE]}"{SAMPLE_ID_PREFIX}{i}"}}' for i in indices]


def make_source(
    seed: int = 0, sequence_length: int = 64, max_iterations: int | None = None
) -> PooledSamples:
    return PooledSamples(seed, sequence_length, max_iterations)
