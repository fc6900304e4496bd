"""The rules of `SampleStream` for who takes what: the life cycle of a
connection's `Seat`, one cursor (rule 1), validation ids (rule 2), `peek`
and `status`, without sockets. Resets and joins (rules 3 to 6) are in
test_stream_resets.py, the level end of a bounded pass (rule 7) in
test_stream_level_end.py, epochs and the seeded shuffle in
test_stream_epochs.py; EIR's moves are support/streams.py.
"""

import json
import logging
import random

import pytest
from support.streams import drain, eir_probe, ids, one_connection, probe

from data_simulator import SimulatedHealthData
from eirstream.seats import SEAT_LIFE_CYCLE, Seat, SeatEvent, SeatState
from eirstream.stream import SampleStream


# -- a connection's seat: its life cycle ---------------------------------------
def test_a_seat_refuses_a_transition_its_life_cycle_does_not_have() -> None:
    for state, allowed in SEAT_LIFE_CYCLE.items():
        for event in set(SeatEvent) - set(allowed):
            seat = Seat(state)
            with pytest.raises(RuntimeError, match="no transition from"):
                seat.enter(event)
            assert seat == Seat(state)  # unchanged
    # Every state has a row; from every one a connection can reset (rule 4)
    # and be told its pass is over (rule 3).
    assert set(SEAT_LIFE_CYCLE) == set(SeatState)
    anytime = {SeatEvent.REWIND, SeatEvent.JOIN, SeatEvent.SIT_OUT, SeatEvent.TOLD_OVER}
    assert all(anytime <= set(allowed) for allowed in SEAT_LIFE_CYCLE.values())


def test_a_seat_keeps_level_and_probe_batch_only_in_the_states_that_use_them() -> None:
    seat = Seat(probe_batch=(7,))
    seat.enter(SeatEvent.PROBE)
    assert seat == Seat(SeatState.PROBED, probe_batch=(7,))
    seat.level, seat.batch_size = 2, 8  # the probe confirmed: both batches count
    seat.enter(SeatEvent.SERVED)
    assert seat == Seat(SeatState.STREAMING, level=2, batch_size=8)
    seat.enter(SeatEvent.JOIN)  # a reset that joins: it counts from where it is
    assert seat == Seat(SeatState.STREAMING, level=2, batch_size=8)
    seat.enter(SeatEvent.SIT_OUT)
    assert seat == Seat(SeatState.SITTING_OUT)
    seat.enter(SeatEvent.TOLD_OVER)
    assert seat == Seat(SeatState.OVER)


def test_in_the_pass_are_the_probed_the_streaming_and_those_sitting_out() -> None:
    """Rule 3 through every state of a seat, seen in `status`."""
    assert {s for s in SeatState if s.in_pass} == {
        SeatState.PROBED,
        SeatState.STREAMING,
        SeatState.SITTING_OUT,
    }
    stream = SampleStream(100)

    def in_pass() -> int:
        return stream.status()["connections_in_pass"]

    stream.connect("a")
    assert in_pass() == 0  # a: fresh
    assert stream.take("a", 1) == [0]
    assert in_pass() == 1  # a: probed
    assert stream.reset("a").rewound
    assert in_pass() == 1  # a: streaming, at 0 batches
    assert stream.take("a", 32) == list(range(32))
    assert stream.take("a", 32) == list(range(32, 64))
    stream.connect("b")
    assert in_pass() == 1  # b: fresh
    assert stream.take("b", 1) == [64]
    assert in_pass() == 2  # b: probed
    assert stream.reset("b").returned == 1  # 36 left cannot bring b up to 2
    assert in_pass() == 2  # b: sitting out, told at its next take
    assert stream.take("b", 32) is None
    assert in_pass() == 1  # b: over
    assert stream.take("a", 32) == list(range(64, 96))
    assert stream.take("a", 32) == [96, 97, 98, 99]  # alone: the tail (7d)
    assert stream.take("a", 32) is None
    assert in_pass() == 0  # both over


