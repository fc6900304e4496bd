"""The stream: which sample index comes next, for every connection of a server.

`SampleStream` is the shared state of one server: the cursor over sample
indices, the indices handed back to the front of the stream, the validation
ids to skip, and the bookkeeping of who is in the middle of a pass. Every
connection takes its batches from the one stream, so no index is served
twice within an epoch. A pass is one epoch or several (each in its own
seeded order with a shuffle: order.py). It does no I/O and holds no samples,
only integers.
"""

import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import filterfalse, islice
from typing import Any

from eirstream.order import WINDOW_INDICES, EpochOrder, SkipCounts
from eirstream.sample_ids import indices_of_sample_ids
from eirstream.sources import SampleSource

logger = logging.getLogger("eirstream.stream")


@dataclass(frozen=True)
class ResetOutcome:
    """What a `reset` did: rewound the stream, or joined the pass in progress."""

    rewound: bool
    position: int  # the cursor after the reset (0 after a rewind)
    returned: int  # indices this connection had taken that went back to the front


# =============================================================================
# A connection's seat in the stream: its states, and what moves it between them.
#
# `SampleStream` keeps one `Seat` per open connection: `connect` (or a first
# `take` or `reset`) makes it FRESH, `disconnect` drops it from any state.
# Every change of state goes through `Seat.enter` and SEAT_LIFE_CYCLE below.
# A seat is in the pass (rule 3) while PROBED, STREAMING or SITTING_OUT, and
# has a level (rule 7) while PROBED or STREAMING. A reset rewinds only when
# no other seat is in the pass, so a seat leaves the pass only by being told
# (OVER) or by closing: a rewind never moves another seat.
# =============================================================================
class SeatState(StrEnum):
    FRESH = "fresh"  # connected; has not reset and took nothing
    PROBED = "probed"  # took one batch before its first reset (rule 4)
    STREAMING = "streaming"  # in the pass with a level: reset, or took twice
    SITTING_OUT = "sitting-out"  # joined behind, cannot be brought level (7b)
    OVER = "over"  # told its pass is over, until its own reset (rule 3)

    @property
    def in_pass(self) -> bool:
        """Rule 3: from taking data or resetting until told the pass is over."""
        return self in _IN_PASS


class SeatEvent(StrEnum):
    PROBE = "probe"  # its first take before its first reset was served
    SERVED = "served"  # a later take was served (a second one confirms a probe)
    TOLD_OVER = "told-over"  # a take was answered None
    REWIND = "rewind"  # its reset rewound the stream (nobody else in the pass)
    JOIN = "join"  # its reset joined the pass, and it can be brought level
    SIT_OUT = "sit-out"  # its reset joined the pass, but cannot be brought level


FRESH, PROBED, STREAMING, SITTING_OUT, OVER = SeatState
_IN_PASS = frozenset({PROBED, STREAMING, SITTING_OUT})
_LEVELLED = frozenset({PROBED, STREAMING})  # counted by rule 7
_TOLD = frozenset({SITTING_OUT, OVER})  # every take of it returns None


@dataclass(slots=True)
class Seat:
    """One connection's record in a `SampleStream`. `level` and `batch_size`
    hold only while it has a level, `probe_batch` only while PROBED: `enter`
    clears them when the seat leaves those states."""

    state: SeatState = FRESH
    level: int = 0  # batches served since it joined the pass (rule 7)
    batch_size: int | None = None  # the count of its last take (rule 7)
    probe_batch: tuple[int, ...] = ()  # its one take before its first reset

    def enter(self, event: SeatEvent) -> None:
        """The one place a seat changes state: as SEAT_LIFE_CYCLE says, or
        RuntimeError for a transition the table does not have."""
        allowed = SEAT_LIFE_CYCLE[self.state]
        if event not in allowed:
            raise RuntimeError(f"no transition from {self.state!r} on {event!r}")
        state = self.state = allowed[event]
        if state is not PROBED:
            self.probe_batch = ()
        if state not in _LEVELLED:
            self.level, self.batch_size = 0, None


