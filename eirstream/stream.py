"""The stream: which sample index comes next, for every connection reading it.

`SampleStream` is the shared state of one named stream (a server keeps one
per URL path: streams.py), and the one face of it that the protocol and the
server use. Every connection of the stream takes its batches from it, so no
index is served twice within an epoch. A pass is
one epoch or several (each in its own seeded order with a shuffle:
order.py). The rules are stated on `SampleStream`; what comes next lives in
cursor.py, who may take it in seats.py. It does no I/O and holds no samples,
only integers.
"""

import logging
from bisect import bisect_left
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from eirstream.cursor import Cursor
from eirstream.order import WINDOW_INDICES, EpochOrder
from eirstream.progress import Progress, Resumed, StreamState, Take
from eirstream.sample_ids import indices_of_sample_ids
from eirstream.seats import Seats
from eirstream.sources import SampleSource

logger = logging.getLogger("eirstream.stream")


@dataclass(frozen=True)
class ResetOutcome:
    """What a `reset` did: rewound the stream, or joined the pass in progress."""

    rewound: bool
    position: int  # the cursor after the reset (0 after a rewind)
    returned: int  # indices this connection had taken that went back to the front
    epoch: int = 0  # the cursor's epoch after the reset
    resumed: bool = False  # the rewind went to a resumed stream's start point


