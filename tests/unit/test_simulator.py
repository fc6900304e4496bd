"""data_simulator.py: the sample source (`SimulatedHealthData`), its sample
ids, its JSON, and the tutorial's `DataSimulator` over the shared stream.

The source must hand EIR samples in exactly the shape docs/protocol.md gives
under "Samples", and any text a user's model writes must reach eirtrain
unchanged. The rules of the stream itself (`SampleStream`) are tested in
test_stream_rules.py; that samples do not depend on the process, in
tests/server/test_processes.py.
"""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import single_sample_simulation
from data_simulator import DataSimulator, SimulatedHealthData, sample_id
from eirstream.eirformat import SampleLayout, check_sample, value_json
from eirstream.sample_ids import index_of_sample_id, indices_of_sample_ids
from eirstream.sources import SampleSource
from eirstream.stream import SampleStream


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


# -- any text, written as JSON in one place ---------------------------------------
# Text a user's model may write: anything Python's str holds, lone surrogates
# included, with the characters JSON must escape (and those of the writer's
# own templates: braces, percent signs, NUL) drawn often.
AWKWARD = ['"', "\\", "\n", "\r", "\t", "\b", "\x00", "\x1f", "\x7f", "{", "}", "%"]
AWKWARD += ["\u2028", "\u2029", "\ud800", "\udfff", "\U0001f600", "é"]
ANY_TEXT = st.text(
    st.one_of(st.sampled_from(AWKWARD), st.characters(exclude_categories=()))
)


def received(texts: list[str]) -> list[dict]:
    """The samples as eirtrain reads them: the `data` reply the server makes of
    these texts, sent as UTF-8 and parsed with json.loads."""
    reply = '{"type":"data","payload":[' + ",".join(texts) + "]}"
    return json.loads(reply.encode("utf-8"))["payload"]


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(ANY_TEXT, min_size=3, max_size=3, unique=True),
    texts=st.lists(ANY_TEXT, min_size=3, max_size=3),
)
def test_sample_layout_writes_any_text_as_valid_json(
    names: list[str], texts: list[str]
) -> None:
    text_in, text_out, category = names
    layout = SampleLayout(
        {
            "inputs": {text_in: {"type": "sequence"}},
            "outputs": {
                text_out: {"type": "sequence"},
                category: {"type": "tabular"},
            },
        }
    )
    sample_text, prompt, trace = texts
    inputs, outputs = {text_in: prompt}, {text_out: trace, category: {"c": prompt}}
    sample = layout.sample(sample_text, inputs, outputs)
    written = layout.json(sample_text, inputs, outputs)
    assert written == json.dumps(sample, separators=(",", ":"))
    assert written.isascii()
    assert json.loads(written) == sample
    [got] = received([written])
    assert got["inputs"][text_in] == prompt
    assert got["inputs"][text_out] == trace
    assert got["target_labels"][text_out][text_out] == trace
    assert got["target_labels"][category] == {"c": prompt}
    assert got["sample_id"] == sample_text
    # The writer for these names, and `write` itself, give the same text.
    as_json = [value_json(v) for v in (sample_text, prompt, trace, {"c": prompt})]
    write = layout.writer([text_in], [text_out, category])
    assert write(*as_json) == written
    assert (
        layout.write(
            as_json[0],
            {text_in: as_json[1]},
            {text_out: as_json[2], category: as_json[3]},
        )
        == written
    )


