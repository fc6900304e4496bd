"""The rules of `SampleStream`, for one connection or many, and the life
cycle of a connection's `Seat`, without sockets.

Connections are plain strings here. EIR's validation probe is `take(conn, 1)`
followed by `reset(conn)`; its training connection is the probe, then takes
until `take` returns None (the server's "terminate").
"""

import itertools
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_simulator import (
    SEAT_LIFE_CYCLE,
    ResetOutcome,
    SampleStream,
    Seat,
    SeatEvent,
    SeatState,
    SimulatedHealthData,
)


def ids(*indices: int) -> list[str]:
    return [f"sample_{i}" for i in indices]


def drain(stream: SampleStream, conn: str, batch: int = 7) -> list[int]:
    """Everything `conn` gets until the stream says it is exhausted."""
    out: list[int] = []
    while (got := stream.take(conn, batch)) is not None:
        out += got
    return out


def probe(stream: SampleStream, conn: str) -> tuple[list[int] | None, ResetOutcome]:
    """EIR's validation probe: one sample (thrown away), then a reset."""
    stream.connect(conn)
    return stream.take(conn, 1), stream.reset(conn)


def eir_probe(stream: SampleStream, conn: str) -> ResetOutcome:
    """EIR's probe at the start of a training connection."""
    stream.connect(conn)
    stream.take(conn, 1)
    return stream.reset(conn)


def one_connection(num_samples: int | None) -> SampleStream:
    """A stream with one connection, "a", open."""
    stream = SampleStream(num_samples)
    stream.connect("a")
    return stream


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
    assert "one server per training run" in warnings[0]
    assert stream.validation_indices() == [3, 4, 5]  # accepted, as before


def test_a_different_validation_set_between_runs_is_quiet(caplog) -> None:
    stream = SampleStream(50)
    stream.set_validation_ids(ids(1, 2))
    eir_probe(stream, "trainer")
    drain(stream, "trainer")
    stream.disconnect("trainer")
    stream.set_validation_ids(ids(3))  # the next run, nobody mid-pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- rules 3 and 4: reset, join, give back --------------------------------------
def test_exhausted_stream_answers_none_every_time_and_stays_put() -> None:
    stream = one_connection(10)
    assert stream.take("a", 10) == list(range(10))
    for _ in range(5):
        assert stream.take("a", 3) is None
    status = stream.status()
    assert status["current_position"] == 10
    assert status["remaining_iterations"] == 0
    assert status["samples_served_total"] == 10
    assert status["connections_in_pass"] == 0  # told "terminate": pass over


def test_reset_rewinds_and_replays_the_same_indices_and_samples() -> None:
    source = SimulatedHealthData(seed=7, max_iterations=50)
    stream = one_connection(source.num_samples)
    first = [stream.take("a", 8), stream.take("a", 8), stream.take("a", 5)]
    first_samples = source.samples([i for batch in first for i in batch])

    outcome = stream.reset("a")
    assert outcome.rewound and outcome.position == 0 and outcome.returned == 0
    status = stream.status()
    assert status["current_position"] == 0
    assert status["remaining_iterations"] == 50
    assert status["rewinds"] == 1

    again = [stream.take("a", 8), stream.take("a", 8), stream.take("a", 5)]
    assert again == first == [list(range(8)), list(range(8, 16)), list(range(16, 21))]
    again_samples = SimulatedHealthData(seed=7, max_iterations=50).samples(
        [i for batch in again for i in batch]
    )
    assert again_samples == first_samples
    assert again_samples[0]["sample_id"] == "sample_0"


def test_reset_after_exhaustion_starts_a_new_pass() -> None:
    stream = one_connection(5)
    assert stream.take("a", 10) == [0, 1, 2, 3, 4]
    assert stream.take("a", 10) is None
    assert stream.reset("a").rewound
    assert stream.take("a", 10) == [0, 1, 2, 3, 4]
    status = stream.status()
    assert status["samples_served_in_pass"] == 5
    assert status["samples_served_total"] == 10


