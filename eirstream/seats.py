"""Who may take from the stream: one `Seat` per connection, and the balanced
end of a bounded pass.

`Seats` decides whether a connection's take is served, and how much of it;
what the served indices are is the cursor's business (cursor.py), and the
rules both serve are stated on `SampleStream` (stream.py; rules 3, 4 and 7
are this module's). Its state is one `Seat` per open connection, the
pass's final level once fixed, and the largest batch of the pass.

A seat's life cycle, h11 style: `SeatState` are its states, `SeatEvent`
what moves it, SEAT_LIFE_CYCLE the one table of transitions, and
`Seat.enter` the one place a seat changes state.

Its lines go to the stream's log, "eirstream.stream": the seats are the
stream's rules, and operators read one log for them.
"""

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum

logger = logging.getLogger("eirstream.stream")


# =============================================================================
# A connection's seat in the stream: its states, and what moves it between them.
#
# `Seats` keeps one `Seat` per open connection: `connect` (or a first `take`
# or `reset`) makes it FRESH, `disconnect` drops it from any state. Every
# change of state goes through `Seat.enter` and SEAT_LIFE_CYCLE below. A seat
# is in the pass (rule 3) while PROBED, STREAMING or SITTING_OUT, and has a
# level (rule 7) while PROBED or STREAMING. A reset rewinds only when no
# other seat is in the pass, so a seat leaves the pass only by being told
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


class Seats:
    """The seats of one stream, and rule 7 over them when `bounded` (the
    pass ends). Every method is given what is left of the pass (`left`,
    from the cursor) when its decision needs it."""

    def __init__(self, bounded: bool) -> None:
        self.bounded = bounded
        self._seats: dict[Hashable, Seat] = {}  # one per open connection
        self.final_level: int | None = None  # rule 7a, once fixed
        # The largest take of this pass that was no probe: every batch size
        # of the pass is at most this, and it stands in for one not known yet.
        self.largest_batch = 0

    def __len__(self) -> int:
        return len(self._seats)

    def seat(self, conn: Hashable) -> Seat:
        """The seat of `conn`: a FRESH one for a connection not seen before."""
        seat = self._seats.get(conn)
        if seat is None:
            seat = self._seats[conn] = Seat()
        return seat

    def drop(self, conn: Hashable) -> None:
        """Forget a connection's seat, whatever its state (rule 7c)."""
        self._seats.pop(conn, None)

    def in_pass_besides(self, seat: Seat) -> bool:
        """Whether any connection other than `seat`'s is in the pass (rule 3)."""
        return any(s.state.in_pass for s in self._seats.values() if s is not seat)

    def in_pass(self) -> int:
        """How many connections are in the pass (rule 3)."""
        return sum(s.state.in_pass for s in self._seats.values())

    # -- a take ------------------------------------------------------------
    def allowed(self, seat: Seat, conn: Hashable, count: int, left: int | None) -> int:
        """How many of the `count` indices `conn` asks for it may take now,
        with `left` still in the pass: `count`, fewer (rule 7d) or 0 (its
        pass is over: the seat is told so)."""
        state = seat.state
        # A FRESH seat's take may be EIR's probe (rule 4): rule 7 counts it,
        # and its size, only once a second take confirms it.
        if state is not FRESH and count > self.largest_batch:
            self.largest_batch = count
        if state in _TOLD:
            count = 0
        elif self.bounded:
            count = self._balanced_count(seat, conn, count, left or 0)
        elif left == 0:  # endless epochs of nothing to serve
            count = 0
        if not count:
            seat.enter(SeatEvent.TOLD_OVER)
        return count

    def served(self, seat: Seat, indices: list[int], count: int) -> None:
        """Record that `seat` was served `indices` for an allowed `count`."""
        if seat.state is FRESH:
            seat.probe_batch = tuple(indices)
            seat.enter(SeatEvent.PROBE)
            return
        seat.level += 2 if seat.state is PROBED else 1  # a confirmed probe counts
        seat.batch_size = count
        seat.enter(SeatEvent.SERVED)

    # -- a reset -----------------------------------------------------------
    def rewind(self, seat: Seat) -> None:
        """`seat`'s reset rewound the stream: a new pass, read from its start."""
        self.final_level = None
        self.largest_batch = 0
        seat.level, seat.batch_size = 0, None  # it reads this pass from its start
        seat.enter(SeatEvent.REWIND)

    def admit(self, seat: Seat, conn: Hashable, left: int | None) -> None:
        """Rule 7b for a connection joining by reset, with `left` still in the
        pass: it counts from where it is (0 for a newcomer) if that brings it
        up to the others; otherwise it sits this pass out."""
        if not self.bounded:
            seat.enter(SeatEvent.JOIN)
            return
        final, left = self.final_level, left or 0
        _, top, sizes, weighted = self._others(seat)
        level, size = seat.level, seat.batch_size or self.largest_batch
        target = max(top, level) if final is None else final
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

    # -- rule 7 ------------------------------------------------------------
    def _others(self, seat: Seat) -> tuple[int, int, int, int]:
        """Rule 7's view of the seats with a level, but `seat`: how many, the
        highest level, the sum of their batch sizes, and the sum of level x
        batch size (a size not known yet counts as the pass's largest take).

        The *deficit* of a level L (the samples that bring them all up to L)
        is then L x sizes - weighted, because no seat is ever above the L it
        is measured against: L is at least the leaders' level until the
        final level is fixed, and no take lifts a seat past the final level."""
        guess = self.largest_batch
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

    def _balanced_count(self, seat: Seat, conn: Hashable, count: int, left: int) -> int:
        """How many indices rule 7 lets `conn` take now: `count`, or fewer
        (the tail, for a connection alone in the pass), or 0 (none: its pass
        is over). Fixes the final level at the first refused leader.

        A FRESH seat's take may be EIR's probe: it takes nothing from the
        others' share and counts for nothing (its reset decides whether the
        connection can be brought level, rule 7b). A PROBED seat's take
        confirms that its first one was no probe: both count."""
        probe = seat.state is FRESH
        level = seat.level + (seat.state is PROBED)
        peers, top, sizes, weighted = self._others(seat)  # top: leaders' level
        final = self.final_level
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
        if final is None and left and not self.in_pass_besides(seat):
            return min(count, left)  # rule 7d
        if probe:
            return 0
        if final is None and level >= top:  # a leader: the pass ends here (7a)
            self.final_level = level
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
