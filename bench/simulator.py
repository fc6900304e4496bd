"""What the tutorial's simulator costs per sample, before and after a change.

Times `SimulatedHealthData.samples_json` (what the server calls to make a
task's samples as JSON text) in two trees: --before (default /tmp/before, an
older checkout) and --after (default this tree). Each tree runs in a fresh
subprocess with only that tree on sys.path, so each imports its own
data_simulator.py. A round runs both trees, in alternating order from round
to round; a tree's figure in a round is the best of --repeats timings of
--samples samples, in µs per sample. Only figures of the same round are
compared: the machine's speed drifts between rounds.

    python bench/simulator.py
    python bench/simulator.py --before /tmp/base --rounds 5 --samples 4000
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in the subprocess: argv is the tree, the sequence length, the samples
# per timing and the timings. Prints one JSON line: the best µs per sample,
# and which data_simulator.py was timed.
TIMING = r"""
import json, sys, time
tree, length, count, repeats = sys.argv[1], *map(int, sys.argv[2:5])
sys.path.insert(0, tree)
import data_simulator
source = data_simulator.SimulatedHealthData(seed=0, sequence_length=length)
source.samples_json(range(100))  # warm up
best = float("inf")
for repeat in range(repeats):
    start = 10**6 + repeat * count  # fresh indices for every timing
    began = time.perf_counter()
    source.samples_json(range(start, start + count))
    best = min(best, (time.perf_counter() - began) / count * 1e6)
print(json.dumps({"us": best, "file": data_simulator.__file__}))
"""


def time_tree(tree: Path, length: int, count: int, repeats: int) -> float:
    """Best µs per sample of `samples_json` in `tree`, in a fresh subprocess."""
    numbers = [str(length), str(count), str(repeats)]
    done = subprocess.run(
        [sys.executable, "-I", "-c", TIMING, str(tree), *numbers],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"timing {tree} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["file"]).resolve().parent != tree.resolve():
        raise SystemExit(f"{tree}: imported {result['file']} instead")
    return result["us"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/before"))
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sequence-length", type=int, default=64)
    args = parser.parse_args(argv)
    print(
        "python bench/simulator.py "
        + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    trees = {"before": args.before, "after": args.after}
    print(f"before: {args.before}\nafter:  {args.after}")
    print(f"{'round':>5}  {'before µs':>10}  {'after µs':>10}  {'after/before':>12}")
    ratios = []
    figures: dict[str, list[float]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        got = {
            name: time_tree(
                trees[name], args.sequence_length, args.samples, args.repeats
            )
            for name in order
        }
        for name, value in got.items():
            figures[name].append(value)
        ratios.append(got["after"] / got["before"])
        print(
            f"{round_ + 1:>5}  {got['before']:>10.2f}  {got['after']:>10.2f}  "
            f"{ratios[-1]:>12.3f}",
            flush=True,
        )
    print(
        f"{'median':>5}  {statistics.median(figures['before']):>10.2f}  "
        f"{statistics.median(figures['after']):>10.2f}  "
        f"{statistics.median(ratios):>12.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