class GivenTexts(SimulatedHealthData):
    """The simulator with a model that writes the given prompts and traces."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(max_iterations=len(pairs))
        self.pairs = pairs

    def simulate(self, index: int) -> tuple[str, str]:
        return self.pairs[index]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ANY_TEXT, ANY_TEXT), min_size=1, max_size=5))
def test_the_simulator_sends_any_text_exactly(pairs: list[tuple[str, str]]) -> None:
    source = GivenTexts(pairs)
    indices = list(range(len(pairs)))
    texts = source.samples_json(indices)
    samples = source.samples(indices)
    assert texts == [json.dumps(s, separators=(",", ":")) for s in samples]
    for got, sample, (prompt, trace) in zip(
        received(texts), samples, pairs, strict=True
    ):
        assert got == sample
        assert got["inputs"] == {"text_input": prompt, "text_output": trace}
        check_sample(got, source.dataset_info())


def test_a_prompt_edited_with_quotes_makes_valid_samples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a user does first: edit the prompt in single_sample_simulation.py."""
    original = single_sample_simulation.Person.prompt

    def quoted(person: single_sample_simulation.Person) -> str:
        plain = original(person).replace(
            f"Activity: {person.activity}", f'Activity: "{person.activity}"'
        )
        return plain + ' Notes: C:\\data\\hr.csv\n\t"quoted" {braces} 100% ♥'

    monkeypatch.setattr(single_sample_simulation.Person, "prompt", quoted)
    source = SimulatedHealthData(seed=1, sequence_length=8)
    indices = list(range(40))
    texts = source.samples_json(indices)
    for got, index in zip(received(texts), indices, strict=True):
        prompt = got["inputs"]["text_input"]
        assert prompt == source.simulate(index)[0]
        activity = re.search(r'Activity: "(\w+)" -', prompt)
        assert activity and activity[1] in single_sample_simulation.ACTIVITY_LEVELS
        assert prompt.endswith(' Notes: C:\\data\\hr.csv\n\t"quoted" {braces} 100% ♥')
        assert got == source.sample(index)
        check_sample(got, source.dataset_info())


def test_dataset_info_is_a_copy_the_caller_may_change() -> None:
    source = SimulatedHealthData()
    info = source.dataset_info()
    info["inputs"]["text_input"]["type"] = "tabular"
    info["outputs"].clear()
    assert source.dataset_info()["inputs"]["text_input"]["type"] == "sequence"
    assert list(source.dataset_info()["outputs"]) == ["text_output"]


# -- DataSimulator: the tutorial's position and reset, over the shared stream -----
def ids(batch: list[dict]) -> list[int]:
    return [int(sample["sample_id"].removeprefix("sample_")) for sample in batch]


def test_get_batch_hands_out_samples_from_the_position() -> None:
    source = SimulatedHealthData(seed=2, max_iterations=100)
    simulator = DataSimulator(source)
    assert simulator.position == 0
    first = simulator.get_batch(32)
    assert ids(first) == list(range(32))
    assert first == source.samples(range(32))
    assert simulator.position == 32
    assert ids(simulator.get_batch(8)) == list(range(32, 40))
    assert simulator.position == 40


def test_reset_goes_back_to_the_same_samples() -> None:
    simulator = DataSimulator(SimulatedHealthData(seed=5, max_iterations=100))
    first = simulator.get_batch(10)
    simulator.get_batch(10)
    assert simulator.reset() is True
    assert simulator.position == 0
    assert simulator.get_batch(10) == first


def test_an_empty_batch_ends_the_pass_until_a_reset() -> None:
    simulator = DataSimulator(SimulatedHealthData(max_iterations=50))
    served: list[int] = []
    for _ in range(50):  # at most one batch per sample, then it must have ended
        batch = simulator.get_batch(16)
        if not batch:
            break
        served += ids(batch)
    assert served == list(range(50))
    assert simulator.get_batch(16) == []
    simulator.reset()
    assert ids(simulator.get_batch(16)) == list(range(16))


def test_validation_ids_are_never_handed_out() -> None:
    simulator = DataSimulator(SimulatedHealthData(max_iterations=20))
    simulator.set_validation_ids([sample_id(k) for k in (0, 3, 4, 19)])
    served = ids(simulator.get_batch(100))
    assert served == [k for k in range(20) if k not in (0, 3, 4, 19)]


def test_simulators_sharing_a_stream_are_connections_of_one_server() -> None:
    source = SimulatedHealthData(max_iterations=64)
    stream = SampleStream.for_source(source)
    first, second = DataSimulator(source, stream), DataSimulator(source, stream)
    first.reset()
    second.reset()  # the first is in the pass: no rewind under it
    a, b = ids(first.get_batch(8)), ids(second.get_batch(8))
    assert a == list(range(8)) and b == list(range(8, 16))
    assert first.position == second.position == 16
    assert first.reset() is False  # the second is mid-pass: it joins, no rewind
    assert first.position == 16
    second.close()  # closing moves nobody ...
    assert first.position == 16
    assert first.reset() is True  # ... and now the first is alone: it rewinds
    assert first.position == 0
