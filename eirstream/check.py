"""Check a source before pointing EIR at it: its `getInfo` payload and samples."""

import argparse
import sys
from collections.abc import Sequence

from eirstream.eirformat import check_dataset_info, check_sample
from eirstream.loading import load_source


def main(argv: Sequence[str] | None = None) -> int:
    """`python stream_encoders.py module:factory`: check a source's samples."""
    parser = argparse.ArgumentParser(
        description="Check that a sample source (--source of simulation_streamer.py) "
        "produces what EIR's streaming client expects."
    )
    parser.add_argument("source", help="module:factory or path/to/file.py:factory")
    parser.add_argument("--samples", type=int, default=20, help="samples to check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--max-iterations", type=int, default=None)
    args = parser.parse_args(argv)
    settings = {
        "seed": args.seed,
        "sequence_length": args.sequence_length,
        "max_iterations": args.max_iterations,
    }
    try:
        source = load_source(args.source, settings)
        info = source.dataset_info()
        check_dataset_info(info)
        bound = source.num_samples
        count = args.samples if bound is None else min(args.samples, bound)
        for index in range(count):
            check_sample(source.sample(index), info)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(
        f"{side[:-1]} {name} ({entry['type']})"
        for side in ("inputs", "outputs")
        for name, entry in info[side].items()
    )
    print(f"ok: {count} samples checked; {names}")
    return 0
