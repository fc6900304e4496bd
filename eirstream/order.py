"""The order in which one epoch of a finite stream visits its indices.

`EpochOrder` shuffles the indices 0..n-1 anew for every epoch, and the order
of an epoch is a pure function of (seed, epoch): the same after a rewind or a
restart, in any process, whatever the batch sizes or the number of
connections that read it. Its RNGs are seeded from strings such as
"7:3:blocks", which `random.Random` hashes with SHA-512: stable across runs,
platforms and PYTHONHASHSEED.

The shuffle keeps reads local, because a dataset is read block by block (a
Parquet row group, say). The indices come in *blocks* of consecutive indices
(`block_sizes`), and a *window* size W bounds how many indices are mixed
together (`window`, `WINDOW_INDICES` by default). Each epoch:

1. shuffles the order of the blocks (RNG "<seed>:<epoch>:blocks");
2. cuts every block of more than W indices into *pieces* of consecutive
   indices, as few as keep each within W and of sizes differing by one at
   most, and shuffles the pieces of each such block among themselves where
   the block stands (RNG "<seed>:<epoch>:pieces:<block>");
3. cuts that order into *windows*: a piece is a window of its own; other
   blocks gather into windows of at most `WINDOW_BLOCKS` blocks and W
   indices (a window closes at `WINDOW_BLOCKS` blocks, before a block that
   would take it past W, and before a piece);
4. shuffles the indices within each window (RNG "<seed>:<epoch>:window:<w>").

A large block is thus read in one go (its pieces stay together) but mixed a
piece at a time, never as a whole. A source where one row gives many samples
(a dataset's word chunks) asks for a small W (`shuffle_window`): a worker
making a task of consecutive positions splits every row its windows touch,
so windows much smaller than a task keep it from splitting the rows of the
windows at its two ends, which the tasks beside it share, more than once.

So positions [start, stop) of an epoch draw on the blocks of the windows they
overlap, at most `WINDOW_BLOCKS` blocks per window. A run of L consecutive
positions overlaps at most ceil((L - 1) / m) + 1 windows, m the length of the
shortest window but the last. With the default blocks (`BLOCK_SIZE` indices
each, the last one shorter) and W every window but the last holds 4 blocks,
more than 3 x 1,024 indices, so any run of up to 3,000 positions overlaps at
most 2 windows: it touches at most 2 x `WINDOW_BLOCKS` = 8 blocks.

Memory is O(number of blocks) per epoch (its block order and segments, for
the last few epochs asked about; a cut block's pieces are worked out when it
is used) plus the windows in use: their shuffled indices are made when first
read and cached up to `CACHED_INDICES` indices, never O(n) for a whole
epoch. Standard library only.
"""

import random
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, pairwise

BLOCK_SIZE = 1024  # indices per block when the source names no blocks
WINDOW_BLOCKS = 4  # a window holds at most this many blocks ...
WINDOW_INDICES = 4096  # ... and this many indices (the default W)
CACHED_INDICES = 1 << 16  # window indices kept (the two newest windows always)
CACHED_EPOCHS = 3  # epoch layouts kept: a peek can reach past the current one
CACHED_CUTS = 64  # cut blocks whose pieces are kept, per epoch and block


@dataclass(frozen=True, slots=True)
class _Layout:
    """One epoch's blocks in their shuffled order, cut into *segments*: a
    segment is one window of whole blocks, or one block cut into pieces,
    each piece a window. O(blocks): the pieces are worked out when used."""

    blocks: list[int]  # the non-empty blocks, in this epoch's order
    positions: array  # the position of each segment's first index, then n
    windows: array  # the number of each segment's first window, then all
    firsts: array  # the offset in `blocks` of each segment's first, then all


@dataclass(frozen=True, slots=True)
class _Pieces:
    """The pieces of one cut block in one epoch, in the epoch's order."""

    ranges: list[range]  # the indices of each piece
    offsets: list[int]  # where each starts within the block's segment, then size


def fixed_blocks(num_samples: int, size: int = BLOCK_SIZE) -> list[int]:
    """Blocks of `size` consecutive indices covering 0..num_samples-1 (the
    last one shorter): the blocks of a source that names none."""
    full, rest = divmod(num_samples, size)
    return [size] * full + ([rest] if rest else [])


