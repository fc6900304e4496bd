"""Named streams (eirstream/streams.py) on their own: the stream a path
names, the registry of streams and its bound, the getData wait histogram,
and that two streams of one registry never touch each other's state.
"""

from collections.abc import Callable
from http import HTTPStatus

import pytest
from support.streams import drain, eir_probe, ids

from data_simulator import SimulatedHealthData
from eirstream.stream import SampleStream
from eirstream.streams import (
    DEFAULT_STREAM,
    NAME_RULE,
    WAIT_BUCKETS,
    Refused,
    Streams,
    WaitHistogram,
    stream_name,
)


# -- the name a path gives (rule 1) ---------------------------------------------
@pytest.mark.parametrize(
    ("base", "path", "name"),
    [
        ("/ws", "/ws", "default"),
        ("/ws", "/ws/default", "default"),
        ("/ws", "/ws/run-1.a_b", "run-1.a_b"),
        ("/ws", "/ws/" + "x" * 64, "x" * 64),
        ("/ws", "/ws/A.9", "A.9"),
        ("/", "/", "default"),
        ("/", "/run-1", "run-1"),
        ("/data/", "/data/", "default"),  # the --path as given
        ("/data/", "/data", "default"),
        ("/data/", "/data/run-1", "run-1"),
        ("/a/b", "/a/b/run", "run"),
    ],
)
def test_a_path_under_the_base_names_its_stream(
    base: str, path: str, name: str
) -> None:
    assert stream_name(path, base) == name


@pytest.mark.parametrize(
    ("base", "path"),
    [
        ("/ws", "/wsx"),
        ("/ws", "/"),
        ("/ws", "/other"),
        ("/ws", "/wsx/run"),
        ("/ws", "/w"),
        ("/data/", "/dat"),
        ("/data/", "/ws/run"),
        ("/a/b", "/a"),
    ],
)
def test_a_path_outside_the_base_names_no_stream(base: str, path: str) -> None:
    assert stream_name(path, base) is None


@pytest.mark.parametrize(
    "name", ["x" * 65, "a/b", "a b", "é", "%20", "run?", "a:b", "run/", "/"]
)
@pytest.mark.parametrize("base", ["/ws", "/", "/data/"])
def test_a_bad_name_is_refused_with_400_naming_the_rule(base: str, name: str) -> None:
    root = base.rstrip("/")
    with pytest.raises(Refused) as refused:
        stream_name(f"{root}/{name}", base)
    assert refused.value.status == HTTPStatus.BAD_REQUEST
    assert NAME_RULE in refused.value.text
    assert str(refused.value) == refused.value.text


def test_an_empty_name_after_the_base_is_refused() -> None:
    # ("/ws/" is not "/ws"; under a --path that ends in "/", that path is
    # the default stream's: above.)
    with pytest.raises(Refused) as refused:
        stream_name("/ws/", "/ws")
    assert refused.value.status == HTTPStatus.BAD_REQUEST
    assert NAME_RULE in refused.value.text


def test_a_very_long_bad_name_is_cut_short_in_the_refusal() -> None:
    with pytest.raises(Refused) as refused:
        stream_name("/ws/" + "y" * 5000, "/ws")
    assert len(refused.value.text) < 300
    assert NAME_RULE in refused.value.text


# -- the registry (rules 2 and 3) ------------------------------------------------
def counting_factory() -> tuple[Callable[[str], SampleStream], list[str]]:
    """A factory of 100-sample streams, and the names it was called for."""
    made: list[str] = []

    def make(name: str) -> SampleStream:
        made.append(name)
        return SampleStream(100, name=name)

    return make, made


def test_open_makes_a_stream_once_and_returns_the_same_after() -> None:
    make, made = counting_factory()
    streams = Streams(make)
    first = streams.open("run-a")
    assert made == ["run-a"] and first.name == "run-a"
    assert first.stream.name == "run-a"
    assert streams.open("run-a") is first
    assert streams.open("run-a").stream is first.stream
    assert made == ["run-a"] and len(streams) == 1
    assert "run-a" in streams and "run-b" not in streams
    assert streams["run-a"] is first


