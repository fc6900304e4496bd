"""What comes next in a pass: the cursor of a `SampleStream`.

`Cursor` knows which sample index the stream hands out next, and nothing of
who asks for it (that is seats.py). Its state is the epoch it is in, the
position within that epoch, the *front* (indices given back, handed out
before fresh ones) and the validation ids to skip. Its rules (the
stream's rules 1 and 2, seen from the cursor):

a. An epoch visits the positions 0..num_samples-1 once each; the index at a
   position is the position itself (ascending) or, with an `EpochOrder`
   (order.py), the epoch's shuffled index there. An unbounded cursor
   (`num_samples` None) is one endless ascending epoch.
b. A pass is `epochs` epochs one after another from (epoch 0, position 0),
   or endless epochs with `epochs=None`. A later epoch is entered only for
   an index in it: after the last index of an epoch the cursor stays at
   that epoch's end until the next read.
c. `read` hands out the front first, then fresh indices from the cursor on;
   `peek` shows what `read` would hand out without moving anything, across
   epoch boundaries too; `remaining` counts what the pass still hands out.
d. Skipped indices (the validation ids) are never handed out, in any epoch;
   the front never holds one (`give_back` and `set_skip` leave them out).

Every read of fresh indices goes through `_ascending` or `_shuffled`, one
epoch at a time; the ascending one makes the indices as one range (C work,
no Python work per index), because the server peeks thousands ahead.
Integers only; no I/O, no logging.
"""

from bisect import bisect_left
from collections import deque
from collections.abc import Collection, Iterable
from itertools import filterfalse, islice

from eirstream.order import EpochOrder, SkipCounts


