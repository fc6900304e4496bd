"""The state file's format (state.py): what `--state` writes is read back as
written, later lines replacing earlier ones, and every file a server cannot
use is one `StateError` line naming the problem. Pure: bytes in, values out.
"""

import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eirstream.progress import Progress, StreamState, Take
from eirstream.state import (
    AFRESH,
    FORMAT,
    StateError,
    encode_indices,
    encode_line,
    encode_progress,
    progress_line,
    progress_update,
    read_state,
    snapshot,
    validation_update,
)

SETTINGS = {"--seed": 3, "--max-iterations": 1000, "--shuffle": True}

counts = st.integers(0, 10**12)
indices = st.integers(0, 10**8)
places = st.tuples(st.integers(0, 50), st.integers(0, 10**9))
takes = st.builds(Take, st.lists(indices, max_size=5).map(tuple), places, places)
progresses = st.builds(
    Progress,
    epoch=st.integers(0, 10**6),
    position=st.integers(0, 10**9),
    front=st.lists(indices, max_size=20).map(tuple),
    unsent=st.lists(takes, max_size=6).map(tuple),
    served_total=counts,
    served_in_pass=counts,
    rewinds=counts,
    over=st.booleans(),
)
validations = st.sets(indices, max_size=300).map(lambda ids: tuple(sorted(ids)))
names = st.sampled_from(["default", "run-a", "run.b_2", "x" * 64])


def head(streams: dict[str, StreamState], settings: dict = SETTINGS) -> bytes:
    """A snapshot line of `streams`, as statefile.py writes it."""
    return snapshot(
        settings,
        {
            name: {
                "progress": encode_progress(state.progress),
                "validation": encode_indices(state.validation),
            }
            for name, state in streams.items()
        },
    )


def line(record: dict) -> bytes:
    return encode_line(record)


ONE = {"default": StreamState(Progress(1, 20, (4, 5)), (2, 9))}


# -- the round trip ---------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(names, st.tuples(progresses, validations), max_size=3),
    st.lists(st.tuples(names, st.one_of(progresses, validations)), max_size=12),
)
def test_what_is_written_is_read_back_later_lines_replacing_earlier_ones(
    first: dict, updates: list
) -> None:
    expected = {name: StreamState(p, v) for name, (p, v) in first.items()}
    data = head(expected)
    for name, value in updates:
        before = expected.get(name, StreamState())
        if isinstance(value, Progress):
            data += progress_update(name, value)[0]
            expected[name] = StreamState(value, before.validation)
        else:
            data += validation_update(name, value)[0]
            expected[name] = StreamState(before.progress, value)
    # A stream named first by an update has its progress from an update too:
    # the server writes a new stream's progress with its validation ids.
    with_progress = {name for name, v in updates if isinstance(v, Progress)}
    complete = all(name in first or name in with_progress for name, _ in updates)
    if not complete:
        with pytest.raises(StateError, match="has no progress"):
            read_state(data, SETTINGS)
        return
    read = read_state(data, SETTINGS)
    assert not read.dropped
    assert read.streams == expected
    # What was read, written again as a snapshot, reads the same.
    again = read_state(snapshot(SETTINGS, read.encoded), SETTINGS)
    assert again.streams == expected


@settings(max_examples=60, deadline=None)
@given(names, progresses)
def test_the_line_before_each_reply_is_the_json_of_its_progress(
    name: str, progress: Progress
) -> None:
    written = progress_line(name, progress)  # formatted, for speed
    assert written == encode_line(
        {"stream": name, "progress": encode_progress(progress)}
    )
    body, _, _ = written.rstrip(b"\n").rpartition(b"\t")
    assert json.loads(body)["progress"] == encode_progress(progress)


@given(st.sets(st.integers(0, 10**8), max_size=5000))
def test_validation_ids_keep_every_index_from_none_to_many(ids: set[int]) -> None:
    validation = tuple(sorted(ids))
    data = head({"default": StreamState(Progress(), validation)})
    assert read_state(data, SETTINGS).streams["default"].validation == validation