def test_one_stream_more_than_max_streams_is_refused_and_nothing_is_made() -> None:
    make, made = counting_factory()
    streams = Streams(make, max_streams=2)
    default = streams.open(DEFAULT_STREAM)
    other = streams.open("other")
    with pytest.raises(Refused) as refused:
        streams.open("third")
    assert refused.value.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert "at most 2 streams" in refused.value.text
    assert "--max-streams" in refused.value.text
    assert "'third'" in refused.value.text
    assert made == [DEFAULT_STREAM, "other"]  # the factory was not called
    assert len(streams) == 2 and "third" not in streams
    # The streams kept are still open to their names, full or not.
    assert streams.open("other") is other
    assert streams.open(DEFAULT_STREAM) is default
    assert [named.name for named in streams] == [DEFAULT_STREAM, "other"]


def test_check_room_refuses_a_new_name_when_full_and_makes_nothing() -> None:
    make, made = counting_factory()
    streams = Streams(make, max_streams=2)
    streams.check_room("first")  # room: nothing said, nothing made
    assert made == [] and len(streams) == 0
    streams.open("first")
    streams.open("second")
    streams.check_room("first")  # kept: room or not
    with pytest.raises(Refused) as refused:
        streams.check_room("third")
    assert refused.value.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert "at most 2 streams" in refused.value.text
    assert made == ["first", "second"] and "third" not in streams


def test_max_streams_below_one_is_an_error() -> None:
    make, _ = counting_factory()
    with pytest.raises(ValueError, match="at least 1"):
        Streams(make, max_streams=0)


def test_with_connections_lists_the_streams_with_a_connection_open() -> None:
    make, _ = counting_factory()
    streams = Streams(make)
    a, b, c = (streams.open(name) for name in ("a", "b", "c"))
    assert streams.with_connections() == []
    a.stream.connect("x")
    c.stream.connect("y")
    c.stream.connect("z")
    assert streams.with_connections() == [a, c]
    a.stream.disconnect("x")
    b.stream.connect("w")
    assert streams.with_connections() == [b, c]


def test_iterating_while_a_stream_is_opened_is_safe() -> None:
    make, _ = counting_factory()
    streams = Streams(make)
    streams.open("a")
    for named in streams:  # a new stream opened mid-scrape, say
        streams.open(named.name + "-more")
    assert len(streams) == 2


# -- the wait histogram ----------------------------------------------------------
def bucket(histogram: WaitHistogram, bound: str) -> int:
    return dict(histogram.cumulative())[bound]


def test_a_wait_at_a_bound_counts_in_that_bound_s_bucket() -> None:
    waits = WaitHistogram()
    waits.observe(0.1)
    assert bucket(waits, "0.05") == 0
    assert bucket(waits, "0.1") == 1
    assert bucket(waits, "+Inf") == 1
    for bound in WAIT_BUCKETS:  # each bound: in its own bucket, not the one below
        one = WaitHistogram()
        one.observe(bound)
        cumulative = one.cumulative()
        at = WAIT_BUCKETS.index(bound)
        assert cumulative[at] == (str(bound), 1), (bound, cumulative)
        assert at == 0 or cumulative[at - 1][1] == 0, (bound, cumulative)


def test_cumulative_buckets_rise_to_inf_which_is_the_count() -> None:
    waits = WaitHistogram()
    seen = [0.0, 0.0004, 0.001, 0.003, 0.07, 0.1, 0.10001, 0.6, 9.99, 10.0, 12.5, 600]
    for seconds in seen:
        waits.observe(seconds)
    cumulative = waits.cumulative()
    assert [bound for bound, _ in cumulative] == [*map(str, WAIT_BUCKETS), "+Inf"]
    counts = [count for _, count in cumulative]
    assert counts == sorted(counts)
    assert cumulative[-1] == ("+Inf", len(seen)) and waits.count == len(seen)
    for bound, count in zip(WAIT_BUCKETS, counts, strict=False):
        assert count == sum(1 for s in seen if s <= bound), bound
    assert waits.total == pytest.approx(sum(seen))


def test_over_counts_the_waits_longer_than_a_bound() -> None:
    waits = WaitHistogram()
    for seconds in (0.01, 0.1, 0.1, 0.100001, 0.3, 4.0, 11.0):
        waits.observe(seconds)
    assert waits.over(0.1) == 4
    assert waits.over(1.0) == 2
    assert waits.over(10.0) == 1
    assert waits.over(0.001) == 7
    assert WaitHistogram().over(0.1) == 0