class Cursor:
    """The next indices of a pass of `epochs` epochs (None: endless) over
    `num_samples` indices (None: unbounded), in ascending order or in
    `order`'s, skipping the validation ids."""

    def __init__(
        self,
        num_samples: int | None,
        epochs: int | None = 1,
        order: EpochOrder | None = None,
    ) -> None:
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples must be 0 or more, got {num_samples}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be 1 or more (None: endless), got {epochs}")
        if num_samples is None and (epochs not in (1, None) or order is not None):
            raise ValueError("an unbounded stream has no epochs to count or shuffle")
        if order is not None and order.num_samples != num_samples:
            raise ValueError(
                f"the order covers {order.num_samples} indices, the stream "
                f"{num_samples}"
            )
        self.num_samples = num_samples
        self.epochs = None if num_samples is None else epochs
        self.order = order
        self.epoch = 0  # the epoch the cursor is in
        self.position = 0  # the next fresh position in that epoch
        self._front: deque[int] = deque()  # given back, served before fresh ones
        self._skip: Collection[int] = frozenset()
        self._skip_sorted: list[int] | None = None  # made when first needed
        self._skip_counts: SkipCounts | None = None  # made when first needed
        # Up to `wanted` (at least 1) indices of an epoch from a position on
        # that are not skipped, and the position after the last one (the
        # epoch's end if there are fewer): chosen once, called per read.
        self._in_epoch = self._ascending if order is None else self._shuffled

    # -- what comes next ---------------------------------------------------
    def peek(self, count: int) -> list[int]:
        """The indices the next reads would hand out, `count` of them (fewer
        at the end of the pass), without moving anything."""
        out = list(islice(self._front, count)) if self._front else []
        wanted = count - len(out)
        if wanted <= 0:
            return out
        fresh = self._fresh(wanted)[0]
        return out + fresh if out else fresh

    def read(self, count: int) -> list[int]:
        """Hand out the next `count` indices: the front first, then fresh ones
        from the cursor on (fewer at the end of the pass)."""
        front = self._front
        out = [front.popleft() for _ in range(min(count, len(front)))] if front else []
        wanted = count - len(out)
        if wanted <= 0:
            return out
        fresh, self.epoch, self.position = self._fresh(wanted)
        return out + fresh if out else fresh

    def remaining(self) -> int | None:
        """How many indices the pass still hands out: the front, the rest of
        this epoch and the epochs after it (None: unbounded or endless
        epochs, unless there is nothing to hand out at all)."""
        end = self.num_samples
        if end is None:
            return None
        per_epoch = end - len(self._skip)  # the skipped lie within 0..end-1
        if self.epochs is None:
            return None if per_epoch > 0 else 0
        fresh = max(end - self.position, 0)
        if self._skip and fresh:
            fresh -= self._skipped_from(self.position)
        later = (self.epochs - self.epoch - 1) * per_epoch
        return len(self._front) + fresh + later

    def left_in_epoch(self) -> int | None:
        """How many indices the cursor's epoch still hands out: the front
        and the fresh ones from the position on (None: unbounded)."""
        end = self.num_samples
        if end is None:
            return None
        fresh = max(end - self.position, 0)
        if self._skip and fresh:
            fresh -= self._skipped_from(self.position)
        return len(self._front) + fresh

    @property
    def returned(self) -> int:
        """How many given-back indices wait at the front."""
        return len(self._front)

    @property
    def front(self) -> tuple[int, ...]:
        """The given-back indices, in the order they are handed out."""
        return tuple(self._front)

    # -- what moves it -----------------------------------------------------
    def rewind(self) -> None:
        """Back to the start of epoch 0; what was given back is dropped."""
        self.epoch = self.position = 0
        self._front.clear()

    def restore(self, epoch: int, position: int, front: Iterable[int] = ()) -> None:
        """Put the cursor at `position` of `epoch` with `front` given back
        (skipped indices left out): where a saved pass stood (state.py)."""
        if self.num_samples is not None and not 0 <= position <= self.num_samples:
            raise ValueError(
                f"position {position} is outside an epoch of {self.num_samples}"
            )
        if epoch < 0 or (self.epochs is not None and epoch >= self.epochs):
            raise ValueError(
                f"it stopped in epoch {epoch}, past the {self.epochs} epoch(s) of "
                "a pass here: give a larger --epochs"
            )
        self.epoch, self.position = epoch, position
        self._front = deque(i for i in front if i not in self._skip)

    def between(self, start: tuple[int, int], stop: tuple[int, int]) -> list[int]:
        """The indices at the positions from `start` to `stop` (each an
        (epoch, position)) in pass order, skipped ones left out: what a read
        that moved the cursor from `start` to `stop` handed out fresh."""
        out: list[int] = []
        epoch, position = start
        while (epoch, position) < stop:
            end = stop[1] if epoch == stop[0] else self.num_samples
            assert end is not None
            if self.order is None:
                run: Iterable[int] = range(position, end)
            else:
                run = self.order.indices(epoch, position, end)
            out += filterfalse(self._skip.__contains__, run) if self._skip else run
            epoch, position = epoch + 1, 0
        return out

    def give_back(self, indices: Iterable[int]) -> int:
        """Put `indices` back at the front, in their order, ahead of what is
        there, leaving out skipped ones. Returns how many went back."""
        returned = [i for i in indices if i not in self._skip]
        self._front.extendleft(reversed(returned))
        return len(returned)

    # -- the validation ids ------------------------------------------------
    @property
    def skip(self) -> Collection[int]:
        """The indices never handed out (the validation ids)."""
        return self._skip

    def set_skip(self, skip: Collection[int]) -> Collection[int]:
        """Replace the indices never to hand out, dropping them from the
        front too. Indices outside this cursor's range are left out; returns
        the set now skipped."""
        if not isinstance(skip, set | frozenset):
            skip = set(skip)
        end = self.num_samples  # a source's mapping may name indices out of range
        if skip and (min(skip) < 0 or (end is not None and max(skip) >= end)):
            skip = {i for i in skip if i >= 0 and (end is None or i < end)}
        self._skip = skip
        self._skip_sorted = None
        self._skip_counts = None
        if skip and self._front:
            self._front = deque(i for i in self._front if i not in skip)
        return skip

    def sorted_skip(self) -> list[int]:
        """The skipped indices in ascending order."""
        if self._skip_sorted is None:
            self._skip_sorted = sorted(self._skip)
        return self._skip_sorted

    def _skipped_from(self, position: int) -> int:
        """How many skipped indices lie at `position` or after in this epoch."""
        if self.order is None:
            ordered = self.sorted_skip()
            return len(ordered) - bisect_left(ordered, position)
        if self._skip_counts is None:
            self._skip_counts = self.order.skip_counts(self._skip)
        return self._skip_counts.count_from(self.epoch, position)

    # -- fresh indices, epoch after epoch ------------------------------------
    def _fresh(self, wanted: int) -> tuple[list[int], int, int]:
        """The next `wanted` (at least 1) fresh indices of the pass, without
        taking them: the indices, and the epoch and position after the last
        one. Fewer at the end of the pass (rule b)."""
        epoch = self.epoch
        out, position = self._in_epoch(epoch, self.position, wanted)
        while len(out) < wanted and self._epoch_after(epoch):
            epoch += 1
            more, position = self._in_epoch(epoch, 0, wanted - len(out))
            out += more
        return out, epoch, position

    def _epoch_after(self, epoch: int) -> bool:
        """Whether the pass goes on after `epoch` with something to hand out."""
        if self.epochs is not None and epoch + 1 >= self.epochs:
            return False
        return self.num_samples is not None and self.num_samples > len(self._skip)

    def _ascending(
        self, epoch: int, position: int, wanted: int
    ) -> tuple[list[int], int]:
        """`_in_epoch` for an ascending epoch (every epoch is the same): one
        range, filtered in C."""
        skip, end = self._skip, self.num_samples
        stop = position + wanted + len(skip)  # at most len(skip) are skipped
        if end is not None and stop > end:
            stop = max(end, position)
        fresh = range(position, stop)
        if not skip:
            out = list(fresh[:wanted])
            return out, position + len(out)
        out = list(islice(filterfalse(skip.__contains__, fresh), wanted))
        return out, out[-1] + 1 if len(out) == wanted else stop

    def _shuffled(
        self, epoch: int, position: int, wanted: int
    ) -> tuple[list[int], int]:
        """`_in_epoch` for a shuffled epoch, read from the order a run of
        positions at a time."""
        order, skip, end = self.order, self._skip, self.num_samples
        assert order is not None and end is not None
        out: list[int] = []
        while len(out) < wanted and position < end:
            need = wanted - len(out)
            # Enough positions for `need` at the validation ids' share, and
            # a few more: another round reads on if the guess falls short.
            margin = need * len(skip) // end + 16 if skip else 0
            stop = min(end, position + need + margin)
            run = order.indices(epoch, position, stop)
            if skip:
                kept = list(filterfalse(skip.__contains__, run))
                if len(kept) >= need:
                    del kept[need:]
                    stop = position + run.index(kept[-1]) + 1
                run = kept
            out += run
            position = stop
        return out, position
