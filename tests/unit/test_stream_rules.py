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
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_simulator import SimulatedHealthData
from eirstream.order import EpochOrder
from eirstream.seats import SEAT_LIFE_CYCLE, Seat, SeatEvent, SeatState
from eirstream.stream import ResetOutcome, SampleStream


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
        "epoch": 0,
        "epochs": 1,
        "shuffled": False,
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
    caplog.set_level(logging.INFO, logger="eirstream.stream")
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
    caplog.set_level(logging.INFO, logger="eirstream.stream")
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
    log = logging.getLogger("eirstream.stream")
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


def two_ranks_a_batch_apart(stream: SampleStream, rounds: int) -> dict[str, list]:
    """Two ranks probe, then take batches of 32, rank 0 a batch ahead (its
    request in flight), for `rounds` rounds and 5 more tries of rank 1; the
    batches each got."""
    eir_probe(stream, "rank0")
    eir_probe(stream, "rank1")
    got: dict[str, list[list[int]]] = {"rank0": [], "rank1": []}
    for conn in ["rank0", "rank0", *["rank1", "rank0"] * rounds, *["rank1"] * 5]:
        batch = stream.take(conn, 32)
        if batch is not None:
            got[conn].append(batch)
    return got


def test_two_ranks_get_equal_batches_and_the_leftover_is_logged(caplog) -> None:
    """The issue's run: 1,200 samples, 100 validation ids, two ranks with
    batch 32, rank 0 a batch ahead (its request in flight): without rule 7
    one rank got 22 batches and the other 21 and 24 samples."""
    caplog.set_level(logging.INFO, logger="eirstream.stream")
    stream = SampleStream(1200)
    stream.set_validation_ids(ids(*range(0, 1000, 10)))
    got = two_ranks_a_batch_apart(stream, 40)
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
    caplog.set_level(logging.INFO, logger="eirstream.stream")
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
    caplog.set_level(logging.INFO, logger="eirstream.stream")
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


# -- epochs and a seeded shuffle ------------------------------------------------
# A pass is `epochs` epochs of 0..n-1, each in ascending order or shuffled by
# an `EpochOrder`, a function of (seed, epoch) only (rule 1). The indices
# served, in the order they were served (leaving out the probes, whose
# samples the first reset rewinds or gives back), are the pass's order.
def epoch_stream(
    n: int,
    epochs: int | None,
    shuffle: bool,
    seed: int = 0,
    blocks: list[int] | None = None,
) -> SampleStream:
    order = EpochOrder(n, seed, blocks) if shuffle else None
    return SampleStream(n, epochs=epochs, order=order)


def pass_order(stream: SampleStream, epochs: int, skip: set[int]) -> list[int]:
    """What `epochs` epochs of `stream` hand out, without validation ids."""
    n, order = stream.num_samples, stream.order
    assert n is not None
    return [
        i
        for epoch in range(epochs)
        for i in (order.indices(epoch, 0, n) if order else range(n))
        if i not in skip
    ]


def serve_all(
    stream: SampleStream, batches: dict[str, int], rng: random.Random
) -> list[int]:
    """Connections with these batch sizes run EIR's probe, then take in a
    random interleaving until each is told its pass is over: the indices
    served after the probes, in serving order."""
    for conn in batches:
        eir_probe(stream, conn)
    active, served = list(batches), []
    while active:
        conn = rng.choice(active)
        got = stream.take(conn, batches[conn])
        if got is None:
            active.remove(conn)
        else:
            served += got
    return served


