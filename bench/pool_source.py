"""A near-free sample source: 1,024 samples made once, then served again and again.

Sample k is the pool's sample k % 1024, exactly as made, sample id included:
the ids repeat every 1,024 samples, which a benchmark client does not mind
(a training run would: EIR keys its validation set by id). Making a sample
costs a list lookup, so served by our server it measures the server's own
cost per sample (stream bookkeeping, tasks, messages, sockets), which the
benchmark compares with a server that does nothing but send the same bytes
(bench/ceiling_server.py). Use it as

    python simulation_streamer.py --source bench/pool_source.py:make_source
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_simulator import SimulatedHealthData

POOL_SIZE = 1024


class PooledSamples(SimulatedHealthData):
    """The first POOL_SIZE simulated samples, repeated."""

    def __init__(
        self,
        seed: int = 0,
        sequence_length: int = 64,
        max_iterations: int | None = None,
    ) -> None:
        super().__init__(seed, sequence_length, max_iterations)
        made = SimulatedHealthData(seed, sequence_length)
        self._pool = made.samples(range(POOL_SIZE))
        self._texts = made.samples_json(range(POOL_SIZE))

    def sample(self, index: int) -> dict[str, Any]:
        return self._pool[index % POOL_SIZE]

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        texts = self._texts
        return [texts[i % POOL_SIZE] for i in indices]


def make_source(
    seed: int = 0, sequence_length: int = 64, max_iterations: int | None = None
) -> PooledSamples:
    return PooledSamples(seed, sequence_length, max_iterations)