# -- rule 1: one cursor ------------------------------------------------------
def test_connections_share_one_cursor_and_no_index_is_served_twice() -> None:
    stream = SampleStream(20)
    for conn in "abc":
        stream.connect(conn)
    got = {conn: [] for conn in "abc"}
    for conn in "abcabcabc":
        got[conn] += stream.take(conn, 2) or []
    assert got["a"] == [0, 1, 6, 7, 12, 13]
    assert got["b"] == [2, 3, 8, 9, 14, 15]
    assert got["c"] == [4, 5, 10, 11, 16, 17]
    # 18 and 19 are not one more batch for each of the three (rule 7)
    assert stream.take("a", 2) is None
    assert stream.take("b", 2) is None
    assert stream.take("b", 2) is None  # and stays over until its reset
    assert stream.remaining() == 2


@pytest.mark.parametrize("batch", [1, 7, 32, 100, 299, 300, 1000])
def test_batches_cover_the_stream_in_order_with_a_partial_last_one(batch: int) -> None:
    stream = one_connection(300)
    served: list[int] = []
    sizes = []
    while (indices := stream.take("a", batch)) is not None:
        served += indices
        sizes.append(len(indices))
        assert stream.status()["current_position"] == len(served)
        assert stream.status()["remaining_iterations"] == 300 - len(served)
    assert served == list(range(300))
    full, rest = divmod(300, batch)
    assert sizes == [batch] * full + ([rest] if rest else [])


@pytest.mark.parametrize("count", [0, -1])
def test_take_rejects_a_count_below_one_and_changes_nothing(count: int) -> None:
    stream = one_connection(10)
    stream.take("a", 3)
    before = stream.status()
    with pytest.raises(ValueError, match=f"count must be at least 1, got {count}"):
        stream.take("a", count)
    assert stream.status() == before


def test_unbounded_stream_never_ends() -> None:
    stream = one_connection(None)
    served: list[int] = []
    for _ in range(50):
        indices = stream.take("a", 1000)
        assert indices is not None and len(indices) == 1000
        served += indices
    assert served == list(range(50_000))
    status = stream.status()
    assert status["max_iterations"] is None
    assert status["remaining_iterations"] is None
    assert status["current_position"] == 50_000


def test_zero_samples_is_a_valid_empty_stream() -> None:
    source = SimulatedHealthData(max_iterations=0)
    stream = SampleStream(source.num_samples)
    stream.connect("a")
    assert stream.take("a", 5) is None
    assert stream.status()["remaining_iterations"] == 0


def test_negative_length_is_refused() -> None:
    with pytest.raises(ValueError, match="num_samples must be 0 or more, got -1"):
        SampleStream(-1)


# -- rule 2: validation ids ----------------------------------------------------
def test_validation_ids_are_skipped_across_rewinds_until_replaced() -> None:
    stream = SampleStream(8)
    stream.connect("a")
    assert stream.set_validation_ids(ids(1, 3, 5)) == (3, 3)
    assert drain(stream, "a") == [0, 2, 4, 6, 7]
    assert stream.reset("a").rewound
    assert drain(stream, "a", batch=2) == [0, 2, 4, 6, 7]
    assert stream.set_validation_ids(ids(0, 7)) == (2, 2)  # replaces, not adds
    assert stream.reset("a").rewound
    assert drain(stream, "a") == [1, 2, 3, 4, 5, 6]


def test_validation_ids_are_skipped_in_every_pass() -> None:
    stream = one_connection(20)
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
        while (indices := stream.take("a", 4)) is not None:
            assert len(indices) == 4 or not stream.peek(1)  # full batches but last
            served += indices
        assert served == expected
        assert stream.status()["remaining_iterations"] == 0
        assert stream.reset("a").rewound


def test_new_validation_ids_replace_the_old_ones() -> None:
    stream = one_connection(10)
    stream.set_validation_ids(["sample_1", "sample_2"])
    stream.set_validation_ids(["sample_5"])
    assert stream.take("a", 10) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    stream.reset("a")
    stream.set_validation_ids([])
    assert stream.take("a", 10) == list(range(10))
    assert stream.status()["validation_ids"] == 0


