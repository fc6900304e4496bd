"""The tutorial's simulated data: what sample number k is, and its id.

`SimulatedHealthData` is the *sample source* the server streams by default:
it knows what the data looks like (`dataset_info`) and makes sample number k
(`sample`, `samples`). Sample k is generated from an RNG seeded by
(seed, k) alone, so it is the same every time it is produced: after a reset,
after a restart, whatever the batch sizes or the process that makes it.
Replace this class to stream your own data; the server only needs the small
interface of `eirstream.sources.SampleSource`.
"""

import random
from collections.abc import Sequence
from typing import Any

from eirstream.sample_ids import (
    SAMPLE_ID_PREFIX,
    index_of_sample_id,
    indices_of_sample_ids,
    sample_id,
)
from single_sample_simulation import simulate_sample


class SimulatedHealthData:
    """The tutorial's data: a prompt describing a person -> their HR trace."""

    def __init__(
        self,
        seed: int = 0,
        sequence_length: int = 64,
        max_iterations: int | None = None,
    ) -> None:
        if sequence_length < 1:
            raise ValueError(
                f"sequence_length must be at least 1, got {sequence_length}"
            )
        if max_iterations is not None and max_iterations < 0:
            raise ValueError(
                f"max_iterations must be 0 or more (or None), got {max_iterations}"
            )
        self.seed = seed
        self.sequence_length = sequence_length
        self.num_samples = max_iterations

    def dataset_info(self) -> dict[str, Any]:
        return {
            "inputs": {"text_input": {"type": "sequence"}},
            "outputs": {"text_output": {"type": "sequence"}},
        }

    def simulate(self, index: int) -> tuple[str, str]:
        """(prompt, trace) of sample `index`: a function of (seed, index) alone."""
        # A string seed is hashed with SHA-512 by `random`: stable across runs,
        # platforms and PYTHONHASHSEED, and no two (seed, index) pairs collide.
        rng = random.Random(f"{self.seed}:{index}")
        return simulate_sample(rng, self.sequence_length)

    def sample(self, index: int) -> dict[str, Any]:
        prompt, trace = self.simulate(index)
        return {
            "inputs": {"text_input": prompt, "text_output": trace},
            "target_labels": {"text_output": {"text_output": trace}},
            "sample_id": sample_id(index),
        }

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.sample(i) for i in indices]

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        """Each sample's compact JSON text, as json.dumps(sample(i),
        separators=(",", ":")) would give it, without building the dicts.

        Optional in a source: the server uses it when present. The texts
        need no escaping: prompts and traces are printable ASCII without
        quotes or backslashes (a test checks the equality).
        """
        out = []
        for index in indices:
            prompt, trace = self.simulate(index)
            out.append(
                f'{{"inputs":{{"text_input":"{prompt}","text_output":"{trace}"}},'
                f'"target_labels":{{"text_output":{{"text_output":"{trace}"}}}},'
                f'"sample_id":"{SAMPLE_ID_PREFIX}{index}"}}'
            )
        return out

    def index_of(self, sample_id: str) -> int | None:
        return index_of_sample_id(sample_id, self.num_samples)

    def indices_of(self, sample_ids: Sequence[str]) -> set[int]:
        return indices_of_sample_ids(sample_ids, self.num_samples)
