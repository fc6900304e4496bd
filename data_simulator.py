"""The tutorial's simulated data, and the stream the server reads it through.

Read top to bottom, this file has three parts:

1. `SimulatedHealthData`, the *sample source* the server streams by default:
   what the data looks like (`dataset_info`) and what sample number k is
   (`sample`, `samples`, `samples_json`). Sample k is generated from an RNG
   seeded by (seed, k) alone, so it is the same every time it is made: after
   a reset, after a restart, whatever the batch sizes or the process that
   makes it. single_sample_simulation.py holds the model itself; edit that
   file to change the data, or replace this class to stream your own (the
   server needs only the small interface of `eirstream.sources.SampleSource`).
2. The sample ids: sample k is called `sample_<k>` (eirstream.sample_ids
   writes and parses them; EIR sends them back as validation ids).
3. `DataSimulator`, the tutorial's simulator with its `position` and
   `reset`: one connection's view of the stream. The server keeps one
   stream (`eirstream.stream.SampleStream`) for all its connections, and
   that stream's rules keep many connections safe: no index twice within an
   epoch, validation ids never served, a reset that does not rewind under
   another connection, GPU ranks that end a pass level. They live in the
   package and are used here, not copied.
"""

import copy
import random
from collections.abc import Sequence
from typing import Any

from eirstream.eirformat import SampleLayout, value_json
from eirstream.sample_ids import (
    index_of_sample_id,
    indices_of_sample_ids,
    sample_id,
)
from eirstream.stream import SampleStream
from single_sample_simulation import simulate_sample

# -- 1. What each index gives -------------------------------------------------
# The `getInfo` payload: one sequence in (the prompt), one sequence out (the
# HR trace). EIR's layout of a sample, and its JSON, come from this alone.
DATASET_INFO: dict[str, Any] = {
    "inputs": {"text_input": {"type": "sequence"}},
    "outputs": {"text_output": {"type": "sequence"}},
}
LAYOUT = SampleLayout(DATASET_INFO)
# The sample's JSON from (id, prompt, trace), each written as JSON text.
WRITE_SAMPLE = LAYOUT.writer(inputs=["text_input"], outputs=["text_output"])


class SimulatedHealthData:
    """The tutorial's data: a prompt describing a person -> their HR trace."""

    def __init__(
        self,
        seed: int = 0,
        sequence_length: int = 64,
        max_iterations: int | None = None,
    ) -> None:
        """`max_iterations`: samples per epoch (None: an endless stream)."""
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
        """The `getInfo` payload (a copy: the caller may change it)."""
        return copy.deepcopy(DATASET_INFO)

    def simulate(self, index: int) -> tuple[str, str]:
        """(prompt, trace) of sample `index`: a function of (seed, index) alone."""
        # A string seed is hashed with SHA-512 by `random`: stable across runs,
        # platforms and PYTHONHASHSEED, and no two (seed, index) pairs collide.
        rng = random.Random(f"{self.seed}:{index}")
        return simulate_sample(rng, self.sequence_length)

    def sample(self, index: int) -> dict[str, Any]:
        """Sample `index` as EIR expects it (eirstream.eirformat's layout)."""
        prompt, trace = self.simulate(index)
        return LAYOUT.sample(
            sample_id(index), {"text_input": prompt}, {"text_output": trace}
        )

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.sample(i) for i in indices]

    def samples_json(self, indices: Sequence[int]) -> list[str]:
        """Each sample's compact JSON text: json.dumps(sample(i),
        separators=(",", ":")), written without building the dicts.

        Optional in a source: the server uses it when present. Any text the
        model writes is escaped (quotes, backslashes, newlines, any Unicode),
        so eirtrain receives exactly the prompt and trace made here.
        """
        out = []
        for index in indices:
            prompt, trace = self.simulate(index)
            out.append(
                WRITE_SAMPLE(
                    value_json(sample_id(index)), value_json(prompt), value_json(trace)
                )
            )
        return out

    # -- 2. The sample ids ------------------------------------------------------
    def index_of(self, sample_id: str) -> int | None:
        """k for `sample_<k>` with k below `num_samples`, else None."""
        return index_of_sample_id(sample_id, self.num_samples)

    def indices_of(self, sample_ids: Sequence[str]) -> set[int]:
        """`index_of` of a whole list at once (EIR sends tens of thousands)."""
        return indices_of_sample_ids(sample_ids, self.num_samples)


# -- 3. The stream, with its position and reset ---------------------------------
class DataSimulator:
    """The tutorial's simulator: `get_batch` hands out the next samples from
    `position`, `reset` goes back to the start, and an empty batch means the
    pass is over (the server then sends EIR `["terminate"]`).

    Each `DataSimulator` is one connection reading a `SampleStream`, the
    shared stream the server builds for its source with
    `SampleStream.for_source`. Give several simulators the same `stream` and
    they behave as the server's connections do: they share one position.

        simulator = DataSimulator(SimulatedHealthData(max_iterations=100))
        batch = simulator.get_batch(32)  # samples 0..31
        simulator.position  # 32
        simulator.reset()  # back to 0: nobody else is in the pass
    """

    def __init__(
        self,
        source: SimulatedHealthData | None = None,
        stream: SampleStream | None = None,
    ) -> None:
        self.source = SimulatedHealthData() if source is None else source
        self.stream = SampleStream.for_source(self.source) if stream is None else stream
        self.connection = object()  # this simulator's seat in the stream
        self.stream.connect(self.connection)

    @property
    def position(self) -> int:
        """The stream's position in its epoch: the next index to hand out."""
        return self.stream.status()["current_position"]

    def reset(self) -> bool:
        """Back to the start of the stream, unless another connection sharing
        it is mid-pass: then this one joins that pass. True if it rewound."""
        return self.stream.reset(self.connection).rewound

    def get_batch(self, batch_size: int) -> list[dict[str, Any]]:
        """The next `batch_size` samples; [] once the pass is over."""
        indices = self.stream.take(self.connection, batch_size)
        return [] if indices is None else self.source.samples(indices)

    def set_validation_ids(self, validation_ids: Sequence[str]) -> None:
        """Never hand out these samples (EIR keeps them for validation)."""
        self.stream.set_validation_ids(validation_ids)

    def close(self) -> None:
        """Leave the stream: as a connection closing, it moves nobody."""
        self.stream.disconnect(self.connection)
