"""`SampleStream` rule 7: a bounded pass ends level.

EIR under DDP: every rank opens max(1, dataloader_workers) training
connections, each runs the probe (take 1, reset) and then takes batches of
its batch size until told the pass is over. Every rank must run the same
number of steps, so every connection must end with the same number of full
batches. Connections are plain strings; the trainers and the reading of the
stream's log are support/streams.py's.
"""

import logging
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.streams import (
    Trainer,
    drain,
    eir_probe,
    ids,
    pass_over_lines,
    run_training,
    sat_out_of,
    two_ranks_a_batch_apart,
)

from eirstream.stream import SampleStream


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
