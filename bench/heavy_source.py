"""A heavy sample source for the benchmark: a fixed amount of CPU per sample.

Stands in for a real simulator that spends milliseconds per sample. Sample k
first runs ROUNDS chained SHA-256 hashes seeded by (seed, k), in a Python
loop that holds the GIL the way simulator code does (about 3 ms on the
benchmark machine; the benchmark prints the measured time), then makes the
tutorial's sample from an RNG seeded by (seed, k, final digest). So the work
cannot be skipped, every sample depends only on its index, and the samples
fit the bundled EIR configs. Use it as

    python simulation_streamer.py --source bench/heavy_source.py:make_source

The tests that kill a worker mid-pass serve it too
(tests/server/test_local_pool.py, tests/server/test_cluster.py, through
`bench_source` of tests/support/exact_pass.py): at ~3 ms a sample, a pass
lasts long enough to kill a worker in the middle.
"""

from __future__ import annotations

import random
from hashlib import sha256

from data_simulator import SimulatedHealthData
from single_sample_simulation import simulate_sample

ROUNDS = 3000


def burn(seed: int, index: int, rounds: int = ROUNDS) -> str:
    """The hex digest after `rounds` chained SHA-256 of f"{seed}:{index}"."""
    digest = sha256(f"{seed}:{index}".encode()).digest()
    for _ in range(rounds):
        digest = sha256(digest).digest()
    return digest.hex()


class HeavySimulatedHealthData(SimulatedHealthData):
    """SimulatedHealthData with ROUNDS hashes of work before each sample."""

    def simulate(self, index: int) -> tuple[str, str]:
        rng = random.Random(f"{self.seed}:{index}:{burn(self.seed, index)}")
        return simulate_sample(rng, self.sequence_length)


def make_source(
    seed: int = 0, sequence_length: int = 64, max_iterations: int | None = None
) -> HeavySimulatedHealthData:
    return HeavySimulatedHealthData(seed, sequence_length, max_iterations)
