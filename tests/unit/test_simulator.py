"""The sample source (`SimulatedHealthData`) and its sample ids.

The source must hand EIR samples in exactly the shape docs/protocol.md gives
under "Samples". The stream that hands out their indices (`SampleStream`) is
tested in test_stream_rules.py.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT

from data_simulator import SimulatedHealthData, sample_id
from eirstream.sample_ids import index_of_sample_id, indices_of_sample_ids
from eirstream.sources import SampleSource


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


# -- sample ids in bulk ----------------------------------------------------------
ID_TEXT = st.one_of(
    st.integers(0, 10**6).map(lambda k: f"sample_{k}"),
    st.from_regex(r"sample_[0-9,\n]{0,8}", fullmatch=True),
    st.from_regex(r"(sample_)?0[0-9]{1,3}", fullmatch=True),
    st.sampled_from(
        [
            "",
            "sample_",
            "sample_-1",
            "sample_ 1",
            "sample_1 ",
            "sample_١",
            "sample_1e3",
            "sample_+1",
            "sample_1\nsample_2",
            "sample_" + "9" * 5000,
            "Sample_1",
            "sample_1.0",
            "sample_true",
            "sample_[1]",
        ]
    ),
    st.text(max_size=12),
)


CANONICAL = st.integers(0, 10**6).map(lambda k: f"sample_{k}")


@st.composite
def id_lists(draw: st.DrawFn) -> list[str]:
    """Mixed lists, and lists of canonical ids with at most one odd id in them
    (the bulk path's hard case: one bad id among good ones)."""
    if draw(st.booleans()):
        return draw(st.lists(ID_TEXT, max_size=30))
    received = draw(st.lists(CANONICAL, min_size=1, max_size=30))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(received)))
        received.insert(position, draw(ID_TEXT))
    return received


@settings(max_examples=500, deadline=None)
@given(id_lists(), st.one_of(st.none(), st.integers(0, 2 * 10**6)))
def test_bulk_id_parsing_agrees_with_parsing_one_id_at_a_time(
    received: list[str], num_samples: int | None
) -> None:
    one_by_one = {index_of_sample_id(s, num_samples) for s in received} - {None}
    assert indices_of_sample_ids(received, num_samples) == one_by_one


def test_half_a_million_ids_in_bulk() -> None:
    received = [sample_id(k) for k in range(0, 1_000_000, 2)]
    assert indices_of_sample_ids(received, None) == set(range(0, 1_000_000, 2))
    assert indices_of_sample_ids(received, 11) == {0, 2, 4, 6, 8, 10}
    received[123_456] = "sample_0123"  # one odd id: the slow path, same answer
    assert indices_of_sample_ids(received, 11) == {0, 2, 4, 6, 8, 10}