class SampleStream:
    """One cursor over sample indices, shared by every connection of a stream.

    An *epoch* visits the indices 0..num_samples-1 once each, in ascending
    order or, with an `EpochOrder` (order.py), in a shuffled order
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
       too, with a warning: it is a second training run sharing this stream
       and this pass (each run should name its own: streams.py).
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
    8. Training starts at the *start point*: the first reset after
       validation ids arrive (the training's first reset) starts it. If it
       rewinds, the cursor goes to the start point instead of the start of
       epoch 0, once; every other rewind goes to the start of epoch 0. If it
       joins (the run's probes interleaved: each reset joins the others'),
       training starts in the pass in progress. A new stream's start point
       is the start of epoch 0, so rule 4 is all there is to it. A stream
       resumed from `--state` (`resume`) has its saved progress as start
       point: the earliest index not sent, with the indices taken but not
       sent first; a saved pass that was over (all sent, or ended by rule
       7, its remainder left over) gives a new pass from the start of
       epoch 0 instead. Until its run sends validation ids (its setup), it skips
       none, so the setup reads what the first run's setup read; from then
       on it skips the new ids and every earlier run's, and when they
       arrive with no connection in the pass, the cursor goes to the start
       point at once, so the probes read from there whichever reset comes
       first. `progress` is what --state writes: the start point until
       training starts, then the cursor, with the takes whose replies were
       not sent yet (`sent` tells it). A rewind to the start of epoch 0
       after training began may be a later run's setup: `progress` then
       keeps what training had reached until that run's validation ids
       arrive and a reset after them starts its training.

    `peek` shows what the next takes would hand out, without taking it,
    across epoch boundaries too.

    What comes next (rules 1 and 2: the cursor, the epochs, the front, the
    skipped validation ids) is a `Cursor` (cursor.py); who may take it
    (rules 3, 4 and 7: one `Seat` per connection, levels, the end of a
    pass) is `Seats` (seats.py). This class joins the two, and counts.

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
        name: str = "default",
    ) -> None:
        """`num_samples`: indices per epoch, 0..num_samples-1 (None:
        unbounded, one endless epoch). `indices_of`: maps received validation
        ids to the distinct indices they name, leaving out ids this stream
        does not produce; by default ids are `sample_<k>`. `epochs`: epochs
        per pass (None: endless). `order`: the shuffled order of every epoch
        (None: ascending). `name`: the stream's name, for logs and status
        (streams.py)."""
        self.name = name
        self._cursor = Cursor(num_samples, epochs, order)
        self.num_samples = num_samples
        self.epochs = self._cursor.epochs
        self.order = order
        # Rule 7 applies only to a pass that ends.
        self._seats = Seats(bounded=num_samples is not None and self.epochs is not None)
        if indices_of is None:

            def indices_of(ids: Sequence[str]) -> set[int]:
                return indices_of_sample_ids(ids, num_samples)

        self._indices_of = indices_of
        self._validation_ids_received = 0
        self._validation_ids_set = False
        self._served_in_pass = 0
        self._served_total = 0
        self._rewinds = 0
        # Rule 8: where training starts, until the first training rewind.
        self._start: Progress | None = Progress()
        self._earlier: frozenset[int] = frozenset()  # earlier runs' validation ids
        # Rule 8: the progress of the training before a rewind, kept while
        # a later run's setup reads, until that run's validation ids
        # (`_new_ids`) and its first reset start its training.
        self._trained: Progress | None = None
        self._new_ids = False
        self._unsent: dict[Hashable, Take] = {}  # taken, reply not sent yet
        # Probes (rule 4) of connections that have not reset yet: a join
        # gives them back, so they are not counted as sent.
        self._probes: dict[Hashable, tuple[int, ...]] = {}
        self.resumed: Resumed | None = None
        # Called with "progress" or "validation" when a reset or new
        # validation ids change what --state keeps (sends are the caller's).
        self.listener: Callable[[str], None] | None = None

    @classmethod
    def for_source(
        cls,
        source: SampleSource,
        *,
        epochs: int | None = 1,
        shuffle: bool = False,
        seed: int = 0,
        name: str = "default",
        order: EpochOrder | None = None,
    ) -> "SampleStream":
        """The stream of `source`: its length, and its mapping of sample ids,
        with `epochs` epochs per pass (None: endless), each shuffled by
        (seed, epoch) with `shuffle`.

        A source may offer `indices_of(ids)` (all ids at once, as
        `SimulatedHealthData` does); otherwise its `index_of` is asked id by id.
        A source may offer `block_sizes` (how many consecutive indices each
        block it reads at once holds): the shuffle keeps reads within few
        blocks; otherwise it uses fixed blocks (order.py). It may offer
        `shuffle_window`, the most indices to mix at a time (where a row
        gives many samples, small windows keep each worker from splitting
        the same rows); otherwise order.py's default. `order` is the
        shuffled order to use (`maker` shares one among a server's streams).
        """
        bulk = getattr(source, "indices_of", None)
        if bulk is None:
            index_of = source.index_of

            def bulk(ids: Sequence[str]) -> set[int]:
                return {i for i in map(index_of, ids) if i is not None}

        if not shuffle:
            order = None
        elif order is None:
            order = epoch_order(source, seed)
        return cls(source.num_samples, bulk, epochs=epochs, order=order, name=name)

    @classmethod
    def maker(
        cls,
        source: SampleSource,
        *,
        epochs: int | None = 1,
        shuffle: bool = False,
        seed: int = 0,
    ) -> "Callable[[str], SampleStream]":
        """Make named streams of `source` (streams.py): like `for_source`,
        with one shuffled order shared by all of them. An order is a function
        of (seed, epoch) alone, so sharing it changes no stream's order, and
        its caches are kept once per server, not once per stream."""
        order = epoch_order(source, seed) if shuffle else None

        def make(name: str) -> SampleStream:
            return cls.for_source(
                source,
                epochs=epochs,
                shuffle=shuffle,
                seed=seed,
                name=name,
                order=order,
            )

        return make

    # -- connections (rule 5) ----------------------------------------------
    def connect(self, conn: Hashable) -> None:
        """Register a new connection; it has taken nothing and not reset."""
        self._seats.seat(conn)

    def disconnect(self, conn: Hashable) -> None:
        """Forget a connection; the cursor and the others are untouched."""
        self._seats.drop(conn)
        # Its take whose reply was not sent, and its probe, are lost to this
        # pass (rule 5), but not sent: `progress` keeps them as such (until
        # the next rewind), so a stream resumed from it serves them.

    @property
    def open_connections(self) -> int:
        return len(self._seats)

    # -- the stream --------------------------------------------------------
    def take(self, conn: Hashable, count: int) -> list[int] | None:
        """The next `count` indices for `conn`; None once its pass is over.

        In a bounded pass a batch is cut short only for a connection alone
        in the pass (rule 7d)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        seat = self._seats.seat(conn)
        cursor = self._cursor
        count = self._seats.allowed(seat, conn, count, cursor.remaining())
        if not count:
            return None
        start, in_front = (cursor.epoch, cursor.position), cursor.returned
        out = cursor.read(count)
        self._unsent.pop(conn, None)  # (kept in take order)
        self._unsent[conn] = Take(
            tuple(out[:in_front]) if in_front else (),
            start,
            (cursor.epoch, cursor.position),
        )
        self._served_in_pass += len(out)
        self._served_total += len(out)
        self._seats.served(seat, out, count)
        if seat.probe_batch:
            self._probes[conn] = seat.probe_batch
        else:  # (a second take: the first was no probe)
            self._probes.pop(conn, None)
        return out

    def sent(self, conn: Hashable) -> None:
        """The reply to `conn`'s last take is about to leave: its indices
        count as sent in `progress` from now on."""
        self._unsent.pop(conn, None)

    def peek(self, count: int) -> list[int]:
        """The indices the next `take` calls would hand out, without taking them."""
        return self._cursor.peek(count)

    def reset(self, conn: Hashable) -> ResetOutcome:
        """Rewind for `conn`, or let it join the pass others are in (rules 4, 7b)."""
        seat = self._seats.seat(conn)
        if not self._seats.in_pass_besides(seat):
            start = self._start if self._validation_ids_set else None
            resumed = start is not None and self.resumed is not None
            if start is None:
                self._keep_training(self.progress())
                self._cursor.rewind()
                self._served_in_pass = 0
            else:  # rule 8: training starts where the start point says
                self._go_to_start(start)
                self._start = None
            self._unsent.clear()
            self._probes.clear()
            self._seats.rewind(seat)
            self._rewinds += 1
            self._changed("progress")
            cursor = self._cursor
            return ResetOutcome(True, cursor.position, 0, cursor.epoch, resumed)
        returned = self._cursor.give_back(seat.probe_batch)
        self._probes.pop(conn, None)
        self._served_in_pass -= returned
        self._seats.admit(seat, conn, self._cursor.remaining())
        if self._validation_ids_set:  # rule 8: training starts in this pass
            self._start = None
            if self._new_ids:
                self._trained = None
        self._changed("progress")
        return ResetOutcome(
            rewound=False, position=self._cursor.position, returned=returned
        )

    def _keep_training(self, before: Progress) -> None:
        """A rewind to the start of epoch 0 (rule 8): after training began,
        the first one may be a later run's setup, so `progress` keeps what
        training had reached (`before`) until that run's validation ids come
        and a reset after them starts its training."""
        if self._start is not None:  # training has not started yet
            return
        if self._trained is None:
            self._trained, self._new_ids = before, False
        elif self._new_ids:  # the new run's training starts here
            self._trained = None

    def _go_to_start(self, start: Progress) -> None:
        """The cursor to the start point (rule 8)."""
        self._cursor.restore(start.epoch, start.position, start.front)
        self._served_in_pass = start.served_in_pass

    def _changed(self, what: str) -> None:
        if self.listener is not None:
            self.listener(what)

    def remaining(self) -> int | None:
        """How many indices this pass will still hand out: the front, the
        rest of this epoch and the epochs after it (None: unbounded or
        endless epochs, unless there is nothing to serve at all)."""
        return self._cursor.remaining()

    # -- validation ids (rule 2) -------------------------------------------
    def set_validation_ids(self, ids: Sequence[str]) -> tuple[int, int]:
        """Replace the set of ids never to serve. Returns (ids received,
        distinct ids among them that this stream produces)."""
        before = self._cursor.skip
        named = self._indices_of(ids)
        skip = self._cursor.set_skip(
            self._earlier.union(named) if self._earlier else named
        )
        in_pass = self._seats.in_pass()
        if self._validation_ids_set and in_pass and skip != before:
            logger.warning(
                "stream %r: validation ids replaced by a different set (%d ids, "
                "%d before) while %d connection(s) are mid-pass: a second "
                "training run is reading this stream, and its samples and ids "
                "mix with the first run's. Give each run its own stream: its "
                "own path, ws://<host>:<port>/ws/<run-name>, in its configs",
                self.name,
                len(skip),
                len(before),
                in_pass,
            )
        self._validation_ids_received = len(ids)
        self._new_ids = True
        start = self._start if self.resumed is not None else None
        if not self._validation_ids_set and start is not None and not in_pass:
            # Rule 8: the run's probes read from the start point already, so
            # training starts there even if no reset rewinds (its probes
            # interleave, and each reset joins the others').
            self._go_to_start(start)
        self._validation_ids_set = True
        self._changed("validation")
        return len(ids), len(skip)

    def validation_indices(self) -> list[int]:
        """The indices being skipped, in order (for logs and checks)."""
        return list(self._cursor.sorted_skip())

    # -- reporting ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The stream's state, with the tutorial's keys (current_position,
        max_iterations, remaining_iterations) among them.

        `current_position` is the cursor within its epoch, `max_iterations`
        the indices per epoch, `epoch` the cursor's epoch (from 0), `epochs`
        the epochs in a pass (None: endless).
        """
        cursor = self._cursor
        return {
            "stream": self.name,
            "phase": "training" if self._validation_ids_set else "setup",
            "current_position": cursor.position,
            "max_iterations": self.num_samples,
            "remaining_iterations": cursor.remaining(),
            "samples_served_in_pass": self._served_in_pass,
            "samples_served_total": self._served_total,
            "rewinds": self._rewinds,
            "open_connections": len(self._seats),
            "connections_in_pass": self._seats.in_pass(),
            "validation_ids": len(cursor.skip),
            "validation_ids_received": self._validation_ids_received,
            "returned_to_front": cursor.returned,
            "epoch": cursor.epoch,
            "epochs": self.epochs,
            "shuffled": self.order is not None,
            "resumed": None if self.resumed is None else vars(self.resumed),
        }

    # -- what --state keeps (rule 8) ---------------------------------------
    def progress(self) -> Progress:
        """Where training stands: the start point while training has not
        started in this server, what it had reached while a later run's
        setup reads, else the cursor with the unsent takes and the probes
        not given back yet."""
        counters = {
            "served_total": self._served_total,
            "served_in_pass": self._served_in_pass,
            "rewinds": self._rewinds,
        }
        kept = self._start if self._start is not None else self._trained
        if kept is not None:  # its own count in its pass
            del counters["served_in_pass"]
            return replace(kept, **counters)
        cursor, unsent = self._cursor, self._unsent
        # A probe's reply was sent, but its reset gives it back (rule 4).
        probes = [i for c, got in self._probes.items() if c not in unsent for i in got]
        return Progress(
            cursor.epoch,
            cursor.position,
            (*cursor.front, *probes) if probes else cursor.front,
            tuple(unsent.values()),
            **counters,
            over=self._seats.final_level is not None,  # rule 7 ended the pass
        )

    def state(self) -> StreamState:
        """The progress and every validation id (as indices) to keep out."""
        if self._validation_ids_set:  # the earlier runs' among them
            skip = self._cursor.sorted_skip()
        else:
            skip = sorted(self._earlier)
        return StreamState(self.progress(), tuple(skip))

    def resume(self, state: StreamState) -> None:
        """Take up a stream kept by --state (rule 8), before any connection."""
        saved, cursor = state.progress, self._cursor
        self._earlier = frozenset(state.validation)
        self._served_total, self._rewinds = saved.served_total, saved.rewinds
        # Positions are resolved with the earlier ids skipped, as they were.
        cursor.set_skip(self._earlier)
        front: list[int] = []  # each unsent take's indices, in take order
        for take in saved.unsent:
            front += take.front
            front += cursor.between(take.start, take.stop)
        cursor.restore(saved.epoch, saved.position, [*front, *saved.front])
        over = saved.over or cursor.remaining() == 0
        epoch, served = self._served_in_epoch()
        per_epoch = self.num_samples
        self.resumed = Resumed(
            epoch,
            served,
            None if per_epoch is None else per_epoch - len(self._earlier),
            pass_over=over,
        )
        if over:  # the saved pass is over: the next one starts afresh
            self._start = Progress()
        else:
            self._start = Progress(
                cursor.epoch,
                cursor.position,
                cursor.front,
                served_in_pass=saved.served_in_pass,
            )
        cursor.set_skip(())  # the setup reads what the first run's setup read
        cursor.rewind()

    def _served_in_epoch(self) -> tuple[int, int]:
        """How far the saved pass had come, as (epoch, samples of it sent):
        the samples sent in the pass counted from the cursor as restored
        (its front holds every index taken but not sent, some maybe from
        the epoch before), and the epoch that count reaches into."""
        cursor = self._cursor
        left = cursor.left_in_epoch()
        if left is None or self.num_samples is None:  # one endless epoch
            before = bisect_left(cursor.sorted_skip(), cursor.position)
            return 0, max(cursor.position - before - cursor.returned, 0)
        per_epoch = self.num_samples - len(cursor.skip)
        if per_epoch <= 0:
            return cursor.epoch, 0
        sent = max(per_epoch * (cursor.epoch + 1) - left, 0)  # in the pass
        epoch = sent // per_epoch
        if self.epochs is not None:  # the last epoch's end is in it
            epoch = min(epoch, self.epochs - 1)
        return epoch, sent - epoch * per_epoch


def epoch_order(source: SampleSource, seed: int) -> EpochOrder:
    """The shuffled order of `source`'s epochs for `seed`, read block by
    block as the source says (`block_sizes`, `shuffle_window`)."""
    if source.num_samples is None:
        raise ValueError("an unbounded source cannot be shuffled")
    blocks = getattr(source, "block_sizes", None)
    window = getattr(source, "shuffle_window", None) or WINDOW_INDICES
    return EpochOrder(source.num_samples, seed, blocks, window)
