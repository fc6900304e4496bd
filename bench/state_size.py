"""How large the `--state` file is for a large epoch, half served, shuffled.

A stream over a source of 100,000,000 samples (only its length and blocks:
no sample is made), shuffled with the server's order, for 0, 10,000 and
100,000 validation ids. For each: the run's setup sends its validation ids
(drawn at random from the whole epoch: the ids farthest apart, so the most
bytes an id; ids a setup draws from its first samples lie closer together),
a training connection resets (training starts at epoch 0, position 0), and
takes half the epoch in batches, each marked sent as the server does before
a reply leaves. Then a state file is written as the server writes it
(`StateFile.open` in a temporary folder, the stream's progress and
validation ids, `close`: one snapshot) and its size printed, with the size
of one progress update, the line appended before each reply.

    python bench/state_size.py
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rounds import HelpFormatter, step  # noqa: E402
from eirstream.sample_ids import indices_of_sample_ids  # noqa: E402
from eirstream.state import progress_update  # noqa: E402
from eirstream.statefile import StateFile  # noqa: E402
from eirstream.stream import SampleStream  # noqa: E402

SAMPLES = 100_000_000
VALIDATION = (0, 10_000, 100_000)
BATCH = 10_000  # samples a take: big, to be quick; the file does not depend on it


@dataclass(frozen=True)
class LengthOnly:
    """A source as the stream sees it: a length and, optionally, blocks."""

    num_samples: int
    block_sizes: tuple[int, ...] | None = None

    def indices_of(self, ids: Sequence[str]) -> set[int]:
        return indices_of_sample_ids(ids, self.num_samples)


def blocks_of(samples: int, count: int | None) -> tuple[int, ...] | None:
    """`count` blocks of sizes differing by one at most (None: the default
    blocks of order.py)."""
    if count is None:
        return None
    size, rest = divmod(samples, count)
    return tuple(size + 1 if block < rest else size for block in range(count))


@dataclass
class Measured:
    validation: int
    served: int
    seconds: float
    file_bytes: int
    update_bytes: int


def measure(args: argparse.Namespace, validation: int, folder: Path) -> Measured:
    source = LengthOnly(args.samples, blocks_of(args.samples, args.blocks))
    stream = SampleStream.for_source(source, shuffle=True, seed=args.seed)
    rng = random.Random(f"{args.seed}:validation")
    ids = [f"sample_{i}" for i in rng.sample(range(args.samples), validation)]
    stream.set_validation_ids(ids)
    started = time.perf_counter()
    stream.reset("train")
    served = 0
    for _ in range((args.samples - validation) // 2 // args.batch):
        served += len(stream.take("train", args.batch))
        stream.sent("train")
    seconds = time.perf_counter() - started
    settings = {
        "--seed": args.seed,
        "--max-iterations": None,
        "--shuffle": True,
        "samples per epoch": args.samples,
        "--source": "bench/state_size.py:LengthOnly",
        "--sequence-length": 64,
    }
    path = folder / f"state-{validation}"
    state_file, _ = StateFile.open(str(path), settings)
    state = stream.state()
    state_file.validation("default", state.validation)
    state_file.progress("default", state.progress)
    state_file.close()
    update, _ = progress_update("default", state.progress)
    return Measured(validation, served, seconds, path.stat().st_size, len(update))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--samples", type=int, default=SAMPLES, help="samples per epoch")
    add(
        "--blocks",
        type=int,
        default=None,
        help="blocks of the source, as a dataset's row groups (default: the "
        "fixed blocks of 1,024 samples order.py gives a source without)",
    )
    add("--batch", type=int, default=BATCH, help="samples a take")
    add("--seed", type=int, default=0, help="the order's and the ids' seed")
    args = parser.parse_args(argv)
    if args.samples < 2 * max(VALIDATION) or args.batch < 1:
        parser.error(f"--samples must be at least {2 * max(VALIDATION)}")
    if args.blocks is not None and not 0 < args.blocks <= args.samples:
        parser.error("--blocks must be between 1 and --samples")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/state_size.py", *given])
    blocks = "default blocks" if args.blocks is None else f"{args.blocks:,} blocks"
    print(f"{command}\n{args.samples:,} samples, shuffled, {blocks}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-state-size-") as folder:
        for validation in VALIDATION:
            step(f"{validation:,} validation ids, half the epoch in batches")
            rows.append(measure(args, validation, Path(folder)))
    print()
    print(command)
    print(
        "| validation ids | samples served | state file | bytes an id "
        "| one progress update | time to serve |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        per_id = (
            f"{(row.file_bytes - rows[0].file_bytes) / row.validation:.2f}"
            if row.validation
            else "-"
        )
        print(
            f"| {row.validation:,} | {row.served:,} | {row.file_bytes:,} bytes "
            f"| {per_id} | {row.update_bytes} bytes | {row.seconds:.0f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