def test_validation_ids_the_stream_does_not_produce_are_counted_not_used() -> None:
    stream = one_connection(10)
    ids = ["sample_2", "sample_2", "sample_10", "sample_02", "valid_9", "sample_5"]
    received, known = stream.set_validation_ids(ids)
    assert (received, known) == (6, 2)
    served: list[int] = []
    while (indices := stream.take("a", 3)) is not None:
        served += indices
    assert served == [0, 1, 3, 4, 6, 7, 8, 9]


def test_confirmation_counts_received_ids_and_distinct_ids_this_stream_makes() -> None:
    stream = SampleStream(10)
    received = [
        *ids(1, 1, 9),  # a duplicate is received twice but names one sample
        "sample_10",  # past the end of a 10-sample stream
        "sample_01",  # not how sample 1 is named
        "patient_3",
        "",
    ]
    assert stream.set_validation_ids(received) == (7, 2)
    status = stream.status()
    assert (status["validation_ids_received"], status["validation_ids"]) == (7, 2)
    assert stream.validation_indices() == [1, 9]


def test_all_ids_for_validation_leaves_nothing_to_train_on() -> None:
    stream = one_connection(4)
    stream.set_validation_ids([f"sample_{k}" for k in range(4)])
    assert stream.status()["remaining_iterations"] == 0
    assert stream.take("a", 2) is None


def test_validation_ids_set_between_a_take_and_its_give_back_are_not_returned() -> None:
    stream = SampleStream(100)
    stream.connect("trainer")
    stream.take("trainer", 10)  # 0..9, mid-pass
    stream.connect("late")
    assert stream.take("late", 1) == [10]
    stream.set_validation_ids(ids(10))
    outcome = stream.reset("late")
    assert (outcome.rewound, outcome.returned) == (False, 0)
    assert 10 not in drain(stream, "trainer")


def test_replacing_validation_ids_drops_them_from_the_front_too() -> None:
    stream = SampleStream(50)
    stream.connect("trainer")
    stream.take("trainer", 5)
    _, outcome = probe(stream, "late")  # gives back 5
    assert outcome.returned == 1 and stream.peek(2) == [5, 6]
    stream.set_validation_ids(ids(5))
    assert stream.status()["returned_to_front"] == 0
    assert stream.peek(2) == [6, 7]


def test_a_source_without_bulk_parsing_is_asked_id_by_id() -> None:
    class Renamed:
        num_samples = 5

        def index_of(self, sample_id: str) -> int | None:
            names = {"alpha": 0, "beta": 1, "omega": 99}
            return names.get(sample_id)

    stream = SampleStream.for_source(Renamed())  # type: ignore[arg-type]
    assert stream.set_validation_ids(["alpha", "beta", "sample_2", "omega"]) == (4, 2)
    stream.connect("a")
    assert drain(stream, "a") == [2, 3, 4]


def test_the_simulated_source_parses_ids_in_bulk() -> None:
    stream = SampleStream.for_source(SimulatedHealthData(max_iterations=6))
    assert stream.set_validation_ids(ids(0, 5, 6)) == (3, 2)
    stream.connect("a")
    assert drain(stream, "a") == [1, 2, 3, 4]


def test_every_rank_sending_the_same_validation_ids_changes_nothing(caplog) -> None:
    stream = SampleStream(300)
    stream.set_validation_ids(ids(*range(0, 300, 3)))  # rank 0's setup
    for conn in "ab":
        eir_probe(stream, conn)
    stream.take("a", 16)
    stream.take("b", 16)
    before, ahead = stream.status(), stream.peek(50)
    assert stream.set_validation_ids(ids(*range(0, 300, 3))) == (100, 100)  # rank 1
    assert stream.status() == before and stream.peek(50) == ahead
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_different_validation_set_mid_pass_warns_once_and_is_used(caplog) -> None:
    stream = SampleStream(300)
    stream.set_validation_ids(ids(1, 2))
    eir_probe(stream, "trainer")
    stream.take("trainer", 16)
    stream.set_validation_ids(ids(3, 4, 5))  # a second run's setup
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "second training run" in warnings[0], warnings
    assert "Give each run its own stream" in warnings[0]  # the fix, named
    assert "/ws/<run-name>" in warnings[0]
    assert stream.validation_indices() == [3, 4, 5]  # accepted, as before


