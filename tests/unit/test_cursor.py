"""`Cursor` alone: what comes next in a pass, without connections.

The cursor's rules (cursor.py): epochs one after another, ascending or in an
`EpochOrder`; the front first; skipped indices never handed out; `peek`
shows what `read` hands out; `remaining` counts it. Who may take is tested
with `SampleStream` in test_stream_rules.py.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eirstream.cursor import Cursor
from eirstream.order import EpochOrder


def whole_pass(cursor: Cursor, skip: set[int]) -> list[int]:
    """The documented pass, written out plainly: every epoch's indices in
    its order, but the skipped ones."""
    n, epochs, order = cursor.num_samples, cursor.epochs, cursor.order
    assert n is not None and epochs is not None
    out: list[int] = []
    for epoch in range(epochs):
        indices = range(n) if order is None else order.indices(epoch, 0, n)
        out += [i for i in indices if i not in skip]
    return out


def test_reads_hand_out_an_ascending_epoch_in_batches_then_nothing() -> None:
    cursor = Cursor(10)
    assert cursor.read(4) == [0, 1, 2, 3]
    assert cursor.read(4) == [4, 5, 6, 7]
    assert cursor.read(4) == [8, 9]  # fewer at the end of the pass
    assert cursor.read(4) == [] and cursor.remaining() == 0
    assert (cursor.epoch, cursor.position) == (0, 10)


def test_skipped_indices_are_never_handed_out_and_not_counted() -> None:
    cursor = Cursor(10)
    assert cursor.set_skip({0, 3, 4, 9}) == {0, 3, 4, 9}
    assert cursor.remaining() == 6
    assert cursor.peek(3) == [1, 2, 5]
    assert cursor.read(3) == [1, 2, 5]
    assert cursor.position == 6  # just after the last one handed out
    assert cursor.remaining() == 3
    assert cursor.read(5) == [6, 7, 8]
    assert cursor.remaining() == 0 and cursor.sorted_skip() == [0, 3, 4, 9]


def test_a_later_epoch_is_entered_only_for_an_index_in_it() -> None:
    cursor = Cursor(5, epochs=2)
    assert cursor.read(5) == [0, 1, 2, 3, 4]
    assert (cursor.epoch, cursor.position) == (0, 5)  # still at epoch 0's end
    assert cursor.remaining() == 5
    assert cursor.read(7) == [0, 1, 2, 3, 4]  # the pass ends in epoch 1
    assert (cursor.epoch, cursor.position) == (1, 5)


def test_one_read_crosses_epoch_boundaries() -> None:
    cursor = Cursor(3, epochs=3)
    cursor.set_skip({1})
    assert cursor.peek(5) == [0, 2, 0, 2, 0]
    assert cursor.read(5) == [0, 2, 0, 2, 0]
    assert (cursor.epoch, cursor.position) == (2, 1)
    assert cursor.read(5) == [2]


def test_the_front_comes_first_and_holds_no_skipped_index() -> None:
    cursor = Cursor(20)
    assert cursor.read(3) == [0, 1, 2]
    assert cursor.give_back([1, 2]) == 2
    assert cursor.give_back([0]) == 1  # ahead of what is there
    assert cursor.returned == 3 and cursor.remaining() == 20
    assert cursor.peek(5) == [0, 1, 2, 3, 4]
    cursor.set_skip({1, 4})  # dropped from the front too
    assert cursor.returned == 2 and cursor.peek(4) == [0, 2, 3, 5]
    assert cursor.give_back([4, 7]) == 1  # a skipped one does not go back
    assert cursor.read(2) == [7, 0]
    assert cursor.read(3) == [2, 3, 5]


def test_a_rewind_starts_the_pass_again_and_drops_the_front() -> None:
    cursor = Cursor(6, epochs=2)
    cursor.read(8)
    cursor.give_back([5])
    cursor.rewind()
    assert (cursor.epoch, cursor.position, cursor.returned) == (0, 0, 0)
    assert cursor.read(12) == [0, 1, 2, 3, 4, 5] * 2


def test_skipped_indices_out_of_range_are_left_out() -> None:
    cursor = Cursor(10)
    assert cursor.set_skip([-1, 2, 10, 11]) == {2}
    assert Cursor(None).set_skip([-1, 5, 10**9]) == {5, 10**9}


def test_an_unbounded_cursor_reads_on_forever() -> None:
    cursor = Cursor(None)
    cursor.set_skip({2})
    assert cursor.read(4) == [0, 1, 3, 4]
    assert cursor.peek(3) == [5, 6, 7]
    assert cursor.remaining() is None and cursor.epochs is None


def test_endless_epochs_of_nothing_hand_out_nothing() -> None:
    cursor = Cursor(4, epochs=None)
    assert cursor.remaining() is None
    assert cursor.read(10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    cursor.set_skip({0, 1, 2, 3})
    assert cursor.remaining() == 0
    assert cursor.read(5) == [] and cursor.peek(5) == []


def test_what_does_not_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="num_samples must be 0 or more, got -1"):
        Cursor(-1)
    with pytest.raises(ValueError, match="epochs must be 1 or more"):
        Cursor(3, epochs=0)
    with pytest.raises(ValueError, match="no epochs"):
        Cursor(None, epochs=2)
    with pytest.raises(ValueError, match="covers 4 indices"):
        Cursor(5, order=EpochOrder(4))


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 60),
    epochs=st.integers(1, 3),
    shuffle=st.booleans(),
    seed=st.integers(0, 5),
    skip=st.sets(st.integers(0, 59), max_size=20),
    steps=st.lists(st.tuples(st.integers(1, 25), st.booleans()), max_size=20),
)
def test_reads_follow_the_pass_and_peek_and_remaining_agree(
    n: int,
    epochs: int,
    shuffle: bool,
    seed: int,
    skip: set[int],
    steps: list[tuple[int, bool]],
) -> None:
    """Any reads and peeks: together the reads are the pass as documented,
    each peek is what the next read hands out, and `remaining` is what the
    pass still hands out."""
    order = EpochOrder(n, seed, window=16) if shuffle else None
    cursor = Cursor(n, epochs, order)
    skip = cursor.set_skip(skip)
    expected = whole_pass(cursor, skip)
    served: list[int] = []
    for count, peek_first in steps:
        peeked = cursor.peek(count) if peek_first else None
        got = cursor.read(count)
        assert peeked is None or peeked == got
        assert got == expected[len(served) : len(served) + count]
        served += got
        assert cursor.remaining() == len(expected) - len(served)
    rest = cursor.read(len(expected) + 1)
    assert served + rest == expected
    assert cursor.read(1) == [] and cursor.remaining() == 0