# -- two streams of one registry never touch each other ---------------------------
def shuffled_streams() -> Streams:
    """Streams of a 200-sample source from one factory, each shuffled by the
    same seed, as the server makes them."""
    source = SimulatedHealthData(seed=0, max_iterations=200)

    def make(name: str) -> SampleStream:
        return SampleStream.for_source(source, shuffle=True, seed=5, name=name)

    return Streams(make)


def fresh_order(count: int) -> list[int]:
    """The first `count` indices a new stream of `shuffled_streams` hands out."""
    reference = shuffled_streams().open("reference").stream
    return reference.take("r", count)


def test_takes_on_one_stream_never_move_the_other() -> None:
    streams = shuffled_streams()
    a, b = streams.open("a").stream, streams.open("b").stream
    a.connect("x")
    b.connect("y")
    taken_a = [i for _ in range(7) for i in a.take("x", 13)]
    assert b.status()["current_position"] == 0
    assert b.status()["samples_served_total"] == 0
    taken_b = b.take("y", 40)
    assert taken_a == fresh_order(91)
    assert taken_b == fresh_order(40)  # b starts at the start, as if alone
    assert a.status()["current_position"] == 91
    assert b.status()["current_position"] == 40
    assert drain(a, "x") == fresh_order(200)[91:]  # a's pass, untouched by b


def test_validation_ids_of_one_stream_are_served_in_the_other() -> None:
    streams = shuffled_streams()
    a, b = streams.open("a").stream, streams.open("b").stream
    held_out = [3, 50, 51, 199]
    a.set_validation_ids(ids(*held_out))
    assert a.status()["validation_ids"] == 4 and b.status()["validation_ids"] == 0
    assert a.status()["phase"] == "training" and b.status()["phase"] == "setup"
    a.connect("x")
    b.connect("y")
    served_a, served_b = drain(a, "x"), drain(b, "y")
    assert sorted(served_a) == sorted(set(range(200)) - set(held_out))
    assert sorted(served_b) == list(range(200))  # a's ids are a's alone
    b.set_validation_ids(ids(7))  # and b's set does not replace a's
    assert a.validation_indices() == held_out and b.validation_indices() == [7]


def test_two_different_validation_sets_on_two_streams_do_not_warn(caplog) -> None:
    streams = shuffled_streams()
    a, b = streams.open("a").stream, streams.open("b").stream
    for stream, conn, held_out in ((a, "x", (1, 2)), (b, "y", (3, 4))):
        stream.set_validation_ids(ids(*held_out))
        eir_probe(stream, conn)
        stream.take(conn, 10)  # mid-pass
    a.set_validation_ids(ids(1, 2))  # another rank of a's run: the same set
    assert "second training run" not in caplog.text
    b.set_validation_ids(ids(5, 6))  # another run on b, mid-pass: warned
    assert caplog.text.count("second training run") == 1
    assert "stream 'b'" in caplog.text


def test_a_reset_on_one_stream_does_not_rewind_the_other() -> None:
    streams = shuffled_streams()
    a, b = streams.open("a").stream, streams.open("b").stream
    a.connect("x")
    b.connect("y")
    a.take("x", 30)
    first_b = b.take("y", 25)
    outcome = a.reset("x")  # alone on a: a rewinds
    assert outcome.rewound and a.status()["current_position"] == 0
    assert b.status()["current_position"] == 25 and b.status()["rewinds"] == 0
    assert a.status()["rewinds"] == 1
    assert first_b + b.take("y", 25) == fresh_order(50)
    assert a.take("x", 10) == fresh_order(10)


def test_a_stream_without_connections_keeps_its_position() -> None:
    streams = shuffled_streams()
    named = streams.open("paused")
    stream = named.stream
    stream.connect("x")
    stream.connect("y")
    got = stream.take("x", 12) + stream.take("y", 8)
    stream.disconnect("x")
    stream.disconnect("y")
    assert streams.with_connections() == []
    assert streams.open("paused") is named  # kept, with its state
    assert stream.status()["current_position"] == 20
    stream.connect("z")  # a run reconnects: the next take continues
    got += stream.take("z", 15)
    assert got == fresh_order(35)
    assert stream.status()["samples_served_total"] == 35