def test_a_reset_with_nobody_else_in_the_pass_rewinds_to_zero() -> None:
    stream = SampleStream(30)
    taken, outcome = probe(stream, "a")
    assert taken == [0]
    assert outcome == ResetOutcome(rewound=True, position=0, returned=0)
    assert stream.take("a", 3) == [0, 1, 2]  # the probe's sample is served again
    assert stream.reset("a").rewound  # alone in its own pass: rewinds again
    assert stream.take("a", 3) == [0, 1, 2]


def test_a_probe_joining_a_pass_in_progress_gives_its_sample_back() -> None:
    stream = SampleStream(100)
    stream.connect("trainer")
    assert stream.take("trainer", 32) == list(range(32))
    taken, outcome = probe(stream, "worker")
    assert taken == [32]
    assert outcome == ResetOutcome(rewound=False, position=33, returned=1)
    assert stream.status()["samples_served_in_pass"] == 32
    assert stream.take("trainer", 3) == [32, 33, 34]  # not lost, not skipped
    assert stream.take("worker", 2) == [35, 36]


def test_nothing_is_given_back_after_more_than_one_take_before_the_first_reset() -> (
    None
):
    stream = SampleStream(None)
    stream.connect("trainer")
    stream.take("trainer", 4)  # 0..3
    stream.connect("reader")
    stream.take("reader", 5)  # 4..8
    stream.take("reader", 5)  # 9..13: a reader, not a probe
    outcome = stream.reset("reader")
    assert (outcome.rewound, outcome.returned) == (False, 0)
    assert stream.peek(2) == [14, 15]


def test_only_the_first_reset_gives_back() -> None:
    stream = SampleStream(None)
    stream.connect("trainer")
    stream.take("trainer", 4)  # 0..3
    assert probe(stream, "worker")[1].returned == 1  # 4 goes back
    assert stream.take("worker", 1) == [4]
    second = stream.reset("worker")
    assert (second.rewound, second.returned) == (False, 0)
    assert stream.status()["returned_to_front"] == 0
    assert stream.take("trainer", 1) == [5]


def test_every_probe_of_workers_starting_together_is_given_back() -> None:
    stream = SampleStream(40)
    workers = [f"w{i}" for i in range(8)]
    for w in workers:
        stream.connect(w)
    probes = {w: stream.take(w, 1) for w in workers}  # all probe before any reset
    assert sorted(p[0] for p in probes.values()) == list(range(8))
    outcomes = [stream.reset(w) for w in workers]
    assert not any(o.rewound for o in outcomes)  # joiners count as in the pass
    assert stream.remaining() == 40  # all eight probe samples are back
    got = {w: drain(stream, w, batch=3) for w in workers}  # one after another
    served = [i for w in workers for i in got[w]]
    assert sorted(served) == sorted(set(served))
    # 40 samples are one round of 8 x 3 and 16 over: one batch each (rule 7)
    assert [len(got[w]) for w in workers] == [3] * 8
    assert stream.remaining() == 16


def test_a_joiner_holds_the_pass_open_until_it_is_told_terminate() -> None:
    stream = SampleStream(10)
    stream.connect("a")
    stream.take("a", 4)
    assert not stream.reset("joiner").rewound  # joins a's pass, takes nothing yet
    assert drain(stream, "a", batch=4) == []  # 6 left: the joiner is owed 4
    assert not stream.reset("c").rewound  # the joiner is still in the pass
    assert stream.take("joiner", 4) == [4, 5, 6, 7]
    assert stream.take("joiner", 4) is None
    assert not stream.reset("d").rewound  # c is still in the pass
    assert stream.take("c", 4) is None  # at 0, and the pass ended at 1
    assert stream.take("d", 4) is None
    assert stream.reset("e").rewound  # now nobody is: a new pass


def test_terminate_ends_a_connections_pass() -> None:
    stream = SampleStream(10)
    stream.connect("a")
    assert drain(stream, "a") == list(range(10))  # a was told "terminate"
    assert stream.status()["connections_in_pass"] == 0
    _, outcome = probe(stream, "b")  # b's probe got terminate too
    assert outcome.rewound
    assert stream.take("b", 2) == [0, 1]