_RESET = {  # a reset, from any state: rules 4 and 7b say which
    SeatEvent.REWIND: STREAMING,
    SeatEvent.JOIN: STREAMING,
    SeatEvent.SIT_OUT: SITTING_OUT,
}
SEAT_LIFE_CYCLE: dict[SeatState, dict[SeatEvent, SeatState]] = {
    # state -> {event -> next state}
    FRESH: {SeatEvent.PROBE: PROBED, SeatEvent.TOLD_OVER: OVER, **_RESET},
    PROBED: {SeatEvent.SERVED: STREAMING, SeatEvent.TOLD_OVER: OVER, **_RESET},
    STREAMING: {SeatEvent.SERVED: STREAMING, SeatEvent.TOLD_OVER: OVER, **_RESET},
    SITTING_OUT: {SeatEvent.TOLD_OVER: OVER, **_RESET},  # told at its next take
    OVER: {SeatEvent.TOLD_OVER: OVER, **_RESET},
}


class SampleStream:
    """One cursor over sample indices, shared by every connection of a server.

    An *epoch* visits the indices 0..num_samples-1 once each, in ascending
    order or, with an `EpochOrder` (stream_order.py), in a shuffled order
    that is a function of (seed, epoch) alone. A *pass* is what the stream
    serves from one rewind (to the start of epoch 0) until it is exhausted:
    `epochs` epochs one after another, or endless epochs with `epochs=None`.
    An unbounded stream (`num_samples` None) is one endless ascending epoch.
    The rules:

    1. One cursor. Every `take`, from any connection, gets the next indices
       in one step. Within an epoch no index is handed out twice, however
       many connections there are, except the ones given back by rule 4.
       Each epoch hands out every index that is not a validation id (rule 2)
       exactly once across all connections, in the epoch's order, and the
       next epoch starts where it ends (the last epoch of a bounded pass may
       hold back its last few indices: rule 7). The order is the same after
       every rewind and restart, whatever the batch sizes and however many
       connections read it.
    2. Validation ids are never handed out. After `set_validation_ids`, their
       indices are skipped by every later `take`, in every epoch and across
       rewinds, until the next `set_validation_ids` replaces the whole set.
       The same set again (every GPU rank of a run sends it) changes
       nothing. A *different* set while connections are mid-pass is accepted
       too, with a warning: it is a second training run sharing this server
       and this pass.
    3. A connection is *in the pass* from when it takes data or resets
       (rule 4), until it is told its pass is over (`take` returns None) or
       closes. (No other connection can rewind under it: rule 4.) Once told,
       every `take` of it returns None until its own next reset.
    4. `reset` rewinds (to the start of epoch 0) only when no *other*
       connection is in the pass; otherwise the requester joins the pass in
       progress. If a connection's first reset joins, and its one request
       for data before it was answered with one batch (EIR's validation
       probe takes one sample and throws it away), that batch goes back to
       the front of the stream, minus any validation ids. So at most one
       batch per connection is remembered, and only until its second take
       or its first reset; memory does not grow with the run. A connection
       with a remembered batch is in the pass, so no other connection can
       rewind under it.
    5. Opening or closing a connection never moves the cursor and never
       rewinds, whatever that connection had taken.
    6. The stream never talks to anyone: the caller answers the connection
       that asked, and nobody else.
    7. A bounded pass ends level, because GPU ranks training together must
       all run the same number of steps. Each connection in the pass has a
       *level*, the batches it was served since it joined the pass, and a
       batch size, the count of its last take (until it has one, the
       largest asked for in the pass). A first take before the first reset
       may be EIR's probe, given back by rule 4: it counts only once a
       second take shows it was not, and takes nothing from the others.
       The *deficit* of a level is what it takes to bring every connection
       below it up to it. A take is served, in full, only if what is left
       after it covers the deficit of the level it reaches, or of the
       leaders' level for a connection behind them. So:
       a. Whoever is behind can always catch up. The first take by a leader
          that cannot be served fixes the pass's *final level* at the
          leaders' level: from then on only connections below it are
          served, up to it, and every other take returns None. What is left
          over, fewer samples than one more batch for every connection in
          the pass, is not served in this pass; one INFO line says how many.
       b. A connection that joins behind the others (a rank that starts
          late) is brought up to their level if what is left covers it;
          otherwise it sits this pass out (its takes return None, one INFO
          line) and the others go on as if it had not come.
       c. Closing frees the closer's share. A connection that grows its
          batch size near the end may be cut short (EIR never does that).
       d. A connection alone in the pass is served the last samples as a
          short batch: there is nobody to keep in step with.
       Epoch boundaries do not count: a pass with epochs ends level at the
       end of its last epoch, as a single-epoch pass does at its end. An
       unbounded stream, or one with endless epochs, never ends a pass, so
       rule 7 never refuses it.

    `peek` shows what the next takes would hand out, without taking it,
    across epoch boundaries too.
    Connections are any hashable keys. The state is a handful of integers,
    a set of integers and one `Seat` per connection (no samples; with a
    shuffle also the `EpochOrder`, O(blocks) per epoch plus the windows in
    use), and every method is synchronous and cheap, so under asyncio each
    call is atomic; the same small interface could be backed by a shared
    store serving several server processes.
    """

    def __init__(
        self,
        num_samples: int | None,
        indices_of: Callable[[Sequence[str]], Collection[int]] | None = None,
        *,
        epochs: int | None = 1,
        order: EpochOrder | None = None,
    ) -> None:
        """`num_samples`: indices per epoch, 0..num_samples-1 (None:
        unbounded, one endless epoch). `indices_of`: maps received validation
        ids to the distinct indices they name, leaving out ids this stream
        does not produce; by default ids are `sample_<k>`. `epochs`: epochs
        per pass (None: endless). `order`: the shuffled order of every epoch
        (None: ascending)."""
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
        self._order = order
        self._skip_counts: SkipCounts | None = None  # made when first needed
        # Rule 7 applies only to a pass that ends; the one cursor over a
        # single ascending epoch has fast paths of its own.
        self._bounded = num_samples is not None and epochs is not None
        self._plain = (order is None and self.epochs == 1) or num_samples is None
        self._epoch = 0  # the epoch the cursor is in
        if indices_of is None:

            def indices_of(ids: Sequence[str]) -> set[int]:
                return indices_of_sample_ids(ids, num_samples)

        self._indices_of = indices_of
        self._cursor = 0  # next fresh position in the epoch
        self._front: deque[int] = deque()  # given back, served before fresh ones
        self._skip: Collection[int] = frozenset()
        self._skip_sorted: list[int] | None = None  # for remaining_iterations
        self._validation_ids_received = 0
        self._validation_ids_set = False
        self._seats: dict[Hashable, Seat] = {}  # one per open connection
        self._final_level: int | None = None  # rule 7a, once fixed
        # The largest take of this pass that was no probe: every batch size
        # of the pass is at most this, and it stands in for one not known yet.
        self._largest_batch = 0
        self._served_in_pass = 0
        self._served_total = 0
        self._rewinds = 0

    @classmethod
    def for_source(
        cls,
        source: SampleSource,
        *,
        epochs: int | None = 1,
        shuffle: bool = False,
        seed: int = 0,
    ) -> "SampleStream":
        """The stream of `source`: its length, and its mapping of sample ids,
        with `epochs` epochs per pass (None: endless), each shuffled by
        (seed, epoch) with `shuffle`.

        A source may offer `indices_of(ids)` (all ids at once, as
        `SimulatedHealthData` does); otherwise its `index_of` is asked id by id.
        A source may offer `block_sizes` (how many consecutive indices each
        block it reads at once holds): the shuffle keeps reads within few
        blocks; otherwise it uses fixed blocks (stream_order.py). It may offer
        `shuffle_window`, the most indices to mix at a time (where a row
        gives many samples, small windows keep each worker from splitting
        the same rows); otherwise stream_order.py's default.
        """
        bulk = getattr(source, "indices_of", None)
        if bulk is None:
            index_of = source.index_of

            def bulk(ids: Sequence[str]) -> set[int]:
                return {i for i in map(index_of, ids) if i is not None}

        order = None
        if shuffle:
            if source.num_samples is None:
                raise ValueError("an unbounded source cannot be shuffled")
            blocks = getattr(source, "block_sizes", None)
            window = getattr(source, "shuffle_window", None) or WINDOW_INDICES
            order = EpochOrder(source.num_samples, seed, blocks, window)
        return cls(source.num_samples, bulk, epochs=epochs, order=order)

    # -- connections -------------------------------------------------------
    def connect(self, conn: Hashable) -> None:
        """Register a new connection; it has taken nothing and not reset."""
        self._seat(conn)

    def _seat(self, conn: Hashable) -> Seat:
        """The seat of `conn`: a FRESH one for a connection not seen before."""
        seat = self._seats.get(conn)
        if seat is None:
            seat = self._seats[conn] = Seat()
        return seat

    def disconnect(self, conn: Hashable) -> None:
        """Forget a connection; the cursor and the others are untouched."""
        self._seats.pop(conn, None)

    def _in_pass_besides(self, seat: Seat) -> bool:
        """Whether any connection other than `seat`'s is in the pass (rule 3)."""
        return any(s.state.in_pass for s in self._seats.values() if s is not seat)

    def _connections_in_pass(self) -> int:
        return sum(s.state.in_pass for s in self._seats.values())

    # -- the stream --------------------------------------------------------
    def take(self, conn: Hashable, count: int) -> list[int] | None:
        """The next `count` indices for `conn`; None once its pass is over.

        In a bounded pass a batch is cut short only for a connection alone
        in the pass (rule 7d)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        seat = self._seat(conn)
        state = seat.state
        # A FRESH seat's take may be EIR's probe (rule 4): rule 7 counts it,
        # and its size, only once a second take confirms it.
        if state is not FRESH and count > self._largest_batch:
            self._largest_batch = count
        if state in _TOLD:
            seat.enter(SeatEvent.TOLD_OVER)
            return None
        if self._bounded:
            count = self._balanced_count(seat, conn, count)
            if not count:
                seat.enter(SeatEvent.TOLD_OVER)
                return None
        elif not self._plain and self.remaining() == 0:
            seat.enter(SeatEvent.TOLD_OVER)  # endless epochs of nothing to serve
            return None
        out = self._serve(count)
        if state is FRESH:
            seat.probe_batch = tuple(out)
            seat.enter(SeatEvent.PROBE)
        else:
            seat.level += 2 if state is PROBED else 1  # a confirmed probe counts
            seat.batch_size = count
            seat.enter(SeatEvent.SERVED)
        return out

    def _serve(self, count: int) -> list[int]:
        """Hand out the next `count` indices: the front first, then fresh ones
        past the cursor, skipping validation ids (fewer at the end)."""
        # The front never holds a validation id: `reset` and
        # `set_validation_ids` leave them out.
        front = self._front
        out = [front.popleft() for _ in range(min(count, len(front)))] if front else []
        wanted = count - len(out)
        if not self._plain:
            if wanted:
                fresh, self._epoch, self._cursor = self._read(wanted)
                out += fresh
        elif not self._skip:  # the common case, inline: one range, in C
            cursor, end = self._cursor, self.num_samples
            stop = cursor + wanted if end is None else min(cursor + wanted, end)
            if stop > cursor:
                out.extend(range(cursor, stop))
                self._cursor = stop
        elif wanted:
            fresh, self._cursor = self._ascending(self._cursor, wanted)
            out += fresh
        self._served_in_pass += len(out)
        self._served_total += len(out)
        return out

    def _ascending(self, cursor: int, wanted: int) -> tuple[list[int], int]:
        """Up to `wanted` (at least 1) positions from `cursor` on in an
        ascending epoch that are no validation ids, and the cursor after the
        last one (the epoch's end if there are fewer)."""
        skip, end = self._skip, self.num_samples
        stop = cursor + wanted + len(skip)  # at most len(skip) are skipped
        if end is not None and stop > end:
            stop = max(end, cursor)
        fresh = range(cursor, stop)
        if not skip:
            out = list(fresh[:wanted])
            return out, cursor + len(out)
        out = list(islice(filterfalse(skip.__contains__, fresh), wanted))
        return out, out[-1] + 1 if len(out) == wanted else stop

    def _shuffled(self, epoch: int, cursor: int, wanted: int) -> tuple[list[int], int]:
        """Up to `wanted` (at least 1) indices from position `cursor` on in
        shuffled `epoch` that are no validation ids, and the position after
        the last one (the epoch's end if there are fewer)."""
        order, skip, end = self._order, self._skip, self.num_samples
        assert order is not None and end is not None
        out: list[int] = []
        while len(out) < wanted and cursor < end:
            need = wanted - len(out)
            # Enough positions for `need` at the validation ids' share, and
            # a few more: another round reads on if the guess falls short.
            margin = need * len(skip) // end + 16 if skip else 0
            stop = min(end, cursor + need + margin)
            chunk = order.indices(epoch, cursor, stop)
            if skip:
                kept = list(filterfalse(skip.__contains__, chunk))
                if len(kept) >= need:
                    del kept[need:]
                    stop = cursor + chunk.index(kept[-1]) + 1
                chunk = kept
            out += chunk
            cursor = stop
        return out, cursor

    def _read(self, wanted: int) -> tuple[list[int], int, int]:
        """The next `wanted` (at least 1) fresh indices of the pass, epoch
        after epoch, without taking them: the indices, and the epoch and
        position after the last one. Fewer at the end of the pass; a later
        epoch is entered only for an index in it."""
        epoch, cursor, end = self._epoch, self._cursor, self.num_samples
        assert end is not None
        out: list[int] = []
        while True:
            if cursor < end:
                need = wanted - len(out)
                if self._order is None:
                    fresh, cursor = self._ascending(cursor, need)
                else:
                    fresh, cursor = self._shuffled(epoch, cursor, need)
                if out:
                    out += fresh
                else:
                    out = fresh  # the usual case: one epoch, no copy
            if len(out) == wanted or not self._epoch_after(epoch):
                return out, epoch, cursor
            epoch, cursor = epoch + 1, 0

    def _epoch_after(self, epoch: int) -> bool:
        """Whether the pass goes on after `epoch` with something to serve
        (the validation ids lie within the epoch: rule 2)."""
        if self.epochs is not None and epoch + 1 >= self.epochs:
            return False
        return self.num_samples is not None and self.num_samples > len(self._skip)

    def _others(self, seat: Seat) -> tuple[int, int, int, int]:
        """Rule 7's view of the seats with a level, but `seat`: how many, the
        highest level, the sum of their batch sizes, and the sum of level x
        batch size (a size not known yet counts as the pass's largest take).

        The *deficit* of a level L (the samples that bring them all up to L)
        is then L x sizes - weighted, because no seat is ever above the L it
        is measured against: L is at least the leaders' level until the
        final level is fixed, and no take lifts a seat past the final level."""
        guess = self._largest_batch
        count = top = sizes = weighted = 0
        for other in self._seats.values():
            if other.state in _LEVELLED and other is not seat:
                level, size = other.level, other.batch_size or guess
                count += 1
                sizes += size
                weighted += level * size
                if level > top:
                    top = level
        return count, top, sizes, weighted

    def _balanced_count(self, seat: Seat, conn: Hashable, count: int) -> int:
        """How many indices rule 7 lets `conn` take now: `count`, or fewer
        (the tail, for a connection alone in the pass), or 0 (none: its pass
        is over). Fixes the final level at the first refused leader.

        A FRESH seat's take may be EIR's probe: it takes nothing from the
        others' share and counts for nothing (its reset decides whether the
        connection can be brought level, rule 7b). A PROBED seat's take
        confirms that its first one was no probe: both count."""
        left = self.remaining() or 0
        probe = seat.state is FRESH
        level = seat.level + (seat.state is PROBED)
        peers, top, sizes, weighted = self._others(seat)  # top: leaders' level
        final = self._final_level
        # The take is served if what is left after it can bring everyone up to
        # `target`: the final level once fixed, else the leaders' level or the
        # one this take reaches. A probe counts for nothing; any other take
        # brings its own seat to `level + 1`, below `target` only when the
        # final level is fixed and it is catching up.
        target = (top if probe else max(top, level + 1)) if final is None else final
        if final is None or level < final:
            own = 0 if probe else (target - level - 1) * count
            if left - count >= own + target * sizes - weighted:
                return count
        if final is None and left and not self._in_pass_besides(seat):
            return min(count, left)  # rule 7d
        if probe:
            return 0
        if final is None and level >= top:  # a leader: the pass ends here (7a)
            self._final_level = level
            deficit = level * sizes - weighted
            self._log_pass_over(level, peers + 1, left - deficit, count + sizes)
        elif final is None or level < final:  # behind, cannot catch up (7b, 7c)
            logger.info(
                "conn#%s at %d batch(es) cannot be brought up to the others' "
                "%d with the %d sample(s) left: it gets no more data in this "
                "pass (joined too late, or grew its batch size)",
                conn,
                level,
                target,
                left,
            )
        return 0

    def _log_pass_over(
        self, level: int, connections: int, spare: int, one_more: int
    ) -> None:
        """One INFO line when a leader fixes the final level (rule 7a): what
        stays unserved (`spare`, what is left beyond bringing everyone up to
        `level`), and why the pass ends there."""
        # The samples probes hold come back to the front when they join; only
        # a PROBED seat holds any.
        probing = sum(len(s.probe_batch) for s in self._seats.values())
        unserved = max(spare + probing, 0)
        if connections == 1:
            logger.info(
                "pass over after %d batch(es) for the one connection in it: "
                "%d sample(s) left, fewer than one more batch (%d), so the "
                "pass ends there",
                level,
                unserved,
                one_more,
            )
            return
        logger.info(
            "pass over at %d full batch(es) per connection for the %d "
            "connection(s) in it: %d sample(s) left unserved in this pass, "
            "fewer than one more batch for each (%d); they stop together "
            "because GPU ranks training together must run the same number "
            "of steps",
            level,
            connections,
            unserved,
            one_more,
        )

    def peek(self, count: int) -> list[int]:
        """The indices the next `take` calls would hand out, without taking them."""
        out = list(islice(self._front, count))
        skip, cursor, end = self._skip, self._cursor, self.num_samples
        wanted = count - len(out)
        if wanted > 0 and not self._plain:
            fresh = self._read(wanted)[0]
            return out + fresh if out else fresh
        elif wanted > 0:  # in C: the server peeks thousands ahead (read-ahead)
            stop = cursor + wanted + len(skip)  # at most len(skip) are skipped
            fresh = range(cursor, stop if end is None else max(min(stop, end), cursor))
            if skip:
                out.extend(islice(filterfalse(skip.__contains__, fresh), wanted))
            else:
                out.extend(fresh[:wanted])
        return out

    def reset(self, conn: Hashable) -> ResetOutcome:
        """Rewind for `conn`, or let it join the pass others are in (rules 4, 7b)."""
        seat = self._seat(conn)
        if not self._in_pass_besides(seat):
            self._epoch = self._cursor = 0
            self._front.clear()
            self._final_level = None
            self._largest_batch = 0
            self._served_in_pass = 0
            self._rewinds += 1
            seat.level, seat.batch_size = 0, None  # it reads this pass from its start
            seat.enter(SeatEvent.REWIND)
            return ResetOutcome(rewound=True, position=0, returned=0)
        returned = [i for i in seat.probe_batch if i not in self._skip]
        self._front.extendleft(reversed(returned))
        self._served_in_pass -= len(returned)
        self._admit(seat, conn)
        return ResetOutcome(
            rewound=False, position=self._cursor, returned=len(returned)
        )

    def _admit(self, seat: Seat, conn: Hashable) -> None:
        """Rule 7b for a connection joining by reset: it counts from where it
        is (0 for a newcomer) if what is left can bring it up to the others;
        otherwise it sits this pass out."""
        if not self._bounded:
            seat.enter(SeatEvent.JOIN)
            return
        final = self._final_level
        _, top, sizes, weighted = self._others(seat)
        level, size = seat.level, seat.batch_size or self._largest_batch
        target = max(top, level) if final is None else final
        left = self.remaining() or 0
        deficit = target * (sizes + size) - weighted - level * size
        if level >= target or deficit <= left:
            seat.enter(SeatEvent.JOIN)
            return
        logger.info(
            "conn#%s joined a pass whose connections are at %d batch(es); "
            "the %d sample(s) left cannot bring it up to them, so it gets no "
            "data in this pass",
            conn,
            target,
            left,
        )
        seat.enter(SeatEvent.SIT_OUT)  # told at its next take; in the pass until then

    def set_validation_ids(self, ids: Sequence[str]) -> tuple[int, int]:
        """Replace the set of ids never to serve. Returns (ids received,
        distinct ids among them that this stream produces)."""
        skip = self._indices_of(ids)
        if not isinstance(skip, set | frozenset):
            skip = set(skip)
        end = self.num_samples  # a source's mapping may name indices out of range
        if skip and (min(skip) < 0 or (end is not None and max(skip) >= end)):
            skip = {i for i in skip if i >= 0 and (end is None or i < end)}
        in_pass = self._connections_in_pass()
        if self._validation_ids_set and in_pass and skip != self._skip:
            logger.warning(
                "validation ids replaced by a different set (%d ids, %d before) "
                "while %d connection(s) are mid-pass: a second training run is "
                "sharing this server, and its samples and ids mix with the "
                "first run's. Start one server per training run",
                len(skip),
                len(self._skip),
                in_pass,
            )
        self._skip = skip
        self._skip_sorted = None
        self._skip_counts = None
        if skip and self._front:
            self._front = deque(i for i in self._front if i not in skip)
        self._validation_ids_received = len(ids)
        self._validation_ids_set = True
        return len(ids), len(skip)

    def validation_indices(self) -> list[int]:
        """The indices being skipped, in order (for logs and checks)."""
        return list(self._sorted_skip())

    # -- reporting ---------------------------------------------------------
    def _sorted_skip(self) -> list[int]:
        if self._skip_sorted is None:
            self._skip_sorted = sorted(self._skip)
        return self._skip_sorted

    def remaining(self) -> int | None:
        """How many indices this pass will still hand out: the front, the
        rest of this epoch and the epochs after it (None: unbounded or
        endless epochs, unless there is nothing to serve at all)."""
        end = self.num_samples
        if end is None:
            return None
        if not self._plain:
            return self._remaining_in_epochs(end)
        fresh = max(end - self._cursor, 0)
        if self._skip:
            fresh -= len(self._sorted_skip()) - bisect_left(
                self._sorted_skip(), self._cursor
            )
        return len(self._front) + fresh

    def _remaining_in_epochs(self, end: int) -> int | None:
        """`remaining` for a pass of several (or endless) epochs, or a shuffled
        one: every later epoch hands out all but the validation ids."""
        per_epoch = end - len(self._skip)  # the ids lie within 0..end-1
        if self.epochs is None:
            return None if per_epoch > 0 else 0
        fresh = max(end - self._cursor, 0)
        if self._skip and fresh:
            if self._order is None:
                ordered = self._sorted_skip()
                fresh -= len(ordered) - bisect_left(ordered, self._cursor)
            else:
                if self._skip_counts is None:
                    self._skip_counts = self._order.skip_counts(self._skip)
                fresh -= self._skip_counts.count_from(self._epoch, self._cursor)
        later = (self.epochs - self._epoch - 1) * per_epoch
        return len(self._front) + fresh + later

    def status(self) -> dict[str, Any]:
        """The stream's state, with the tutorial's keys (current_position,
        max_iterations, remaining_iterations) among them.

        `current_position` is the cursor within its epoch, `max_iterations`
        the indices per epoch, `epoch` the cursor's epoch (from 0), `epochs`
        the epochs in a pass (None: endless).
        """
        status = {
            "phase": "training" if self._validation_ids_set else "setup",
            "current_position": self._cursor,
            "max_iterations": self.num_samples,
            "remaining_iterations": self.remaining(),
            "samples_served_in_pass": self._served_in_pass,
            "samples_served_total": self._served_total,
            "rewinds": self._rewinds,
            "open_connections": len(self._seats),
            "connections_in_pass": self._connections_in_pass(),
            "validation_ids": len(self._skip),
            "validation_ids_received": self._validation_ids_received,
            "returned_to_front": len(self._front),
            "epoch": self._epoch,
            "epochs": self.epochs,
            "shuffled": self._order is not None,
        }
        return status