def test_a_different_validation_set_between_runs_is_quiet(caplog) -> None:
    stream = SampleStream(50)
    stream.set_validation_ids(ids(1, 2))
    eir_probe(stream, "trainer")
    drain(stream, "trainer")
    stream.disconnect("trainer")
    stream.set_validation_ids(ids(3))  # the next run, nobody mid-pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- peek ------------------------------------------------------------------------
def test_peek_shows_exactly_what_the_next_take_hands_out() -> None:
    rng = random.Random(7)
    for _ in range(200):
        stream = SampleStream(rng.choice([None, 30, 60]))
        stream.set_validation_ids(ids(*rng.sample(range(60), rng.randint(0, 20))))
        for conn in "abc":
            stream.connect(conn)
        stream.take("a", rng.randint(1, 15))
        stream.take("b", rng.randint(1, 4))
        stream.reset("b")  # may give a batch back to the front
        count = rng.randint(1, 40)
        expected = stream.peek(count)
        assert stream.peek(count) == expected  # peeking takes nothing
        got = stream.take("c", count)
        assert got is None or got == expected


@pytest.mark.parametrize("validation", [[], ["sample_2", "sample_3", "sample_11"]])
def test_peek_takes_nothing_and_matches_the_next_take(validation: list[str]) -> None:
    stream = one_connection(25)
    stream.set_validation_ids(validation)
    for batch in (1, 5, 9, 2, 30, 4):
        before = stream.status()
        peeked = stream.peek(batch)
        assert stream.status() == before  # peeking takes nothing
        assert stream.peek(batch) == peeked
        assert stream.peek(batch + 3)[:batch] == peeked  # a longer look, same start
        taken = stream.take("a", batch)
        assert (taken or []) == peeked
    assert stream.peek(10) == []


# -- status ------------------------------------------------------------------------
def test_status_reports_the_stream() -> None:
    stream = SampleStream(100)
    assert stream.status() == {
        "stream": "default",
        "phase": "setup",
        "current_position": 0,
        "max_iterations": 100,
        "remaining_iterations": 100,
        "samples_served_in_pass": 0,
        "samples_served_total": 0,
        "rewinds": 0,
        "open_connections": 0,
        "connections_in_pass": 0,
        "validation_ids": 0,
        "validation_ids_received": 0,
        "returned_to_front": 0,
        "epoch": 0,
        "epochs": 1,
        "shuffled": False,
        "resumed": None,
    }
    json.dumps(stream.status())  # it goes into a status reply
    stream.connect("a")
    stream.take("a", 10)
    stream.reset("a")  # rewind
    stream.take("a", 20)  # 0..19
    stream.set_validation_ids([*ids(5, 25, 26, 150), "nope"])
    probe(stream, "b")  # joins, gives 20 back
    status = stream.status()
    assert status["phase"] == "training"
    assert status["current_position"] == 21
    # 100 indices, minus 0..20 passed, minus 25 and 26, plus 20 at the front
    assert status["remaining_iterations"] == 100 - 21 - 2 + 1
    assert status["samples_served_in_pass"] == 20
    assert status["samples_served_total"] == 31
    assert status["rewinds"] == 1
    assert status["open_connections"] == 2
    assert status["connections_in_pass"] == 2
    assert status["validation_ids"] == 3
    assert status["validation_ids_received"] == 5
    assert status["returned_to_front"] == 1
    stream.disconnect("a")  # b is alone in the pass: it gets everything left
    assert len(drain(stream, "b")) == status["remaining_iterations"]
    assert stream.status()["remaining_iterations"] == 0


def test_status_counts_what_was_served() -> None:
    stream = one_connection(100)
    stream.take("a", 30)
    stream.take("a", 12)
    status = stream.status()
    assert status["current_position"] == 42
    assert status["remaining_iterations"] == 58
    assert status["samples_served_in_pass"] == 42
    assert status["samples_served_total"] == 42
    assert status["connections_in_pass"] == 1
    assert status["rewinds"] == 0
    assert status["phase"] == "setup"