def test_a_connection_told_terminate_joins_if_others_are_still_in_the_pass() -> None:
    stream = SampleStream(6)
    stream.connect("a")
    stream.connect("b")
    stream.take("b", 2)  # b is in the pass and has not been told terminate
    assert drain(stream, "a", batch=2) == [2, 3]
    outcome = stream.reset("a")
    assert (outcome.rewound, outcome.position) == (False, 4)
    # It joins as a newcomer, at 0 batches, and 2 left cannot bring it up to
    # 1 while b may still be owed its batch (its first may have been a probe).
    assert stream.take("a", 2) is None
    assert stream.take("b", 2) is None
    assert stream.remaining() == 2


def test_a_probe_in_flight_keeps_others_from_rewinding_under_it() -> None:
    stream = SampleStream(6)
    stream.connect("worker")
    assert stream.take("worker", 1) == [0]  # probing, not reset yet
    assert not stream.reset("other").rewound  # so 0 is not served twice
    outcome = stream.reset("worker")
    assert (outcome.rewound, outcome.returned) == (False, 1)
    assert drain(stream, "other", batch=3) == [0, 1, 2]
    assert drain(stream, "worker", batch=3) == [3, 4, 5]


def test_a_rewind_drops_indices_given_back_in_the_pass_before() -> None:
    stream = SampleStream(10)
    stream.connect("trainer")
    stream.take("trainer", 3)  # 0..2
    probe(stream, "worker")  # gives 3 back
    stream.disconnect("trainer")
    stream.disconnect("worker")  # 3 is still at the front; nobody is in the pass
    assert stream.reset("next").rewound
    assert drain(stream, "next") == list(range(10))  # 3 once, in its place


def test_a_connection_whose_first_reset_rewinds_gives_nothing_back() -> None:
    stream = SampleStream(10)
    probe(stream, "a")  # rewinds; its probe sample is simply served again
    assert stream.status()["returned_to_front"] == 0
    assert stream.take("a", 1) == [0]


# -- rule 5: opening and closing ----------------------------------------------
def test_closing_a_connection_never_rewinds_or_moves_the_others() -> None:
    stream = SampleStream(20)
    for conn in "ab":
        stream.connect(conn)
    stream.take("a", 3)  # 0..2
    stream.take("b", 3)  # 3..5, not given back when b closes
    stream.disconnect("b")
    stream.connect("c")
    stream.disconnect("c")  # opened and closed without a word
    assert stream.take("a", 3) == [6, 7, 8]
    status = stream.status()
    assert (status["rewinds"], status["open_connections"]) == (0, 1)
    assert not stream.reset("d").rewound  # a is still in the pass
    stream.disconnect("a")
    stream.disconnect("d")
    assert stream.status()["connections_in_pass"] == 0
    assert stream.reset("e").rewound  # and now nobody is


def test_connecting_and_disconnecting_never_move_the_cursor() -> None:
    stream = one_connection(100)
    stream.take("a", 40)
    stream.connect("other")
    assert stream.status()["open_connections"] == 2
    stream.disconnect("other")
    stream.disconnect("a")
    status = stream.status()
    assert status["open_connections"] == 0
    assert status["current_position"] == 40
    assert status["rewinds"] == 0
    stream.connect("later")
    assert stream.take("later", 5) == [40, 41, 42, 43, 44]


def test_closing_before_the_first_reset_does_not_give_the_probe_back() -> None:
    stream = SampleStream(20)
    stream.connect("a")
    stream.take("a", 4)
    stream.connect("b")
    assert stream.take("b", 1) == [4]
    stream.disconnect("b")
    assert stream.take("a", 2) == [5, 6]