def test_a_large_epoch_half_served_with_many_ids_stays_a_small_file() -> None:
    ids = tuple(range(7, 10**8, 10**8 // 20_000))  # 20,000 ids over 10^8
    progress = Progress(3, 5 * 10**7, (1, 2, 3), served_total=10**9)
    data = head({"default": StreamState(progress, ids)})
    assert len(data) < 20 * len(ids)  # bytes per id, compressed differences
    assert read_state(data, SETTINGS).streams["default"] == StreamState(progress, ids)


def test_an_update_replaces_only_what_it_names() -> None:
    data = head(ONE)
    data += progress_update("default", Progress(2, 7))[0]
    data += validation_update("run-x", (5,))[0]
    data += progress_update("run-x", Progress())[0]
    read = read_state(data, SETTINGS)
    assert read.streams == {
        "default": StreamState(Progress(2, 7), (2, 9)),
        "run-x": StreamState(Progress(), (5,)),
    }


def test_a_file_without_streams_reads_as_none() -> None:
    read = read_state(head({}), SETTINGS)
    assert read.streams == {} and not read.dropped


# -- a last line cut short ----------------------------------------------------------
@pytest.mark.parametrize("cut", [1, 10, -2, -1])
def test_a_last_line_cut_short_is_dropped_and_the_state_before_it_used(
    cut: int,
) -> None:
    good = head(ONE) + progress_update("default", Progress(1, 30))[0]
    last = progress_update("default", Progress(1, 40))[0]
    read = read_state(good + last[:cut], SETTINGS)
    assert read.dropped
    assert read.streams == {"default": StreamState(Progress(1, 30), (2, 9))}


def test_a_whole_file_is_not_dropped() -> None:
    read = read_state(head(ONE), SETTINGS)
    assert not read.dropped and read.streams == ONE


# -- files a server cannot use --------------------------------------------------------
def problem(data: bytes, settings: dict = SETTINGS) -> str:
    with pytest.raises(StateError) as raised:
        read_state(data, settings)
    text = str(raised.value)
    assert "\n" not in text
    return text


def test_an_empty_file_says_so_and_how_to_start_afresh() -> None:
    text = problem(b"")
    assert "empty" in text and AFRESH in text


@pytest.mark.parametrize("keep", [1, 20, -2])
def test_a_first_line_cut_short_is_a_truncated_file(keep: int) -> None:
    assert "truncated" in problem(head(ONE)[:keep])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_complete_line_with_any_byte_changed_is_corrupt(data: st.DataObject) -> None:
    unsent = (Take((1,), (1, 3), (1, 9)),)
    lines = [
        head(ONE),
        progress_update("default", Progress(1, 30, unsent=unsent))[0],
        validation_update("default", (2, 9, 11))[0],
    ]
    number = data.draw(st.integers(0, len(lines) - 1), label="line")
    where = data.draw(st.integers(0, len(lines[number]) - 2), label="byte")  # not \n
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(lines[number])
    changed[where] ^= flip
    lines[number] = bytes(changed)
    text = problem(b"".join(lines))
    assert "corrupt" in text or "not an eirstream state file" in text, text


def test_a_changed_checksum_names_the_line() -> None:
    second = bytearray(progress_update("default", Progress(1, 30))[0])
    second[-2] = ord("0") if second[-2] != ord("0") else ord("1")
    text = problem(head(ONE) + bytes(second))
    assert "line 2 is corrupt" in text and "checksum" in text


def test_a_line_that_is_not_json_is_corrupt() -> None:
    body = b'{"stream": "default", "progress": '
    text = problem(head(ONE) + b"%s\t%08x\n" % (body, zlib.crc32(body)))
    assert "line 2 is corrupt" in text and "not JSON" in text


def test_a_line_that_is_json_but_no_object_is_corrupt() -> None:
    assert "line 2 is corrupt" in problem(head(ONE) + line([1, 2]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        line({"format": "something-else", "version": 1}),
        line({"version": 1, "settings": SETTINGS, "streams": {}}),
        b"data:\n  path: corpus.txt\n",  # a YAML file given as --state
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b"just some words without an end",
    ],
)
def test_a_file_of_another_kind_is_not_a_state_file(data: bytes) -> None:
    assert "not an eirstream state file" in problem(data)


def test_a_newer_format_version_says_upgrade_or_start_afresh() -> None:
    data = line({"format": FORMAT, "version": 2, "settings": SETTINGS, "streams": {}})
    text = problem(data)
    assert "newer" in text and "version 2" in text
    assert "upgrade eirstream" in text and AFRESH in text


def test_other_settings_name_each_difference_with_both_values() -> None:
    data = head(ONE, {**SETTINGS, "--seed": 4, "--shuffle": False})
    text = problem(data)
    assert "--seed 4 in the file, 3 here" in text
    assert "--shuffle False in the file, True here" in text
    assert "--max-iterations" not in text  # the same: not named
    assert AFRESH in text


def test_a_setting_only_one_side_has_is_named_too() -> None:
    file_settings = {**SETTINGS, "--dataset": "/data/spec.yaml"}
    here = {**SETTINGS, "--source": "data_simulator:SimulatedHealthData"}
    text = problem(head(ONE, file_settings), here)
    assert "--dataset" in text and "/data/spec.yaml" in text
    assert "--source" in text and "data_simulator:SimulatedHealthData" in text


def test_a_stream_without_progress_is_corrupt() -> None:
    data = snapshot(SETTINGS, {"default": {"validation": encode_indices((1,))}})
    assert "'default' has no progress" in problem(data)


GOOD = encode_progress(Progress(1, 2, (3,), (Take((4,), (1, 2), (1, 5)),)))


@pytest.mark.parametrize(
    "progress",
    [
        {**GOOD, "epoch": -1},
        {**GOOD, "position": True},
        {**GOOD, "sent": 1.5},
        {**GOOD, "rewinds": "3"},
        {**GOOD, "front": [1, -2]},
        {**GOOD, "front": [False]},
        {**GOOD, "front": "1,2"},
        {**GOOD, "unsent": [[[4], 1, 2, 1]]},  # four parts
        {**GOOD, "unsent": [[[4], 1, 2, 1, 5, 6]]},  # six
        {**GOOD, "unsent": [[[4], 1, -2, 1, 5]]},
        {**GOOD, "unsent": [[[4], 1, 2, 1, None]]},
        {k: v for k, v in GOOD.items() if k != "position"},
        [1, 2, 0, [], []],
        {**GOOD, "over": 1},
        {**GOOD, "over": "yes"},
    ],
)
def test_malformed_progress_is_corrupt_and_names_the_stream(progress: object) -> None:
    data = head(ONE) + line({"stream": "run-q", "progress": progress})
    text = problem(data)
    assert "line 2 is corrupt" in text and "'run-q'" in text, text


@pytest.mark.parametrize("validation", [17, "not base64!", "AAAA", [1, 2]])
def test_malformed_validation_ids_are_corrupt(validation: object) -> None:
    data = head(ONE) + line({"stream": "default", "validation": validation})
    assert "line 2 is corrupt" in problem(data)


def test_an_update_that_names_no_stream_is_corrupt() -> None:
    records = [{"progress": GOOD}, {"stream": 7, "progress": GOOD}, {"stream": "x"}]
    for record in records:
        assert "line 2 is corrupt" in problem(head(ONE) + line(record))


def test_an_update_with_an_unknown_part_is_corrupt() -> None:
    data = head(ONE) + line({"stream": "default", "position": 4})
    assert "line 2 is corrupt" in problem(data)


def test_a_pass_that_was_over_says_so_and_a_file_without_it_was_not() -> None:
    over = encode_progress(Progress(0, 90, over=True))
    assert over["over"] is True
    assert "over" not in encode_progress(Progress(0, 90))  # as before it existed
    data = head(ONE) + line({"stream": "default", "progress": over})
    assert read_state(data, SETTINGS).streams["default"].progress.over
    older = {k: v for k, v in GOOD.items() if k != "over"}
    data = head(ONE) + line({"stream": "default", "progress": older})
    assert not read_state(data, SETTINGS).streams["default"].progress.over


def test_each_line_is_one_json_object_a_tab_its_crc_and_a_newline() -> None:
    written = progress_update("default", Progress(1, 2))[0]
    body, crc = written[:-1].split(b"\t")
    assert written.endswith(b"\n") and written.count(b"\n") == 1
    assert int(crc, 16) == zlib.crc32(body) and len(crc) == 8
    assert json.loads(body)["stream"] == "default"
