"""`SampleStream` rules 3 to 6: a reset rewinds, joins the pass or gives
back what was taken; connections open and close; the stream answers only
the caller; and all the rules at once, in random interleavings of many
connections. Connections are plain strings (support/streams.py).
"""

import random

import pytest
from support.streams import drain, eir_probe, ids, one_connection, probe

from data_simulator import SimulatedHealthData
from eirstream.stream import ResetOutcome, SampleStream


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
