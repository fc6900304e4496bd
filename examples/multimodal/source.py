"""A simulated patient with five input modalities and five output modalities.

Serve it with the repository's server (run from the repository root):

    python simulation_streamer.py --source examples.multimodal.source:make_source

Every sample is drawn from a `random.Random` seeded by (seed, index) alone,
so sample k is the same whenever and wherever it is made. Two hidden traits
drive everything, which gives the model something to learn:

* `group` (A, B or C) and `severity` (uniform in [0, 1]).

Inputs (what the model sees):

* `notes` (sequence): eight words; some name the group (alpha/beta/gamma),
  one grades the severity (mild/moderate/severe), the rest are filler.
* `clinical` (tabular): `site` (categorical noise), `age` (continuous
  noise) and `marker` (continuous: 10 * severity plus noise).
* `genotypes` (omics, 4 x 32 one-hot): SNPs 0-7 carry the group index as
  their genotype (0, 1, 2) 80% of the time; the other SNPs are random.
* `signal` (array, 4 x 16 float32): four noisy sine waves whose frequency is
  set by the group and amplitude by the severity.
* `scan` (image, 16 x 16 RGB): a noisy background with a bright square whose
  column is set by the group and brightness by the severity.

Outputs (what the model learns to predict):

* `diagnosis` (tabular): `group` (categorical) and `score` (continuous,
  10 * severity + 2 * group index plus noise).
* `profile` (array, 4 x 4 float32): a function of severity and group.
* `mask` (image, 16 x 16 grey): where the square of `scan` is (255 inside).
* `summary` (sequence): "group <a|b|c> <mild|moderate|severe>".
* `outcome` (survival): `event` and `time`; higher severity means an earlier
  event, which is observed more often before censoring at 10.

The factory ignores `sequence_length` (the sizes above are fixed, matching
the configs next to this file); `max_iterations` bounds the stream.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from eirstream.eirformat import build_sample
from eirstream.encoders import (
    encode_array,
    encode_image,
    encode_omics,
    one_hot_genotypes,
    survival_row,
    tabular_row,
)
from eirstream.sample_ids import index_of_sample_id, indices_of_sample_ids, sample_id

GROUPS = ("A", "B", "C")
GROUP_WORDS = ("alpha", "beta", "gamma")
FILLER = ("patient", "visit", "reports", "stable", "follow", "up", "noted", "today")
SITES = ("north", "south", "east", "west")
SEVERITY_WORDS = ("mild", "moderate", "severe")

N_SNPS = 32
SIGNAL_SHAPE = (4, 16)
PROFILE_SHAPE = (4, 4)
IMAGE_SIZE = 16
SQUARE = 4
CENSOR_AT = 10.0

DATASET_INFO: dict[str, Any] = {
    "inputs": {
        "notes": {"type": "sequence"},
        "clinical": {"type": "tabular"},
        "genotypes": {"type": "omics", "shape": [4, N_SNPS]},
        "signal": {"type": "array", "shape": list(SIGNAL_SHAPE)},
        "scan": {"type": "image", "shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "mode": "RGB"},
    },
    "outputs": {
        "diagnosis": {"type": "tabular"},
        "profile": {"type": "array", "shape": list(PROFILE_SHAPE)},
        "mask": {"type": "image", "shape": [IMAGE_SIZE, IMAGE_SIZE, 1], "mode": "L"},
        "summary": {"type": "sequence"},
        "outcome": {"type": "survival"},
    },
}


def severity_word(severity: float) -> str:
    return SEVERITY_WORDS[min(int(severity * 3), 2)]


def square_origin(group: int) -> tuple[int, int]:
    """(row, column) of the top-left corner of the bright square of `scan`."""
    return 6, 1 + group * 5


class MultimodalSource:
    """The sample source: the `SampleSource` interface of sample_sources.py."""

    def __init__(self, seed: int = 0, max_iterations: int | None = None) -> None:
        if max_iterations is not None and max_iterations < 0:
            raise ValueError(
                f"max_iterations must be 0 or more (or None), got {max_iterations}"
            )
        self.seed = seed
        self.num_samples = max_iterations

    def dataset_info(self) -> dict[str, Any]:
        return DATASET_INFO

    def index_of(self, sample_id: str) -> int | None:
        return index_of_sample_id(sample_id, self.num_samples)

    def indices_of(self, sample_ids: Sequence[str]) -> set[int]:
        # Optional: all validation ids at once (faster than index_of per id).
        return indices_of_sample_ids(sample_ids, self.num_samples)

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.sample(i) for i in indices]

    def traits(self, index: int) -> tuple[random.Random, int, float]:
        """The seeded RNG of sample `index`, after drawing its hidden traits."""
        rng = random.Random(f"multimodal:{self.seed}:{index}")
        return rng, rng.randrange(3), rng.random()

    def sample(self, index: int) -> dict[str, Any]:
        rng, group, severity = self.traits(index)
        inputs = {
            "notes": self._notes(rng, group, severity),
            "clinical": tabular_row(
                {
                    "site": rng.choice(SITES),
                    "age": rng.randint(20, 80),
                    "marker": round(10 * severity + rng.gauss(0, 0.5), 3),
                }
            ),
            "genotypes": encode_omics(one_hot_genotypes(self._genotypes(rng, group))),
            "signal": encode_array(self._signal(rng, group, severity)),
            "scan": encode_image(self._scan(rng, group, severity)),
        }
        event_time = rng.expovariate(0.05 + 0.5 * severity)
        outputs = {
            "diagnosis": tabular_row(
                {
                    "group": GROUPS[group],
                    "score": round(10 * severity + 2 * group + rng.gauss(0, 0.3), 3),
                }
            ),
            "profile": encode_array(
                [
                    [severity * (i + 1) + 0.5 * group * (j % 2) for j in range(4)]
                    for i in range(PROFILE_SHAPE[0])
                ]
            ),
            "mask": encode_image(self._mask(group)),
            "summary": f"group {GROUPS[group].lower()} {severity_word(severity)}",
            "outcome": survival_row(
                event=event_time <= CENSOR_AT,
                time=round(min(event_time, CENSOR_AT), 3),
                event_column="event",
                time_column="time",
            ),
        }
        return build_sample(DATASET_INFO, sample_id(index), inputs, outputs)

    # -- one modality each ---------------------------------------------------
    @staticmethod
    def _notes(rng: random.Random, group: int, severity: float) -> str:
        words = [
            GROUP_WORDS[group] if rng.random() < 0.5 else rng.choice(FILLER)
            for _ in range(7)
        ]
        words.insert(rng.randrange(8), severity_word(severity))
        return " ".join(words)

    @staticmethod
    def _genotypes(rng: random.Random, group: int) -> list[int]:
        return [
            group if snp < 8 and rng.random() < 0.8 else rng.randrange(3)
            for snp in range(N_SNPS)
        ]

    @staticmethod
    def _signal(rng: random.Random, group: int, severity: float) -> list[list[float]]:
        channels, length = SIGNAL_SHAPE
        frequency = (group + 1) / length
        return [
            [
                (0.5 + severity) * math.sin(2 * math.pi * frequency * t + c)
                + rng.gauss(0, 0.1)
                for t in range(length)
            ]
            for c in range(channels)
        ]

    @staticmethod
    def _scan(rng: random.Random, group: int, severity: float) -> list[list[list[int]]]:
        top, left = square_origin(group)
        level = 120 + int(135 * severity)
        return [
            [
                [level, level, 60]
                if top <= y < top + SQUARE and left <= x < left + SQUARE
                else [rng.randrange(40), rng.randrange(40), rng.randrange(40)]
                for x in range(IMAGE_SIZE)
            ]
            for y in range(IMAGE_SIZE)
        ]

    @staticmethod
    def _mask(group: int) -> list[list[int]]:
        top, left = square_origin(group)
        return [
            [
                255 if top <= y < top + SQUARE and left <= x < left + SQUARE else 0
                for x in range(IMAGE_SIZE)
            ]
            for y in range(IMAGE_SIZE)
        ]


def make_source(
    seed: int = 0, max_iterations: int | None = None, **_ignored: Any
) -> MultimodalSource:
    """The factory for `--source examples.multimodal.source:make_source`."""
    return MultimodalSource(seed=seed, max_iterations=max_iterations)
