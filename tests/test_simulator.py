"""The sample source (`SimulatedHealthData`) and one connection on the stream.

The source must hand EIR samples in exactly the shape docs/protocol.md gives
under "Samples"; the stream is exercised here from a single connection
(several connections at once are the subject of the concurrency tests).
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from data_simulator import SampleStream, SimulatedHealthData, sample_id
from sample_sources import SampleSource

# The tutorial's keys, then this server's own.
STATUS_KEYS = {"current_position", "max_iterations", "remaining_iterations"} | {
    "phase",
    "samples_served_in_pass",
    "samples_served_total",
    "rewinds",
    "open_connections",
    "connections_in_pass",
    "validation_ids",
    "validation_ids_received",
}
CONN = "conn-1"


# -- SimulatedHealthData ---------------------------------------------------------
def test_sample_has_exactly_the_format_eir_expects() -> None:
    source = SimulatedHealthData(seed=0)
    sample = source.sample(17)
    assert set(sample) == {"inputs", "target_labels", "sample_id"}
    # inputs: the configured input plus the linked output of the same name.
    assert set(sample["inputs"]) == {"text_input", "text_output"}
    prompt = sample["inputs"]["text_input"]
    trace = sample["inputs"]["text_output"]
    assert isinstance(prompt, str) and prompt.startswith("<START> |Time of HR")
    assert isinstance(trace, str) and len(trace.split(" ")) == 64
    # target_labels: a sequence output is nested {name: {name: value}}.
    assert sample["target_labels"] == {"text_output": {"text_output": trace}}
    assert sample["sample_id"] == "sample_17"
    # It survives the trip through JSON unchanged.
    assert json.loads(json.dumps(sample)) == sample


def test_sample_ids_count_from_zero() -> None:
    source = SimulatedHealthData(seed=4)
    ids = [s["sample_id"] for s in source.samples(range(12))]
    assert ids == [f"sample_{k}" for k in range(12)]
    assert [sample_id(k) for k in (0, 9, 10, 12345)] == [
        "sample_0",
        "sample_9",
        "sample_10",
        "sample_12345",
    ]


def test_dataset_info_lists_text_input_as_input_and_text_output_as_output() -> None:
    info = SimulatedHealthData().dataset_info()
    assert set(info) == {"inputs", "outputs"}
    assert list(info["inputs"]) == ["text_input"]
    assert list(info["outputs"]) == ["text_output"]
    assert info["inputs"]["text_input"]["type"] == "sequence"
    assert info["outputs"]["text_output"]["type"] == "sequence"
    json.dumps(info)  # it is sent as JSON


def test_source_satisfies_the_sample_source_interface() -> None:
    source = SimulatedHealthData(max_iterations=5)
    assert isinstance(source, SampleSource)
    assert source.num_samples == 5
    assert SimulatedHealthData().num_samples is None


@pytest.mark.parametrize("index", [0, 1, 9, 10, 99, 299])
def test_index_of_round_trips_sample_ids(index: int) -> None:
    source = SimulatedHealthData(max_iterations=300)
    assert source.index_of(source.sample(index)["sample_id"]) == index


@pytest.mark.parametrize(
    "bad",
    [
        "sample_300",  # beyond the bounded stream
        "sample_-1",
        "sample_01",  # not how the stream spells index 1
        "sample_",
        "sample",
        "Sample_1",
        "sample_1 ",
        " sample_1",
        "sample_1.0",
        "sample_+1",
        "sample_1e3",
        "sample_١",  # an Arabic-Indic digit: int() would take it, the stream never
        "1",
        "",
        "other_1",
    ],
)
def test_index_of_rejects_what_the_stream_never_produces(bad: str) -> None:
    assert SimulatedHealthData(max_iterations=300).index_of(bad) is None


@pytest.mark.parametrize("bad", [None, 1, 1.0, ["sample_1"], b"sample_1"])
def test_index_of_rejects_non_strings(bad: object) -> None:
    assert SimulatedHealthData(max_iterations=300).index_of(bad) is None  # type: ignore[arg-type]


def test_index_of_on_an_unbounded_source_accepts_any_index() -> None:
    source = SimulatedHealthData()
    assert source.index_of("sample_0") == 0
    assert source.index_of("sample_123456789012") == 123456789012


@pytest.mark.parametrize("length", [1, 7, 64, 512])
def test_sequence_length_is_honoured(length: int) -> None:
    source = SimulatedHealthData(sequence_length=length)
    for sample in source.samples([0, 1, 2]):
        assert len(sample["inputs"]["text_output"].split(" ")) == length
        assert (
            sample["target_labels"]["text_output"]["text_output"]
            == (sample["inputs"]["text_output"])
        )


def test_samples_json_is_the_compact_json_of_each_sample() -> None:
    source = SimulatedHealthData(seed=7, sequence_length=64)
    indices = [*range(50), 10**9]
    assert source.samples_json(indices) == [
        json.dumps(sample, separators=(",", ":")) for sample in source.samples(indices)
    ]


def test_samples_do_not_depend_on_the_process_or_hash_seed() -> None:
    code = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]); "
        "from data_simulator import SimulatedHealthData as S; "
        "t = ''.join(S(seed=3, sequence_length=100).samples_json(range(200))); "
        "print(hashlib.sha256(t.encode()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        digests.add(
            subprocess.run(
                [sys.executable, "-c", code, str(ROOT)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.strip()
        )
    here = "".join(
        SimulatedHealthData(seed=3, sequence_length=100).samples_json(range(200))
    )
    assert digests == {hashlib.sha256(here.encode()).hexdigest()}


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"sequence_length": 0}, "sequence_length"),
        ({"sequence_length": -5}, "sequence_length"),
        ({"max_iterations": -1}, "max_iterations"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(
    kwargs: dict, named: str
) -> None:
    (value,) = kwargs.values()
    with pytest.raises(ValueError, match=rf"{named}.*{value}"):
        SimulatedHealthData(**kwargs)


def test_zero_samples_is_a_valid_empty_stream() -> None:
    source = SimulatedHealthData(max_iterations=0)
    stream = SampleStream(source.num_samples)
    stream.connect(CONN)
    assert stream.take(CONN, 5) is None
    assert stream.status()["remaining_iterations"] == 0


# -- SampleStream, one connection ----------------------------------------------------
def new_stream(num_samples: int | None) -> SampleStream:
    stream = SampleStream(num_samples)
    stream.connect(CONN)
    return stream


def test_fresh_stream_status() -> None:
    status = new_stream(300).status()
    assert set(status) >= STATUS_KEYS
    assert status["current_position"] == 0
    assert status["max_iterations"] == 300
    assert status["remaining_iterations"] == 300
    assert status["open_connections"] == 1
    assert status["samples_served_total"] == 0
    json.dumps(status)  # it goes into a status reply


@pytest.mark.parametrize("batch", [1, 7, 32, 100, 299, 300, 1000])
def test_batches_cover_the_stream_in_order_with_a_partial_last_one(batch: int) -> None:
    stream = new_stream(300)
    served: list[int] = []
    sizes = []
    while (indices := stream.take(CONN, batch)) is not None:
        served += indices
        sizes.append(len(indices))
        assert stream.status()["current_position"] == len(served)
        assert stream.status()["remaining_iterations"] == 300 - len(served)
    assert served == list(range(300))
    full, rest = divmod(300, batch)
    assert sizes == [batch] * full + ([rest] if rest else [])


def test_exhausted_stream_answers_none_every_time_and_stays_put() -> None:
    stream = new_stream(10)
    assert stream.take(CONN, 10) == list(range(10))
    for _ in range(5):
        assert stream.take(CONN, 3) is None
    status = stream.status()
    assert status["current_position"] == 10
    assert status["remaining_iterations"] == 0
    assert status["samples_served_total"] == 10
    assert status["connections_in_pass"] == 0  # told "terminate": pass over


@pytest.mark.parametrize("count", [0, -1])
def test_take_rejects_a_count_below_one_and_changes_nothing(count: int) -> None:
    stream = new_stream(10)
    stream.take(CONN, 3)
    before = stream.status()
    with pytest.raises(ValueError, match=str(count)):
        stream.take(CONN, count)
    assert stream.status() == before


def test_reset_rewinds_and_replays_the_same_indices_and_samples() -> None:
    source = SimulatedHealthData(seed=7, max_iterations=50)
    stream = new_stream(source.num_samples)
    first = [stream.take(CONN, 8), stream.take(CONN, 8), stream.take(CONN, 5)]
    first_samples = source.samples([i for batch in first for i in batch])

    outcome = stream.reset(CONN)
    assert outcome.rewound and outcome.position == 0 and outcome.returned == 0
    status = stream.status()
    assert status["current_position"] == 0
    assert status["remaining_iterations"] == 50
    assert status["rewinds"] == 1

    again = [stream.take(CONN, 8), stream.take(CONN, 8), stream.take(CONN, 5)]
    assert again == first == [list(range(8)), list(range(8, 16)), list(range(16, 21))]
    again_samples = SimulatedHealthData(seed=7, max_iterations=50).samples(
        [i for batch in again for i in batch]
    )
    assert again_samples == first_samples
    assert again_samples[0]["sample_id"] == "sample_0"


def test_reset_after_exhaustion_starts_a_new_pass() -> None:
    stream = new_stream(5)
    assert stream.take(CONN, 10) == [0, 1, 2, 3, 4]
    assert stream.take(CONN, 10) is None
    assert stream.reset(CONN).rewound
    assert stream.take(CONN, 10) == [0, 1, 2, 3, 4]
    status = stream.status()
    assert status["samples_served_in_pass"] == 5
    assert status["samples_served_total"] == 10


def test_status_counts_what_was_served() -> None:
    stream = new_stream(100)
    stream.take(CONN, 30)
    stream.take(CONN, 12)
    status = stream.status()
    assert status["current_position"] == 42
    assert status["remaining_iterations"] == 58
    assert status["samples_served_in_pass"] == 42
    assert status["samples_served_total"] == 42
    assert status["connections_in_pass"] == 1
    assert status["rewinds"] == 0
    assert status["phase"] == "setup"


def test_unbounded_stream_never_ends() -> None:
    stream = new_stream(None)
    served: list[int] = []
    for _ in range(50):
        indices = stream.take(CONN, 1000)
        assert indices is not None and len(indices) == 1000
        served += indices
    assert served == list(range(50_000))
    status = stream.status()
    assert status["max_iterations"] is None
    assert status["remaining_iterations"] is None
    assert status["current_position"] == 50_000


def test_connecting_and_disconnecting_never_move_the_cursor() -> None:
    stream = new_stream(100)
    stream.take(CONN, 40)
    stream.connect("other")
    assert stream.status()["open_connections"] == 2
    stream.disconnect("other")
    stream.disconnect(CONN)
    status = stream.status()
    assert status["open_connections"] == 0
    assert status["current_position"] == 40
    assert status["rewinds"] == 0
    stream.connect("later")
    assert stream.take("later", 5) == [40, 41, 42, 43, 44]


def test_validation_ids_are_skipped_in_every_pass() -> None:
    stream = new_stream(20)
    ids = ["sample_0", "sample_3", "sample_4", "sample_19", "sample_7"]
    assert stream.set_validation_ids(ids) == (5, 5)
    expected = [i for i in range(20) if i not in {0, 3, 4, 7, 19}]
    status = stream.status()
    assert status["phase"] == "training"
    assert status["validation_ids"] == 5
    assert status["validation_ids_received"] == 5
    assert status["remaining_iterations"] == len(expected)
    for _ in range(2):  # before and after a rewind
        served: list[int] = []
        while (indices := stream.take(CONN, 4)) is not None:
            assert len(indices) == 4 or not stream.peek(1)  # full batches but last
            served += indices
        assert served == expected
        assert stream.status()["remaining_iterations"] == 0
        assert stream.reset(CONN).rewound


def test_validation_ids_the_stream_does_not_produce_are_counted_not_used() -> None:
    stream = new_stream(10)
    ids = ["sample_2", "sample_2", "sample_10", "sample_02", "valid_9", "sample_5"]
    received, known = stream.set_validation_ids(ids)
    assert (received, known) == (6, 2)
    served: list[int] = []
    while (indices := stream.take(CONN, 3)) is not None:
        served += indices
    assert served == [0, 1, 3, 4, 6, 7, 8, 9]


def test_new_validation_ids_replace_the_old_ones() -> None:
    stream = new_stream(10)
    stream.set_validation_ids(["sample_1", "sample_2"])
    stream.set_validation_ids(["sample_5"])
    assert stream.take(CONN, 10) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    stream.reset(CONN)
    stream.set_validation_ids([])
    assert stream.take(CONN, 10) == list(range(10))
    assert stream.status()["validation_ids"] == 0


def test_all_ids_for_validation_leaves_nothing_to_train_on() -> None:
    stream = new_stream(4)
    stream.set_validation_ids([f"sample_{k}" for k in range(4)])
    assert stream.status()["remaining_iterations"] == 0
    assert stream.take(CONN, 2) is None


@pytest.mark.parametrize("validation", [[], ["sample_2", "sample_3", "sample_11"]])
def test_peek_shows_what_take_returns_next(validation: list[str]) -> None:
    stream = new_stream(25)
    stream.set_validation_ids(validation)
    for batch in (1, 5, 9, 2, 30, 4):
        before = stream.status()
        peeked = stream.peek(batch)
        assert stream.status() == before  # peeking takes nothing
        assert stream.peek(batch) == peeked
        assert stream.peek(batch + 3)[:batch] == peeked  # a longer look, same start
        taken = stream.take(CONN, batch)
        assert (taken or []) == peeked
    assert stream.peek(10) == []