class EpochOrder:
    """The shuffled order of every epoch of indices 0..num_samples-1.

    `block_sizes`: how many consecutive indices each block holds, in index
    order, summing to `num_samples` (empty blocks are allowed and hold
    nothing); by default blocks of `BLOCK_SIZE`. `window`: W, the most
    indices mixed together but where whole small blocks gather. Position p
    of epoch e holds `index_at(e, p)`; every epoch is a permutation of
    0..num_samples-1.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        block_sizes: Sequence[int] | None = None,
        window: int = WINDOW_INDICES,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be 0 or more, got {num_samples}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"window must be a whole number of 1 or more, got {window!r}"
            )
        sizes = fixed_blocks(num_samples) if block_sizes is None else block_sizes
        sizes = tuple(int(size) for size in sizes)
        if any(size < 0 for size in sizes) or sum(sizes) != num_samples:
            raise ValueError(
                f"block_sizes must be counts of 0 or more that sum to "
                f"num_samples ({num_samples}); got {len(sizes)} block(s) summing "
                f"to {sum(sizes)}"
            )
        self.num_samples = num_samples
        self.seed = seed
        self.block_sizes = sizes
        self.window = window
        self._block_starts = [0, *accumulate(sizes)]  # then num_samples
        self._layouts: OrderedDict[int, _Layout] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], tuple[int, list[int]]] = (
            OrderedDict()
        )
        self._cut: OrderedDict[tuple[int, int], _Pieces] = OrderedDict()
        self._held = 0  # indices in the cached windows

    def __repr__(self) -> str:
        return (
            f"EpochOrder(num_samples={self.num_samples}, seed={self.seed!r}, "
            f"blocks={len(self.block_sizes)}, window={self.window})"
        )

    # -- what an epoch holds where -------------------------------------------
    def index_at(self, epoch: int, position: int) -> int:
        """The index at `position` (0..num_samples-1) of `epoch`."""
        if not 0 <= position < self.num_samples:
            raise IndexError(f"position {position} is not in 0..{self.num_samples - 1}")
        layout = self._layout(epoch)
        first, window = self._window(epoch, self._window_at(epoch, layout, position))
        return window[position - first]

    def indices(self, epoch: int, start: int, stop: int) -> list[int]:
        """The indices at positions start..stop-1 of `epoch`, in order: what
        `index_at` gives for each, in bulk (slices of cached windows)."""
        if not 0 <= start <= stop <= self.num_samples:
            raise ValueError(
                f"positions {start}..{stop} are not within 0..{self.num_samples}"
            )
        out: list[int] = []
        if start == stop:
            return out
        w = self._window_at(epoch, self._layout(epoch), start)
        while start < stop:
            first, window = self._window(epoch, w)
            end = min(stop, first + len(window))
            out += window[start - first : end - first]
            start, w = end, w + 1
        return out

    def block_of(self, index: int) -> int:
        """The block that holds `index`."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is not in 0..{self.num_samples - 1}")
        return bisect_right(self._block_starts, index) - 1

    def block_order(self, epoch: int) -> list[int]:
        """The non-empty blocks in the order `epoch` visits them."""
        return list(self._layout(epoch).blocks)

    def window_starts(self, epoch: int) -> list[int]:
        """The position of each window's first index in `epoch`, then
        num_samples: window w holds positions starts[w]..starts[w+1]-1.
        O(windows): for tests and tools, not for serving."""
        count = self._layout(epoch).windows[-1]
        return [self._span(epoch, w)[0] for w in range(count)] + [self.num_samples]

    def held_indices(self) -> int:
        """How many indices the cached windows hold: bounded by
        `CACHED_INDICES` and the two largest windows, whatever num_samples."""
        return self._held

    def skip_counts(self, skip: Collection[int]) -> "SkipCounts":
        """Counts of the indices of `skip` (validation ids) at or after a
        position of any epoch; `skip` must not change while they are used."""
        return SkipCounts(self, skip)

    # -- making and caching the layout and the windows ------------------------
    def _layout(self, epoch: int) -> _Layout:
        """Epoch `epoch`'s block order and segments, made once and cached."""
        layout = self._layouts.get(epoch)
        if layout is not None:
            self._layouts.move_to_end(epoch)
            return layout
        if epoch < 0:
            raise ValueError(f"epoch must be 0 or more, got {epoch}")
        sizes, most = self.block_sizes, self.window
        blocks = [b for b, size in enumerate(sizes) if size]
        random.Random(f"{self.seed}:{epoch}:blocks").shuffle(blocks)
        positions, windows, firsts = array("q", [0]), array("q", [0]), array("q", [0])
        position = held = count = 0

        def end_segment(taken: int, new_windows: int) -> None:
            positions.append(position)
            windows.append(windows[-1] + new_windows)
            firsts.append(taken)

        for k, block in enumerate(blocks):
            size = sizes[block]
            if count and (size > most or held + size > most):
                end_segment(k, 1)
                held = count = 0
            position += size
            if size > most:  # cut into pieces: a segment of its own
                end_segment(k + 1, -(-size // most))
                continue
            held, count = held + size, count + 1
            if count == WINDOW_BLOCKS:
                end_segment(k + 1, 1)
                held = count = 0
        if count:
            end_segment(len(blocks), 1)
        layout = self._layouts[epoch] = _Layout(blocks, positions, windows, firsts)
        if len(self._layouts) > CACHED_EPOCHS:
            self._layouts.popitem(last=False)
        return layout

    def _pieces(self, epoch: int, block: int) -> _Pieces:
        """The pieces of a block of more than `window` indices in `epoch`, in
        their shuffled order (RNG "<seed>:<epoch>:pieces:<block>")."""
        key = (epoch, block)
        pieces = self._cut.get(key)
        if pieces is not None:
            self._cut.move_to_end(key)
            return pieces
        size, lo = self.block_sizes[block], self._block_starts[block]
        cuts = -(-size // self.window)
        ranges = [
            range(lo + k * size // cuts, lo + (k + 1) * size // cuts)
            for k in range(cuts)
        ]
        random.Random(f"{self.seed}:{epoch}:pieces:{block}").shuffle(ranges)
        pieces = self._cut[key] = _Pieces(ranges, [0, *accumulate(map(len, ranges))])
        if len(self._cut) > CACHED_CUTS:
            self._cut.popitem(last=False)
        return pieces

    def _window_at(self, epoch: int, layout: _Layout, position: int) -> int:
        """The number of the window that holds `position` of `epoch`."""
        s = bisect_right(layout.positions, position) - 1
        block = layout.blocks[layout.firsts[s]]
        if self.block_sizes[block] <= self.window:
            return layout.windows[s]
        offsets = self._pieces(epoch, block).offsets
        return (
            layout.windows[s]
            + bisect_right(offsets, position - layout.positions[s])
            - 1
        )

    def _span(self, epoch: int, w: int) -> tuple[int, list[range]]:
        """(the position of window `w`'s first index in `epoch`, the ranges
        of indices it holds)."""
        layout = self._layout(epoch)
        s = bisect_right(layout.windows, w) - 1  # its segment
        first, bounds = layout.firsts[s], self._block_starts
        block = layout.blocks[first]
        size = self.block_sizes[block]
        if size <= self.window:
            blocks = layout.blocks[first : layout.firsts[s + 1]]
            return layout.positions[s], [
                range(bounds[b], bounds[b + 1]) for b in blocks
            ]
        pieces, j = self._pieces(epoch, block), w - layout.windows[s]
        return layout.positions[s] + pieces.offsets[j], [pieces.ranges[j]]

    def _window(self, epoch: int, w: int) -> tuple[int, list[int]]:
        """(the position of window `w`'s first index, its indices in their
        shuffled order), made when first asked for and kept while the cache
        has room."""
        key = (epoch, w)
        cached = self._windows.get(key)
        if cached is not None:
            self._windows.move_to_end(key)
            return cached
        first, ranges = self._span(epoch, w)
        window = list(chain.from_iterable(ranges))
        random.Random(f"{self.seed}:{epoch}:window:{w}").shuffle(window)
        self._windows[key] = (first, window)
        self._held += len(window)
        while self._held > CACHED_INDICES and len(self._windows) > 2:
            _, (_, dropped) = self._windows.popitem(last=False)
            self._held -= len(dropped)
        return first, window


class SkipCounts:
    """How many indices of a fixed set (the validation ids) sit at or after a
    position of an epoch of an `EpochOrder`, without a pass over the epoch.

    The set is counted per block once (a bisect per block boundary in the
    sorted set); an epoch's counts per segment follow from its block order,
    in O(blocks); a cut block's per piece, from bisects at its pieces'
    bounds when it is used; within a window, the positions of the set's
    indices come from the window's cached order and are kept for the last
    few windows asked about.
    """

    def __init__(self, order: EpochOrder, skip: Collection[int]) -> None:
        self._order = order
        self._skip = skip
        ordered = sorted(i for i in skip if 0 <= i < order.num_samples)
        cuts = [bisect_left(ordered, start) for start in order._block_starts]
        self._per_block = [b - a for a, b in pairwise(cuts)]
        self._ordered = ordered
        self.total = len(ordered)  # the set's indices within 0..num_samples-1
        self._suffixes: OrderedDict[int, list[int]] = OrderedDict()
        self._piece_suffixes: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
        self._offsets: OrderedDict[tuple[int, int], list[int]] = OrderedDict()

    def count_from(self, epoch: int, position: int) -> int:
        """How many of the set's indices sit at positions position..n-1 of
        `epoch`."""
        order = self._order
        if position <= 0:
            return self.total
        if position >= order.num_samples or not self.total:
            return 0
        layout = order._layout(epoch)
        s = bisect_right(layout.positions, position) - 1
        suffix = self._suffix(epoch, layout)
        later = suffix[s + 1]  # in the segments after s
        if suffix[s] == later:  # none in segment s
            return later
        w = order._window_at(epoch, layout, position)
        block = layout.blocks[layout.firsts[s]]
        if order.block_sizes[block] > order.window:  # in the pieces after w's
            pieces = self._piece_suffix(epoch, block)
            j = w - layout.windows[s]
            later += pieces[j + 1]
            if pieces[j] == pieces[j + 1]:  # none in window w
                return later
        first, window = order._window(epoch, w)
        offsets = self._window_offsets(epoch, w, window)
        return later + len(offsets) - bisect_left(offsets, position - first)

    def _suffix(self, epoch: int, layout: _Layout) -> list[int]:
        """For each segment of `epoch`, the set's indices in it and the
        segments after it (one more entry, 0, past the last segment)."""
        suffix = self._suffixes.get(epoch)
        if suffix is not None:
            self._suffixes.move_to_end(epoch)
            return suffix
        per_block, blocks = self._per_block, layout.blocks
        per_segment = [
            sum(per_block[b] for b in blocks[a:z]) for a, z in pairwise(layout.firsts)
        ]
        suffix = [*reversed([0, *accumulate(reversed(per_segment))])]
        self._suffixes[epoch] = suffix
        if len(self._suffixes) > CACHED_EPOCHS:
            self._suffixes.popitem(last=False)
        return suffix

    def _piece_suffix(self, epoch: int, block: int) -> list[int]:
        """For each piece of a cut block in `epoch`'s order, the set's indices
        in it and the pieces after it (then 0)."""
        key = (epoch, block)
        suffix = self._piece_suffixes.get(key)
        if suffix is not None:
            self._piece_suffixes.move_to_end(key)
            return suffix
        ordered = self._ordered
        per_piece = [
            bisect_left(ordered, piece.stop) - bisect_left(ordered, piece.start)
            for piece in self._order._pieces(epoch, block).ranges
        ]
        suffix = [*reversed([0, *accumulate(reversed(per_piece))])]
        self._piece_suffixes[key] = suffix
        if len(self._piece_suffixes) > CACHED_CUTS:
            self._piece_suffixes.popitem(last=False)
        return suffix

    def _window_offsets(self, epoch: int, w: int, window: list[int]) -> list[int]:
        """The offsets within window `w` of `epoch` that hold the set's
        indices, in order."""
        key = (epoch, w)
        offsets = self._offsets.get(key)
        if offsets is not None:
            self._offsets.move_to_end(key)
            return offsets
        hits = map(self._skip.__contains__, window)
        offsets = self._offsets[key] = list(compress(range(len(window)), hits))
        if len(self._offsets) > 2 * CACHED_EPOCHS:
            self._offsets.popitem(last=False)
        return offsets


__all__ = [
    "BLOCK_SIZE",
    "CACHED_INDICES",
    "WINDOW_BLOCKS",
    "WINDOW_INDICES",
    "EpochOrder",
    "SkipCounts",
    "fixed_blocks",
]
