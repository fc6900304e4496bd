"""`EpochOrder` alone: the shuffled order of every epoch of a finite stream.

Every epoch is a permutation of 0..n-1 and a function of (seed, epoch) only;
its blocks are shuffled, cut into windows of at most `WINDOW_BLOCKS` blocks,
and shuffled within each window, so a run of consecutive positions touches
few blocks; `SkipCounts` counts the validation ids at or after a position
without a pass over the epoch. `SampleStream` with an order is tested in
test_stream_rules.py.
"""

import math
import random
import tracemalloc
from collections import Counter
from itertools import accumulate, chain, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eirstream.order import (
    BLOCK_SIZE,
    CACHED_INDICES,
    WINDOW_BLOCKS,
    WINDOW_INDICES,
    EpochOrder,
    fixed_blocks,
)


def epoch_of(order: EpochOrder, epoch: int) -> list[int]:
    """The whole of `epoch`, position by position."""
    return order.indices(epoch, 0, order.num_samples)


def reference_epoch(
    sizes: list[int], seed: int, epoch: int, window: int = WINDOW_INDICES
) -> list[int]:
    """The documented recipe, written out plainly: shuffle the non-empty
    blocks; cut a block of over `window` indices into pieces of at most that,
    shuffled in place, each piece a window; gather the other blocks into
    windows of at most 4 blocks and `window` indices; shuffle each window."""
    starts = [0, *accumulate(sizes)]
    blocks = [b for b, size in enumerate(sizes) if size]
    random.Random(f"{seed}:{epoch}:blocks").shuffle(blocks)
    windows: list[list[range]] = [[]]
    for block in blocks:
        size, lo = sizes[block], starts[block]
        if size > window:
            cuts = math.ceil(size / window)
            pieces = [
                (lo + k * size // cuts, lo + (k + 1) * size // cuts)
                for k in range(cuts)
            ]
            random.Random(f"{seed}:{epoch}:pieces:{block}").shuffle(pieces)
            windows += [[range(a, b)] for a, b in pieces]
            windows.append([])
            continue
        if sum(len(part) for part in windows[-1]) + size > window:
            windows.append([])
        windows[-1].append(range(lo, lo + size))
        if len(windows[-1]) == WINDOW_BLOCKS:
            windows.append([])
    out: list[int] = []
    for w, window in enumerate(w for w in windows if w):
        indices = [i for part in window for i in part]
        random.Random(f"{seed}:{epoch}:window:{w}").shuffle(indices)
        out += indices
    return out


# -- every epoch is a permutation ---------------------------------------------
@pytest.mark.parametrize(
    ("num_samples", "sizes"),
    [
        (0, None),
        (1, None),
        (1023, None),
        (1024, None),
        (5000, None),
        (10, [10]),
        (17, [0, 5, 0, 0, 7, 5, 0]),
        (600, [1] * 600),
        (9000, [4500, 1, 4499]),
    ],
)
def test_every_epoch_visits_every_index_once(num_samples, sizes) -> None:
    order = EpochOrder(num_samples, seed=3, block_sizes=sizes)
    for epoch in range(4):
        assert sorted(epoch_of(order, epoch)) == list(range(num_samples))


def test_default_blocks_hold_1024_indices_each_and_the_rest() -> None:
    assert BLOCK_SIZE == 1024
    assert fixed_blocks(0) == []
    assert fixed_blocks(2048) == [1024, 1024]
    assert fixed_blocks(2500) == [1024, 1024, 452]
    assert EpochOrder(2500).block_sizes == (1024, 1024, 452)


def test_the_order_follows_the_documented_recipe() -> None:
    rng = random.Random(5)
    for _ in range(30):
        sizes = [rng.choice([0, 1, 3, 50, 900, 2000, 5000]) for _ in range(12)]
        seed, epoch = rng.randrange(10**6), rng.randrange(100)
        window = rng.choice([WINDOW_INDICES, 512, 700, 3000])
        order = EpochOrder(sum(sizes), seed, sizes, window)
        assert epoch_of(order, epoch) == reference_epoch(sizes, seed, epoch, window)


def test_the_order_is_pinned_across_runs_and_platforms() -> None:
    """`random.Random(str)` seeds through SHA-512: the same order in any
    process, after any restart. These values pin it."""
    order = EpochOrder(24, seed=7, block_sizes=[3] * 8)
    assert order.block_order(0) == [6, 2, 4, 3, 1, 7, 5, 0]
    assert order.window_starts(0) == [0, 12, 24]
    assert epoch_of(order, 0)[:12] == [19, 7, 14, 13, 12, 8, 18, 6, 11, 9, 20, 10]
    assert epoch_of(order, 1)[:6] == [3, 12, 14, 13, 19, 5]
    pieces = EpochOrder(12_000, seed=7, block_sizes=[9000, 3000])  # W 4,096
    assert pieces.window_starts(0) == [0, 3000, 6000, 9000, 12_000]
    assert pieces.indices(0, 0, 2) == [11188, 11705]  # the block of 3,000, whole
    assert pieces.indices(0, 3000, 3002) == [6623, 8052]  # 6,000..8,999
    small = EpochOrder(3000, seed=7, block_sizes=[2100, 900], window=512)
    assert small.block_order(0) == [1, 0]
    assert small.window_starts(0) == [0, 450, 900, 1320, 1740, 2160, 2580, 3000]
    assert small.indices(0, 0, 2) == [2187, 2521]  # 2,100..2,549
    assert small.indices(0, 2160, 2164) == [859, 974, 985, 1071]  # 840..1,259
    assert EpochOrder(3000).indices(0, 0, 4) == [2460, 2928, 2585, 1546]


# -- a function of (seed, epoch) only ------------------------------------------
def test_the_order_depends_on_seed_and_epoch_only() -> None:
    sizes = [700, 1, 2100, 0, 5000, 333, 4096, 60]
    n = sum(sizes)
    first = EpochOrder(n, seed=11, block_sizes=sizes)
    wanted = {epoch: epoch_of(first, epoch) for epoch in range(3)}
    # A fresh order read backwards, in odd slices and one position at a time.
    other = EpochOrder(n, seed=11, block_sizes=sizes)
    rng = random.Random(0)
    for epoch in (2, 0, 1):
        cuts = sorted({0, n, *rng.sample(range(n), 40)})
        pairs = list(pairwise(cuts))
        slices = [other.indices(epoch, a, b) for a, b in reversed(pairs)][::-1]
        assert list(chain.from_iterable(slices)) == wanted[epoch]
        for position in rng.sample(range(n), 50):
            assert other.index_at(epoch, position) == wanted[epoch][position]
    assert len({tuple(v) for v in wanted.values()}) == 3  # epochs differ
    reseeded = EpochOrder(n, seed=12, block_sizes=sizes)
    assert epoch_of(reseeded, 0) != wanted[0]  # seeds differ


def test_index_at_and_indices_agree_and_refuse_what_is_out_of_range() -> None:
    order = EpochOrder(9000, seed=1, block_sizes=[3000, 10, 5990])
    full = epoch_of(order, 4)
    assert [order.index_at(4, p) for p in range(0, 9000, 7)] == full[::7]
    assert order.indices(4, 8990, 9000) == full[8990:]
    assert order.indices(4, 500, 500) == []
    with pytest.raises(IndexError):
        order.index_at(0, 9000)
    with pytest.raises(IndexError):
        order.index_at(0, -1)
    with pytest.raises(ValueError, match="not within"):
        order.indices(0, 10, 9001)
    with pytest.raises(ValueError, match="not within"):
        order.indices(0, 11, 10)
    with pytest.raises(ValueError, match="epoch must be 0 or more"):
        order.index_at(-1, 0)


def test_block_sizes_must_cover_the_indices() -> None:
    with pytest.raises(ValueError, match="sum to num_samples"):
        EpochOrder(10, block_sizes=[5, 4])
    with pytest.raises(ValueError, match="sum to num_samples"):
        EpochOrder(10, block_sizes=[12, -2])
    with pytest.raises(ValueError, match="0 or more"):
        EpochOrder(-1)


# -- locality ----------------------------------------------------------------------
def most_blocks_in_a_run(order: EpochOrder, epoch: int, run: int) -> int:
    """The most distinct blocks any `run` consecutive positions touch."""
    blocks = [order.block_of(i) for i in epoch_of(order, epoch)]
    held: Counter[int] = Counter(blocks[:run])
    most = len(held)
    for position in range(run, len(blocks)):
        held[blocks[position]] += 1
        gone = blocks[position - run]
        held[gone] -= 1
        if not held[gone]:
            del held[gone]
        most = max(most, len(held))
    return most


def test_any_run_of_1000_positions_touches_at_most_8_default_blocks() -> None:
    """Default blocks of 1,024: every window but the last is 4 blocks (4,096
    positions, or fewer where the short last block falls), so 1,000
    consecutive positions overlap at most 2 windows: at most 8 blocks."""
    order = EpochOrder(150_000, seed=2)  # 146 full blocks and one of 496
    for epoch in range(2):
        starts = order.window_starts(epoch)
        lengths = {b - a for a, b in pairwise(starts[:-1])}
        assert lengths <= {4096, 3 * 1024 + 496} and 4096 in lengths
        assert most_blocks_in_a_run(order, epoch, 1000) <= 2 * WINDOW_BLOCKS == 8
    assert most_blocks_in_a_run(order, 0, 3000) <= 8


@pytest.mark.parametrize("window", [WINDOW_INDICES, 512])
def test_a_window_is_a_piece_or_at_most_4_blocks_and_w_indices(window: int) -> None:
    """Each window holds either one piece of a block of over W indices
    (consecutive indices, at most W, the block's pieces side by side in the
    epoch and within one of each other in size) or whole smaller blocks, at
    most 4 and W indices, closed only where the next block would not fit."""
    rng = random.Random(9)
    sizes = [rng.choice([0, 1, 10, 300, 512, 513, 3000, 9000]) for _ in range(300)]
    order = EpochOrder(sum(sizes), seed=4, block_sizes=sizes, window=window)
    bounds = [0, *accumulate(sizes)]
    for epoch in range(3):
        blocks, starts = order.block_order(epoch), order.window_starts(epoch)
        assert 0 not in [sizes[b] for b in blocks]  # empty blocks take no part
        k = 0  # blocks[:k]: the blocks of the windows so far
        pieces: dict[int, list[int]] = {}  # large block -> its pieces' sizes
        for first, end in pairwise(starts):
            held = sorted(order.indices(epoch, first, end))
            mine = list(dict.fromkeys(order.block_of(i) for i in held))
            if sizes[mine[0]] > window:  # a piece
                assert len(mine) == 1 and len(held) <= window
                assert held == list(range(held[0], held[-1] + 1))
                if mine[0] not in pieces:  # its block's first piece
                    assert blocks[k] == mine[0]
                    k += 1
                assert blocks[k - 1] == mine[0]  # the pieces come together
                pieces.setdefault(mine[0], []).append(len(held))
                continue
            assert set(blocks[k : k + len(mine)]) == set(mine)
            mine, k = blocks[k : k + len(mine)], k + len(mine)  # in epoch order
            assert all(sizes[b] <= window for b in mine)
            assert held == sorted(i for b in mine for i in range(*bounds[b : b + 2]))
            assert 1 <= len(mine) <= WINDOW_BLOCKS and end - first <= window
            following = k < len(blocks) and sizes[blocks[k]]
            assert (
                len(mine) == WINDOW_BLOCKS
                or k == len(blocks)  # the last window
                or end - first + following > window  # the next does not fit
            )
        assert k == len(blocks)
        for block, got in pieces.items():
            assert sum(got) == sizes[block] and max(got) - min(got) <= 1
            assert len(got) == math.ceil(sizes[block] / window)


@pytest.mark.parametrize("seed", range(4))
def test_any_run_touches_at_most_4_blocks_per_window_it_overlaps(seed: int) -> None:
    """With any block sizes: a run of L positions overlaps at most
    ceil((L - 1) / m) + 1 windows (m: the shortest window but the last),
    each of at most 4 blocks."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 40, 250, 1000, 3000, 7000]) for _ in range(60)]
    order = EpochOrder(sum(sizes), seed=seed, block_sizes=sizes)
    starts = order.window_starts(0)
    shortest = min((b - a for a, b in pairwise(starts[:-1])), default=1)
    run = 1000
    bound = WINDOW_BLOCKS * (math.ceil((run - 1) / shortest) + 1)
    assert most_blocks_in_a_run(order, 0, run) <= bound


def test_the_cached_windows_stay_bounded_whatever_the_size() -> None:
    """Reading a whole epoch keeps only the newest windows: never O(n)."""
    order = EpochOrder(400_000, seed=0)
    for start in range(0, 400_000, 32_768):
        order.indices(1, start, min(start + 32_768, 400_000))
        assert order.held_indices() <= CACHED_INDICES
    big = EpochOrder(300_000, seed=0, block_sizes=[100_000] * 3)  # one per window
    big.indices(0, 0, 300_000)
    assert big.held_indices() <= 2 * 100_000


def test_an_epoch_of_cut_blocks_costs_memory_by_blocks_not_by_pieces() -> None:
    """117 million word chunks in 7,300 row groups, mixed 512 at a time:
    229,000 pieces. An epoch's layout and its validation counts hold a few
    entries per row group; a cut block's pieces are worked out when used."""
    blocks, size = 7300, 16_000
    order = EpochOrder(blocks * size, seed=0, block_sizes=[size] * blocks, window=512)
    counts = order.skip_counts(set(range(0, blocks * size, 997)))
    tracemalloc.start()
    try:
        for epoch in range(2):
            order.indices(epoch, 5_000_000, 5_001_000)
            counts.count_from(epoch, 77_000_000)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 * 2**20, held  # materialized pieces took over 50 MiB
    assert order.window_starts(0)[:3] == [0, 500, 1000]


# -- validation ids counted per block and window ------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_skip_counts_match_a_count_over_the_epoch(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 7, 100, 2000, 5000]) for _ in range(rng.randint(1, 9))]
    n = sum(sizes)
    window = [WINDOW_INDICES, 512, 300][seed % 3]  # cut blocks too
    order = EpochOrder(n, seed=seed, block_sizes=sizes, window=window)
    skip = set(rng.sample(range(n), rng.randint(0, n // 3))) | {-4, n, n + 9}
    counts = order.skip_counts(skip)
    assert counts.total == len(skip) - 3  # the ones outside 0..n-1 do not count
    for epoch in (0, 3, 1):
        full = epoch_of(order, epoch)
        after = [*reversed([0, *accumulate(i in skip for i in reversed(full))])]
        positions = [*rng.sample(range(n + 1), min(n + 1, 300)), 0, n, n + 5, -1]
        for position in positions:
            expected = after[min(max(position, 0), n)]
            assert counts.count_from(epoch, position) == expected, position


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), max_size=12),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 10**6),
    cuts=st.lists(st.floats(0, 1), max_size=6),
    window=st.sampled_from([WINDOW_INDICES, 512, 97, 1]),
)
def test_any_blocks_seed_and_epoch_give_a_permutation_read_in_any_slices(
    sizes: list[int], seed: int, epoch: int, cuts: list[float], window: int
) -> None:
    n = sum(sizes)
    order = EpochOrder(n, seed, sizes, window)
    full = epoch_of(order, epoch)
    assert sorted(full) == list(range(n))
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    pieces = [order.indices(epoch, a, b) for a, b in pairwise(bounds)]
    assert list(chain.from_iterable(pieces)) == full
    assert EpochOrder(n, seed, sizes, window).indices(epoch, 0, n) == full
    assert [order.index_at(epoch, p) for p in range(0, n, 13)] == full[::13]