def check_epochs(
    stream: SampleStream, served: list[int], epochs: int, skip: set[int]
) -> None:
    """Rules 1 and 2 over a pass of epochs: each epoch serves every index
    but the validation ids once, in the pass's order, and what was served
    and what `remaining` counts add up to the whole pass."""
    n = stream.num_samples
    assert n is not None
    expected = pass_order(stream, epochs, skip)
    assert served == expected[: len(served)]
    if stream.epochs is not None:
        assert len(served) + stream.remaining() == len(expected)
    per_epoch = n - len(skip)
    for epoch in range(len(served) // per_epoch if per_epoch else 0):
        chunk = served[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert sorted(chunk) == sorted(set(range(n)) - skip), f"epoch {epoch}"
    assert not skip & set(served)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("validation", [set(), {0, 3, 64, 65, 299}])
@pytest.mark.parametrize("seed", range(4))
def test_each_epoch_serves_every_index_once_across_connections(
    shuffle: bool, validation: set[int], seed: int
) -> None:
    rng = random.Random(seed)
    stream = epoch_stream(300, 4, shuffle, seed, blocks=[50, 100, 7, 43, 100])
    stream.set_validation_ids(ids(*validation))
    batches = {"a": 1, "b": 7, "c": 32, "d": rng.randint(1, 40)}
    served = serve_all(stream, batches, rng)
    check_epochs(stream, served, 4, validation)
    assert stream.remaining() < sum(batches.values())  # rule 7 ends it level
    assert stream.status()["epoch"] == 3


def test_validation_ids_set_mid_pass_are_skipped_in_every_later_epoch() -> None:
    for shuffle in (False, True):
        stream = epoch_stream(100, 3, shuffle, seed=5, blocks=[10] * 10)
        stream.connect("a")
        first = [i for _ in range(15) for i in stream.take("a", 10) or []]
        assert stream.status()["epoch"] == 1
        assert first == pass_order(stream, 2, set())[:150]
        stream.set_validation_ids(ids(*range(0, 100, 3)))
        epochs = pass_order(stream, 3, set())
        rest_of_epoch = [i for i in epochs[150:200] if i % 3]
        assert stream.remaining() == len(rest_of_epoch) + 66  # 100 - 34 ids
        to_come = rest_of_epoch + [i for i in epochs[200:] if i % 3]
        assert drain(stream, "a", batch=9) == to_come


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_order_depends_only_on_seed_and_epoch(shuffle: bool) -> None:
    """The same seed gives the same order whatever the batch sizes, the
    connections, the stream and the rewinds; another seed or epoch, another
    order (when shuffled)."""
    blocks, skip = [30] * 10 + [17], {5, 99, 250}

    def served(seed: int, batches: dict[str, int], rng: int) -> list[int]:
        stream = epoch_stream(317, 3, shuffle, seed, blocks)
        stream.set_validation_ids(ids(*skip))
        return serve_all(stream, batches, random.Random(rng))

    one = served(8, {"a": 7}, 0)
    many = served(8, {"a": 1, "b": 13, "c": 64}, 1)
    common = min(len(one), len(many))
    assert one[:common] == many[:common] and common > 3 * 300
    rewound = epoch_stream(317, 3, shuffle, 8, blocks)
    rewound.set_validation_ids(ids(*skip))
    rewound.connect("a")
    rewound.take("a", 500)
    assert rewound.reset("a").rewound
    assert drain(rewound, "a", batch=64) == one
    epochs = [one[:314], one[314:628], one[628:942]]
    assert all(sorted(e) == sorted(set(range(317)) - skip) for e in epochs)
    other_seed = served(9, {"a": 7}, 0)
    if shuffle:
        assert len({tuple(e) for e in epochs}) == 3
        assert other_seed != one
    else:
        assert epochs[0] == epochs[1] == epochs[2] == sorted(epochs[0])
        assert other_seed == one


@pytest.mark.parametrize("shuffle", [False, True])
def test_peek_equals_the_next_takes_across_epoch_boundaries(shuffle: bool) -> None:
    rng = random.Random(3)
    for _ in range(60):
        stream = epoch_stream(100, 3, shuffle, rng.randrange(99), [25] * 4)
        stream.set_validation_ids(ids(*rng.sample(range(100), rng.randint(0, 30))))
        stream.connect("a")
        stream.take("a", rng.randint(1, 290))  # anywhere in the pass
        eir_probe(stream, "b")  # its sample goes back to the front ...
        stream.disconnect("b")  # ... and stays there; "a" is alone (rule 7d)
        count = rng.randint(1, 250)
        peeked = stream.peek(count)
        assert stream.peek(count) == peeked  # peeking takes nothing
        taken: list[int] = []
        while len(taken) < len(peeked) and (
            got := stream.take("a", rng.randint(1, 40))
        ):
            taken += got
        assert taken[: len(peeked)] == peeked


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("validation", [[], list(range(0, 1000, 7))])
@pytest.mark.parametrize("epochs", [1, 3])
def test_remaining_is_what_the_pass_still_serves(
    shuffle: bool, validation: list[int], epochs: int
) -> None:
    """Alone, a connection gets all that `remaining` counts (rule 7d), and
    every take lowers it by what it served; with others, what they are
    served and what is left over add up to it."""
    rng = random.Random(epochs)
    stream = epoch_stream(1000, epochs, shuffle, blocks=[100, 400, 1, 499])
    stream.set_validation_ids(ids(*validation))
    eir_probe(stream, "a")
    total = stream.remaining()
    assert total == epochs * (1000 - len(validation))
    served = 0
    while (left := stream.remaining()) is not None:
        got = stream.take("a", rng.choice([1, 5, 64, 300]))
        if got is None:
            break
        served += len(got)
        assert stream.remaining() == left - len(got)
    assert (served, stream.remaining()) == (total, 0)
    stream.disconnect("a")
    together = serve_all(stream, {"a": 16, "b": 16, "c": 16}, rng)  # rewinds
    assert len(together) + stream.remaining() == total
    assert stream.remaining() < 3 * 16


@pytest.mark.parametrize("shuffle", [False, True])
def test_endless_epochs_never_end_the_pass(shuffle: bool) -> None:
    stream = epoch_stream(50, None, shuffle, seed=1, blocks=[10] * 5)
    stream.set_validation_ids(ids(3, 4))
    eir_probe(stream, "a")
    served = [i for _ in range(300) for i in stream.take("a", 7) or []]
    assert len(served) == 2100 and stream.remaining() is None
    assert stream.status()["epoch"] == 2100 // 48 and stream.status()["epochs"] is None
    check_epochs(stream, served, 2100 // 48 + 1, {3, 4})
    eir_probe(stream, "b")  # far behind: nothing to catch up to (rule 7)
    assert stream.take("b", 7) is not None
    assert stream.take("a", 1000) is not None
    everything = epoch_stream(50, None, shuffle)
    everything.set_validation_ids(ids(*range(50)))
    assert everything.remaining() == 0
    assert everything.take("a", 1) is None  # nothing to serve, ever
    assert epoch_stream(0, None, shuffle).take("a", 1) is None


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_epochs_end_with_two_ranks_level(shuffle: bool, caplog) -> None:
    """The two-rank run of rule 7 over two epochs: 2 x 1,100 training
    samples, 34 batches of 32 each, 24 left over, and the epoch boundary
    does not matter."""
    caplog.set_level(logging.INFO, logger="eirstream.stream")
    stream = epoch_stream(1200, 2, shuffle, seed=4)
    stream.set_validation_ids(ids(*range(0, 1000, 10)))
    got = two_ranks_a_batch_apart(stream, 80)
    assert [len(got["rank0"]), len(got["rank1"])] == [34, 34]
    assert all(len(b) == 32 for b in got["rank0"] + got["rank1"])
    assert stream.remaining() == 2200 - 68 * 32 == 24
    [line] = pass_over_lines(caplog.records)
    assert "at 34 full batch(es) per connection for the 2 connection(s)" in line
    assert "24 sample(s) left unserved" in line
    counts = Counter(i for b in got["rank0"] + got["rank1"] for i in b)
    assert max(counts.values()) == 2 and not counts.keys() & set(range(0, 1000, 10))


@pytest.mark.parametrize("seed", range(12))
def test_ranks_joining_late_end_a_pass_of_epochs_level(seed: int, caplog) -> None:
    """Rule 7 with the trainers above over 1-3 epochs: those that ended
    have equal full batches, and fewer than one more batch each is left."""
    caplog.set_level(logging.INFO, logger="eirstream.stream")
    rng = random.Random(seed)
    batch, connections = rng.choice([1, 8, 32]), rng.randint(2, 5)
    epochs, n = rng.randint(1, 3), rng.randint(3, 12) * connections * batch
    stream = epoch_stream(n, epochs, rng.random() < 0.5, seed)
    trainers = [
        Trainer(f"r{k}", batch, start_at=rng.choice([0, 1, 2]) if k else 0)
        for k in range(connections)
    ]
    run_training(stream, trainers, rng, window=3)
    assert not sat_out_of(caplog.records)
    assert {len(t.batches) for t in trainers} == {len(trainers[0].batches)}
    assert all(len(b) == batch for t in trainers for b in t.batches)
    assert stream.remaining() < connections * batch
    counts = Counter(i for t in trainers for b in t.batches for i in b)
    assert max(counts.values()) <= epochs


def test_status_reports_the_epoch_and_the_shuffle() -> None:
    keys = ("epoch", "epochs", "shuffled")
    assert [SampleStream(10).status()[k] for k in keys] == [0, 1, False]
    assert [SampleStream(None).status()[k] for k in keys] == [0, None, False]
    stream = epoch_stream(10, 3, True, seed=2)
    stream.connect("a")
    status = stream.status()
    assert (status["epoch"], status["epochs"], status["shuffled"]) == (0, 3, True)
    stream.take("a", 10)  # all of epoch 0: the next take starts epoch 1
    assert (stream.status()["epoch"], stream.status()["current_position"]) == (0, 10)
    stream.take("a", 4)
    status = stream.status()
    assert (status["epoch"], status["current_position"]) == (1, 4)
    assert (status["max_iterations"], status["remaining_iterations"]) == (10, 16)
    assert status["samples_served_in_pass"] == 14
    assert stream.reset("a") == ResetOutcome(rewound=True, position=0, returned=0)
    assert stream.status()["epoch"] == 0
    endless = SampleStream(10, epochs=None)
    assert {k: endless.status()[k] for k in ("epoch", "epochs", "shuffled")} == {
        "epoch": 0,
        "epochs": None,
        "shuffled": False,
    }
    assert endless.status()["remaining_iterations"] is None


def test_a_stream_for_a_source_takes_its_epochs_shuffle_and_blocks() -> None:
    class Blocks(SimulatedHealthData):
        block_sizes: ClassVar[list[int]] = [40, 0, 60]

    source = Blocks(seed=0, max_iterations=100)
    plain = SampleStream.for_source(source)
    assert (plain.epochs, plain.order) == (1, None)
    assert plain.status()["shuffled"] is False
    stream = SampleStream.for_source(source, epochs=None, shuffle=True, seed=3)
    assert stream.epochs is None and stream.order is not None
    assert stream.order.block_sizes == (40, 0, 60) and stream.order.seed == 3
    assert stream.peek(100) == EpochOrder(100, 3, [40, 0, 60]).indices(0, 0, 100)
    fixed = SampleStream.for_source(
        SimulatedHealthData(max_iterations=3000), shuffle=True
    )
    assert fixed.order is not None and fixed.order.block_sizes == (1024, 1024, 952)
    with pytest.raises(ValueError, match="unbounded source cannot be shuffled"):
        SampleStream.for_source(SimulatedHealthData(), shuffle=True)
    with pytest.raises(ValueError, match="sum to num_samples"):
        SampleStream.for_source(Blocks(max_iterations=99), shuffle=True)


def test_epochs_and_orders_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="epochs must be 1 or more"):
        SampleStream(10, epochs=0)
    with pytest.raises(ValueError, match="no epochs"):
        SampleStream(None, epochs=2)
    with pytest.raises(ValueError, match="no epochs"):
        SampleStream(None, order=EpochOrder(10))
    with pytest.raises(ValueError, match="covers 10 indices"):
        SampleStream(11, order=EpochOrder(10))
    assert SampleStream(None, epochs=None).epochs is None  # one endless epoch


def check_same_counts(stream: SampleStream, model: SampleStream) -> None:
    """The status of a stream of epochs against that of its one-epoch model:
    the same position in the pass and the same counts."""
    ours, theirs, n = stream.status(), model.status(), stream.num_samples
    assert n is not None
    position = ours.get("epoch", 0) * n + ours["current_position"]
    assert position == theirs["current_position"]
    for key in (
        "remaining_iterations",
        "samples_served_in_pass",
        "samples_served_total",
        "rewinds",
        "connections_in_pass",
        "returned_to_front",
    ):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_a_pass_of_epochs_serves_what_one_long_epoch_would(
    shuffle: bool, seed: int
) -> None:
    """Every rule at once: k epochs of n positions behave as one ascending
    epoch of k x n positions (whose validation ids are the positions that
    hold one), under random connects, closes, probes, resets, takes, peeks
    and new validation sets: the same takes (position -> index), the same
    resets, the same counts."""
    rng = random.Random(seed)
    n, epochs = rng.choice([20, 45, 130, 300]), rng.randint(1, 4)
    blocks = [n // 4, n // 4, n - 2 * (n // 4)]
    stream = epoch_stream(n, epochs, shuffle, seed, blocks)
    model = SampleStream(n * epochs)
    order = stream.order

    def index(position: int) -> int:
        epoch, at = divmod(position, n)
        return order.index_at(epoch, at) if order else at

    conns: list[str] = []
    told: set[str] = set()  # told their pass is over: they mostly reset next
    for step in range(800):
        op = rng.random()
        if (op < 0.05 and len(conns) < 4) or not conns:
            conns.append(f"c{step}")
            stream.connect(conns[-1])
            model.connect(conns[-1])
        elif op < 0.08:
            conn = conns.pop(rng.randrange(len(conns)))
            stream.disconnect(conn)
            model.disconnect(conn)
            told.discard(conn)
        elif op < 0.2 or (told and op < 0.5):
            conn = rng.choice(sorted(told) if told and op >= 0.2 else conns)
            ours, theirs = stream.reset(conn), model.reset(conn)
            assert (ours.rewound, ours.returned) == (theirs.rewound, theirs.returned)
            told.discard(conn)
        elif 0.5 <= op < 0.52:
            skip = set(rng.sample(range(n), rng.randint(0, n // 3)))
            stream.set_validation_ids(ids(*skip))
            held = [g for g in range(n * epochs) if index(g) in skip]
            model.set_validation_ids(ids(*held))
        else:
            conn, count = rng.choice(conns), rng.choice([1, 1, 3, 8, 25])
            assert stream.peek(3 * count) == [index(g) for g in model.peek(3 * count)]
            got, expected = stream.take(conn, count), model.take(conn, count)
            assert got == (None if expected is None else [index(g) for g in expected])
            if got is None:
                told.add(conn)
        check_same_counts(stream, model)


@settings(max_examples=200, deadline=None)
@given(
    blocks=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    seed=st.integers(0, 10**6),
    epochs=st.integers(1, 4),
    batches=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    skip_share=st.floats(0, 1),
    shuffle=st.booleans(),
    rng=st.randoms(use_true_random=False),
)
def test_any_pass_of_epochs_serves_each_index_once_per_epoch(
    blocks: list[int],
    seed: int,
    epochs: int,
    batches: list[int],
    skip_share: float,
    shuffle: bool,
    rng: random.Random,
) -> None:
    n = sum(blocks)
    stream = epoch_stream(n, epochs, shuffle, seed, blocks)
    skip = set(rng.sample(range(n), int(skip_share * n)))
    stream.set_validation_ids(ids(*skip))
    sizes = {f"c{k}": b for k, b in enumerate(batches)}
    served = serve_all(stream, sizes, rng)
    check_epochs(stream, served, epochs, skip)
    if len(set(batches)) == 1:  # one batch size: known from the first take
        assert stream.remaining() < max(1, sum(batches))
