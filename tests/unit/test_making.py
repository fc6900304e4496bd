"""Making a task (eirstream/making.py): `encode_task` asks the source for a
task's samples and lays them out as bytes, and a reply's span of a made task
comes out whole. Pure: the source is called in this process.
"""

import json
import random
from collections.abc import Iterable
from itertools import pairwise

from data_simulator import SimulatedHealthData
from eirstream.making import encode_task
from eirstream.tasks import Task, TaskEvent


def test_a_source_giving_the_wrong_number_of_samples_fails_those_indices() -> None:
    # A samples_json that drops a sample would shift every later sample onto
    # the wrong index; each index is then made alone, and fails by name.
    class Short(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            return super().samples_json(indices)[:-1]

    made = encode_task(Short(seed=0), [4, 5, 6])
    assert (made.blob, made.offsets) == (b"", [0, 0, 0, 0])  # no bytes for any
    assert sorted(made.failures) == [4, 5, 6]
    assert "samples_json gave 0 samples for 1 indices" in made.failures[5]


def test_a_task_locates_its_samples_by_bytes_even_for_non_ascii_text() -> None:
    # A sample's place in a made task's bytes is counted in UTF-8 bytes, which is
    # not its length in characters once the text is not ASCII.
    class Accented(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            return [
                json.dumps(
                    {"prompt": "café ☕" * i, "sample_id": f"sample_{i}"},
                    ensure_ascii=False,
                )
                for i in indices
            ]

    blob, offsets, failures, _ = encode_task(Accented(seed=0), [3, 1, 2])
    assert not failures and offsets[-1] == len(blob)
    samples = [json.loads(blob[a : b - 1]) for a, b in pairwise(offsets)]
    assert [s["prompt"] for s in samples] == ["café ☕" * i for i in (3, 1, 2)]
    assert [blob[b - 1 : b] for b in offsets[1:]] == [b","] * 3


def test_an_empty_sample_text_takes_no_bytes_and_leaves_its_neighbours_whole() -> None:
    # The offsets must describe the blob exactly, or the server cannot use
    # the made task at all: an empty text is left out, like a failed sample.
    class Gap(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            texts = super().samples_json(indices)
            return ["" if i == 5 else t for i, t in zip(indices, texts, strict=True)]

    blob, offsets, *_ = encode_task(Gap(seed=0), [4, 5, 6])
    assert offsets[-1] == len(blob) and offsets[1] == offsets[2]
    kept = [json.loads(blob[a : b - 1]) for a, b in pairwise(offsets) if b > a]
    assert [s["sample_id"] for s in kept] == ["sample_4", "sample_6"]


def test_a_shuffled_task_is_asked_of_the_source_in_index_order() -> None:
    # A dataset reads a row group once per task only if the source sees each
    # slice in ascending order; the blob must still follow the order asked,
    # failed samples (here at a slice's edge) taking no bytes.
    asked: list[list[int]] = []

    class Records(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            asked.append(list(indices))
            if 511 in indices or 2000 in indices:
                raise ValueError("a sample that cannot be made")
            return super().samples_json(indices)

    rng = random.Random(3)
    indices = [*rng.sample([i for i in range(3000) if i not in (511, 2000)], 1498)]
    indices[100:100] = [2000]
    indices[900:900] = [511]
    made = encode_task(Records(seed=0), indices)
    assert set(made.failures) == {511, 2000}
    slices = [a for a in asked if len(a) > 1]
    assert sorted(i for a in slices for i in a) == sorted(indices)
    assert len(slices) == 3
    assert all(a == sorted(a) for a in slices) and slices == sorted(slices)
    reference = SimulatedHealthData(seed=0)
    for k, (start, stop) in enumerate(pairwise(made.offsets)):
        if indices[k] in made.failures:
            assert start == stop
        else:
            text = made.blob[start : stop - 1].decode()
            assert text == reference.samples_json([indices[k]])[0]


async def test_a_span_of_samples_comes_out_whole_around_failed_ones() -> None:
    # A reply is a slice of a made task's blob: it must hold every sample of the
    # span, in order, with nothing cut or doubled, also when samples inside
    # the span or at its edges failed (they take no bytes). The failures sit
    # where the source is asked for a new slice of ENCODE_SLICE samples.
    class FailsAtSlices(SimulatedHealthData):
        def samples_json(self, indices: list[int]) -> list[str]:
            if 511 in indices or 1024 in indices:
                raise ValueError("a sample at a slice's edge")
            return super().samples_json(indices)

    for source, missing in (
        (SimulatedHealthData(seed=0), set()),
        (FailsAtSlices(seed=0), {511, 1024}),
    ):
        task = Task(list(range(1200)))
        made = encode_task(source, task.indices)
        assert set(made.failures) == missing
        task.enter(TaskEvent.SUBMITTED)
        task.enter(TaskEvent.FINISHED, made=made)
        texts = SimulatedHealthData(seed=0).samples_json(range(1200))
        for start, stop in [
            (0, 1200),
            (500, 530),
            (511, 513),
            (511, 512),
            (1023, 1025),
            (300, 1100),
        ]:
            piece, count = task.samples(start, stop)
            kept = [
                t for i, t in enumerate(texts[start:stop], start) if i not in missing
            ]
            assert count == len(kept), (start, stop)
            assert bytes(piece) == comma_terminated(kept)


def comma_terminated(texts: Iterable[str]) -> bytes:
    """Sample texts as a made task holds them: UTF-8, each followed by a comma."""
    return "".join(text + "," for text in texts).encode()
