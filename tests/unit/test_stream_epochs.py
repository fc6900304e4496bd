"""`SampleStream` over epochs: a pass is `epochs` epochs of 0..n-1, each in
ascending order or shuffled by an `EpochOrder`, with the rules of one pass
kept across them. Connections are plain strings (support/streams.py).
"""

import logging
import random
from collections import Counter
from typing import ClassVar

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

from data_simulator import SimulatedHealthData
from eirstream.order import EpochOrder
from eirstream.stream import ResetOutcome, SampleStream


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
