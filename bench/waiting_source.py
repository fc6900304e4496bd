"""A source that waits: each sample takes a few milliseconds of wall time
and hardly any CPU, as a source reading remote files, a database or a
network simulator does. Sample k holds simulated sample k % 256 under its
own id.

    --source bench/waiting_source.py:make        3 ms a sample
    --source bench/waiting_source.py:make_large  3 ms a sample of 64 KiB
    --source bench/waiting_source.py:make_slow   20 ms a sample
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from data_simulator import SimulatedHealthData

DISTINCT = 256  # (prompt, trace) pairs, made once


class Waiting(SimulatedHealthData):
    def __init__(self, wait: float, padding: int = 0, **settings) -> None:
        super().__init__(**settings)
        self.wait = wait
        self.filler = "x" * padding
        self.made = [SimulatedHealthData.simulate(self, k) for k in range(DISTINCT)]

    def simulate(self, index: int) -> tuple[str, str]:
        """A (prompt, trace) made once: a sample costs next to no CPU."""
        return self.made[index % DISTINCT]

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        time.sleep(self.wait * len(indices))
        texts = super().samples_json(indices)
        if self.filler:  # a large sample: an extra key before the id
            texts = [f'{t[:-1]},"filler":"{self.filler}"}}' for t in texts]
        return texts


def make(**settings) -> Waiting:
    return Waiting(0.003, **settings)


def make_large(**settings) -> Waiting:
    return Waiting(0.003, padding=64 * 1024, **settings)


def make_slow(**settings) -> Waiting:
    return Waiting(0.020, **settings)