# -- rule 6: the stream answers the caller, and nobody else ---------------------
def test_a_connection_hears_its_pass_is_over_only_from_its_own_take() -> None:
    stream = SampleStream(50)
    for conn in "ab":
        eir_probe(stream, conn)
    assert stream.take("a", 20) == list(range(20))
    assert stream.take("b", 20) == list(range(20, 40))
    assert stream.take("a", 20) is None  # 10 left: not a batch for both
    assert stream.status()["connections_in_pass"] == 1  # b has not been told
    assert stream.peek(10) == list(range(40, 50))  # and nothing moved
    assert stream.take("b", 20) is None  # it hears at its own next take
    assert stream.status()["connections_in_pass"] == 0


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


# -- all the rules at once: random interleavings ----------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_random_interleavings_keep_every_rule(seed: int) -> None:
    """Many connections taking, resetting, closing and reopening at random.

    A model of the rules (not of the code) follows along: who is in the pass,
    what each connection took before its first reset, what has been served
    since the last rewind, who was told its pass is over. Checked after
    every step: the rewind-or-join decision, the give-back, no index twice
    between rewinds, no validation id ever, once told always told until its
    own reset, full batches unless alone in the pass, and, while the
    validation ids are unchanged since the rewind, that every other index
    is either served once or still to come (none lost).
    """
    rng = random.Random(seed)
    size = rng.choice([40, 120, 300])
    stream = SampleStream(size)
    validation: set[int] = set()
    served: dict[int, str] = {}  # index -> holder, since the last rewind
    given_back: set[int] = set()  # served, then returned to the front
    in_pass: set[str] = set()
    first_batch: dict[str, list[int]] = {}  # not reset, taken at most once
    open_conns: list[str] = []
    over: set[str] = set()  # told None; stays so until its own reset
    clean_pass = True  # validation ids unchanged since the last rewind
    names = iter(f"c{i}" for i in range(10**6))

    for _ in range(1500):
        op = rng.random()
        if op < 0.08 or not open_conns:
            conn = next(names)
            stream.connect(conn)
            open_conns.append(conn)
            first_batch[conn] = []
        elif op < 0.13:
            conn = open_conns.pop(rng.randrange(len(open_conns)))
            stream.disconnect(conn)
            in_pass.discard(conn)
            first_batch.pop(conn, None)
            over.discard(conn)
        elif op < 0.25:
            conn = rng.choice(open_conns)
            over.discard(conn)
            outcome = stream.reset(conn)
            last = first_batch.pop(conn, None) or []  # its one batch, if any
            assert outcome.rewound == (not in_pass - {conn})
            if outcome.rewound:
                served.clear()
                given_back.clear()
                in_pass = {conn}  # the rewinder reads the new pass
                first_batch = {c: [] for c in first_batch}
                clean_pass = True
            else:
                back = [i for i in last if i not in validation]
                assert outcome.returned == len(back)
                given_back.update(back)
                in_pass.add(conn)
        elif op < 0.27:
            validation = set(rng.sample(range(size + 20), rng.randint(0, size // 3)))
            stream.set_validation_ids(ids(*validation))
            validation = {i for i in validation if i < size}
            clean_pass = False
        else:
            conn = rng.choice(open_conns)
            count = rng.choice([1, 1, 2, 5, 16])
            assert stream.peek(count) == (expected := stream.peek(count))
            alone = not in_pass - {conn}
            got = stream.take(conn, count)
            assert got is None or got == expected
            if conn in over:
                assert got is None, f"{conn} was told its pass is over"
            if got is None:
                in_pass.discard(conn)
                first_batch.pop(conn, None)  # a take answered "terminate"
                over.add(conn)
                continue
            assert alone or len(got) == count, "a short batch while not alone"
            in_pass.add(conn)
            if conn in first_batch:
                if first_batch[conn]:
                    del first_batch[conn]  # a second take: not a probe
                else:
                    first_batch[conn] = got
            for index in got:
                assert index not in validation, f"validation id {index} served"
                assert index not in served or index in given_back, (
                    f"index {index} served twice since the last rewind"
                )
                given_back.discard(index)
                served[index] = conn
        status = stream.status()
        assert status["open_connections"] == len(open_conns)
        assert status["connections_in_pass"] == len(in_pass)
        assert status["samples_served_in_pass"] == len(served) - len(given_back)
        if clean_pass:
            to_come = status["remaining_iterations"]
            assert len(served) - len(given_back) + to_come == size - len(validation)


# -- rule 7: a bounded pass ends level ------------------------------------------
# EIR under DDP: every rank opens max(1, dataloader_workers) training
# connections, each runs the probe (take 1, reset) and then takes batches of
# its batch size until told the pass is over. Every rank must run the same
# number of steps, so every connection must end with the same number of full
# batches.
STEPS = itertools.count()  # orders the trainers' probes and resets


@dataclass
class Trainer:
    """One EIR training connection, as the tests below drive it."""

    name: str
    batch: int
    start_at: int = 0  # starts once some connection has this many batches
    leave_after: int | None = None  # closes after this many batches
    state: str = "waiting"  # -> probed -> training -> over | left | late
    batches: list[list[int]] = field(default_factory=list)
    behind_at_join: bool = False  # others had more batches when it joined
    probed_at: int = -1  # when it probed (a tick of STEPS)
    joined_at: int = -1  # when it reset
    in_pass: bool = False  # rule 3, as this test expects it

    def step(self, stream: SampleStream, trainers: list["Trainer"]) -> None:
        """Its next message: start and probe, reset, or take one batch."""
        if self.state == "waiting":
            stream.connect(self.name)
            self.probed_at = next(STEPS)
            # None if the pass is already over for newcomers
            self.in_pass = stream.take(self.name, 1) is not None
            self.state = "probed"
        elif self.state == "probed":
            in_pass = [t for t in trainers if t.in_pass and t is not self]
            rewound = stream.reset(self.name).rewound
            self.joined_at = next(STEPS)
            assert rewound == (not in_pass)  # rule 4
            self.in_pass = True  # joined, or rewound for itself (rule 3)
            self.behind_at_join = any(t.batches for t in trainers)
            self.state = "training"
            others_over = any(t.batches or t.state == "over" for t in trainers)
            if (rewound and others_over) or any(t.state == "late" for t in trainers):
                # Everyone else was over: a new pass, not the one tested (and
                # whoever joins after that rewind is in the new pass too).
                stream.disconnect(self.name)
                self.state = "late"
                self.in_pass = False
        elif (
            self.leave_after is not None
            and len(self.batches) >= self.leave_after
            and any(t.in_pass for t in trainers if t is not self)  # not the last
        ):
            stream.disconnect(self.name)
            self.state = "left"
            self.in_pass = False
        else:
            got = stream.take(self.name, self.batch)
            self.in_pass = got is not None
            if got is None:
                self.state = "over"
            else:
                self.batches.append(got)


def run_training(
    stream: SampleStream,
    trainers: list[Trainer],
    rng: random.Random,
    window: int | None = None,
) -> None:
    """Step the trainers in a random interleaving until none has more to do.

    A trainer waits until some training connection has `start_at` batches
    (and never starts once none is left training). With `window`, no
    connection gets more than that many batches ahead of the slowest one
    still training, as DDP's collectives keep ranks close (each connection
    also has a request or two in flight)."""
    for _ in range(10**6):
        training = [len(t.batches) for t in trainers if t.state == "training"]
        leaders = max(training, default=0)
        slowest = min(training, default=0)
        ready = [
            t
            for t in trainers
            if (
                t.state in ("probed", "training")
                and (window is None or len(t.batches) < slowest + window)
            )
            or (
                t.state == "waiting"
                and t.start_at <= leaders
                and (training or not t.start_at)
            )
        ]
        if not ready:
            assert all(t.state in ("over", "left", "waiting", "late") for t in trainers)
            return
        rng.choice(ready).step(stream, trainers)
    raise AssertionError("the pass never ended")


def check_level_end(
    stream: SampleStream,
    trainers: list[Trainer],
    validation: set[int],
    sat_out: set[str],
    exact: bool = True,
) -> int:
    """Rule 7 (and 1, 2) after a training pass: returns the final level.

    Every connection that trained to the end, except those that sat the pass
    out, has the same number of batches, all full; no index twice, no
    validation index. With `exact` (every batch size known early: EIR uses
    one), and without connections that left or sat out, what is left is less
    than one more batch for every connection that ended. (A batch size first
    seen late is counted as the pass's largest until then, so with mixed
    sizes more can be held back.)
    """
    served = [i for t in trainers for b in t.batches for i in b]
    duplicates = sorted(i for i, n in Counter(served).items() if n > 1)
    assert not duplicates, f"served twice: {duplicates[:10]}"
    assert not validation & set(served), "a validation index was served"
    ended = [t for t in trainers if t.state == "over" and t.name not in sat_out]
    for t in trainers:  # only the last batch can be short (alone: rule 7d)
        assert all(len(b) == t.batch for b in t.batches[:-1]), f"{t.name}: short"
    levels = {t.name: sum(len(b) == t.batch for b in t.batches) for t in ended}
    assert len(set(levels.values())) <= 1, f"unequal batch counts: {levels}"
    # Two ways for a connection that joined in step to sit out, both allowed
    # by rule 7: until a connection takes its first batch its size is unknown
    # and counts as the largest asked for so far (with mixed sizes, the guess
    # can be too small); and a first take not yet followed by a reset or a
    # second take may be a real batch, so its connection is kept level, even
    # one that came after (at the end of a short pass, its share can be what
    # another needed). Otherwise only a connection that joined behind can.
    one_size = len({t.batch for t in trainers}) == 1
    for name in sat_out:
        behind = next(t for t in trainers if t.name == name)
        later = any(t.probed_at > behind.joined_at for t in trainers)
        if behind.state != "late" and one_size and not later:
            assert behind.behind_at_join or behind.batches, f"{name} sat out in step"
    left = stream.remaining()
    if exact and ended and not sat_out and all(t.state == "over" for t in trainers):
        assert left < sum(t.batch for t in ended), f"{left} left unserved"
    return next(iter(levels.values()), 0)


def sat_out_of(records: list[logging.LogRecord]) -> set[str]:
    pattern = re.compile(r"conn#(\S+) .*(cannot be brought up|gets no data)")
    return {m.group(1) for r in records if (m := pattern.search(r.getMessage()))}


def pass_over_lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.getMessage().startswith("pass over")]


@pytest.mark.parametrize("seed", range(40))
def test_ranks_and_workers_end_a_pass_with_equal_full_batches(seed, caplog) -> None:
    """2-4 ranks x 1-3 workers, one batch size, random interleavings, ranks
    that start a few batches late: everyone is brought level, and fewer than
    one more batch for everyone is left over."""
    caplog.set_level(logging.INFO, logger="data_simulator")
    rng = random.Random(seed)
    batch = rng.choice([1, 3, 8, 32])
    connections = rng.randint(2, 4) * rng.randint(1, 3)
    size = rng.randint(6, 40) * connections * batch + rng.randrange(3 * batch)
    validation = set(rng.sample(range(size), rng.randrange(size // 8)))
    stream = SampleStream(size)
    stream.set_validation_ids(ids(*validation))
    trainers = [
        Trainer(f"r{k}", batch, start_at=rng.choice([0, 0, 1, 2, 3]) if k else 0)
        for k in range(connections)
    ]
    run_training(stream, trainers, rng, window=3)
    level = check_level_end(stream, trainers, validation, set())
    assert not sat_out_of(caplog.records)
    left = stream.remaining()
    assert level == (size - len(validation) - left) // (connections * batch)
    [line] = pass_over_lines(caplog.records)
    assert f"at {level} full batch(es) per connection" in line
    assert f"{left} sample(s) left unserved" in line


@pytest.mark.parametrize("seed", range(40))
def test_mixed_batch_sizes_and_leavers_still_end_level(seed, caplog) -> None:
    """Each connection its own batch size; some close early (their share is
    freed): those that train to the end have equal full batches."""
    caplog.set_level(logging.INFO, logger="data_simulator")
    rng = random.Random(1000 + seed)
    sizes = [rng.randint(1, 40) for _ in range(rng.randint(2, 7))]
    size = rng.randint(8, 30) * sum(sizes)
    stream = SampleStream(size)
    trainers = [
        Trainer(
            f"c{k}",
            b,
            start_at=rng.choice([0, 0, 1, 2]) if k else 0,
            leave_after=rng.choice([None, None, None, 1, 3]) if k else None,
        )
        for k, b in enumerate(sizes)
    ]
    run_training(stream, trainers, rng, window=3)
    check_level_end(stream, trainers, set(), sat_out_of(caplog.records))
    assert not sat_out_of(caplog.records)  # nobody started too late for this


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 400),
    sizes=st.lists(st.integers(1, 24), min_size=1, max_size=6),
    start_at=st.lists(st.integers(0, 12), min_size=6, max_size=6),
    rng=st.randoms(use_true_random=False),
)
def test_any_interleaving_ends_level_for_those_who_trained(
    size: int, sizes: list[int], start_at: list[int], rng: random.Random
) -> None:
    """Any pass length, batch sizes and start times, even too late to catch
    up: those that trained to the end have equal full batches, and one that
    sat out had joined behind the others."""
    stream = SampleStream(size)
    trainers = [Trainer(f"c{k}", b, start_at[k]) for k, b in enumerate(sizes)]
    handler = ListHandler()
    log = logging.getLogger("data_simulator")
    level, log.level = log.level, logging.INFO
    log.addHandler(handler)
    try:
        run_training(stream, trainers, rng)
    finally:
        log.removeHandler(handler)
        log.level = level
    check_level_end(stream, trainers, set(), sat_out_of(handler.records), False)


class ListHandler(logging.Handler):
    """Collects records (hypothesis tests cannot use the caplog fixture)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_two_ranks_get_equal_batches_and_the_leftover_is_logged(caplog) -> None:
    """The issue's run: 1,200 samples, 100 validation ids, two ranks with
    batch 32, rank 0 a batch ahead (its request in flight): without rule 7
    one rank got 22 batches and the other 21 and 24 samples."""
    caplog.set_level(logging.INFO, logger="data_simulator")
    stream = SampleStream(1200)
    stream.set_validation_ids(ids(*range(0, 1000, 10)))
    eir_probe(stream, "rank0")
    eir_probe(stream, "rank1")
    got: dict[str, list[list[int]]] = {"rank0": [], "rank1": []}
    for conn in ["rank0", "rank0", *["rank1", "rank0"] * 40, *["rank1"] * 5]:
        batch = stream.take(conn, 32)
        if batch is not None:
            got[conn].append(batch)
    assert [len(got["rank0"]), len(got["rank1"])] == [17, 17]
    assert all(len(b) == 32 for b in got["rank0"] + got["rank1"])
    assert stream.remaining() == 1100 - 34 * 32 == 12
    [line] = pass_over_lines(caplog.records)
    assert "at 17 full batch(es) per connection for the 2 connection(s)" in line
    assert "12 sample(s) left unserved" in line
    assert "(64)" in line


def test_the_pass_over_line_says_why_the_pass_ends_alone_or_together(
    caplog,
) -> None:
    """Alone, a connection stops because less than a batch is left; with
    others, they stop together, as GPU ranks must run the same number of
    steps."""
    caplog.set_level(logging.INFO, logger="data_simulator")
    alone = SampleStream(100)
    eir_probe(alone, "a")
    assert [len(b) for b in iter(lambda: alone.take("a", 32), None)] == [32] * 3 + [4]
    together = SampleStream(100)
    for conn in "ab":
        eir_probe(together, conn)
    assert together.take("a", 32) is not None
    assert together.take("b", 32) is not None
    assert together.take("a", 32) is None  # 36 left: not a batch for both
    assert pass_over_lines(caplog.records) == [
        "pass over after 4 batch(es) for the one connection in it: 0 sample(s) "
        "left, fewer than one more batch (32), so the pass ends there",
        "pass over at 1 full batch(es) per connection for the 2 connection(s) in "
        "it: 36 sample(s) left unserved in this pass, fewer than one more batch "
        "for each (64); they stop together because GPU ranks training together "
        "must run the same number of steps",
    ]


def test_a_rank_that_joins_behind_is_brought_up_to_the_others() -> None:
    stream = SampleStream(200)
    eir_probe(stream, "rank0")
    first = [stream.take("rank0", 10) for _ in range(3)]  # rank0 at 3
    outcome = eir_probe(stream, "rank1")  # its probe sample goes back
    assert (outcome.rewound, outcome.returned) == (False, 1)
    rank1 = drain(stream, "rank1", batch=10)  # it keeps rank0's share
    assert len(rank1) == 10 * 10  # 3 to catch up, 7 more: rank0 is owed 70
    rank0 = drain(stream, "rank0", batch=10)
    assert rank0 == list(range(130, 200))  # 3 + 7 batches: 10 each
    assert sorted([i for b in first for i in b] + rank1) == list(range(130))


def test_a_rank_that_joins_too_late_sits_the_pass_out(caplog) -> None:
    caplog.set_level(logging.INFO, logger="data_simulator")
    stream = SampleStream(100)
    eir_probe(stream, "rank0")
    assert stream.take("rank0", 32) == list(range(32))
    assert stream.take("rank0", 32) == list(range(32, 64))
    eir_probe(stream, "rank1")  # would need 64 of the 36 left
    assert stream.take("rank1", 32) is None  # it sits this pass out ...
    assert stream.take("rank0", 32) == list(range(64, 96))  # ... the other goes on
    assert stream.take("rank0", 32) == [96, 97, 98, 99]  # alone now: the tail
    assert stream.take("rank0", 32) is None
    late = [r.getMessage() for r in caplog.records if "rank1" in r.getMessage()]
    assert len(late) == 1 and "cannot bring it up" in late[0], late


def test_closing_frees_the_closers_share() -> None:
    for close in (False, True):
        stream = SampleStream(50)
        for conn in "abc":
            eir_probe(stream, conn)
        for conn in "abc":
            assert stream.take(conn, 10) is not None  # 30 served, 20 left
        if close:
            stream.disconnect("c")
        a, b = drain(stream, "a", batch=10), drain(stream, "b", batch=10)
        assert (len(a), len(b)) == ((10, 10) if close else (0, 0))


def test_a_connection_that_has_not_asked_yet_counts_with_the_largest_batch() -> None:
    stream = SampleStream(40)
    eir_probe(stream, "a")
    assert stream.take("a", 8) is not None
    eir_probe(stream, "b")  # joined, no getData yet: counted as 8 a batch
    assert stream.take("a", 8) is not None  # a at 2, b owed 16 of 24
    assert stream.take("a", 8) is None  # a third would leave b 8 short
    assert len(drain(stream, "b", batch=8)) == 16


def test_mixed_batch_sizes_end_at_the_same_count() -> None:
    stream = SampleStream(100)
    for conn in "ab":
        eir_probe(stream, conn)
    got = {"a": 0, "b": 0}
    for conn, size in [("a", 10), ("b", 30)] * 5:
        if stream.take(conn, size) is not None:
            got[conn] += 1
    assert got == {"a": 2, "b": 2}  # a third for a would leave b short
    assert stream.remaining() == 100 - 80


def test_told_once_told_until_its_own_reset() -> None:
    stream = SampleStream(100)
    for conn in "ab":
        eir_probe(stream, conn)
    assert stream.take("a", 40) is not None
    assert stream.take("b", 40) is not None
    assert stream.take("a", 40) is None  # 20 left: not a batch for both
    stream.disconnect("b")
    assert stream.take("a", 10) is None  # samples are left, but not for it
    assert stream.reset("a").rewound  # alone: a new pass
    assert stream.take("a", 10) == list(range(10))


def test_an_unbounded_stream_never_ends_a_pass() -> None:
    stream = SampleStream(None)
    eir_probe(stream, "a")
    for _ in range(50):
        assert stream.take("a", 100) is not None
    eir_probe(stream, "b")  # 50 batches behind: nothing to catch up to
    assert stream.take("b", 7) is not None
    assert stream.take("a", 1000) is not None
