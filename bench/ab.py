"""A/B of two server variants: two checkouts of this repository, or two sets
of server options, under the same EIR-pattern clients.

Each round runs A then B (every other round B then A), each a fresh server
subprocess (`python TREE/simulation_streamer.py`, run from TREE: relative
paths in --a-args and --b-args are from that tree's root) with --clients
EIR-pattern client processes (bench/clients.py) for --seconds; a rate is the
clients' summed steady rate. It prints every round's rates, the medians,
and B/A per round: a shared machine's speed drifts, so only rates of the
same round are compared. bench/executors.py and bench/datasets.py take
--baseline TREE for the same comparison over all their scenarios.

    # this tree against another checkout (git worktree add /tmp/base <rev>)
    python bench/ab.py --a-tree /tmp/base --clients 4
    # two option sets on this tree
    python bench/ab.py --a-args "--dataset D.yaml --workers 1" \\
        --b-args "--dataset D.yaml --workers 1 --shuffle" --batch-size 256
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import stream  # noqa: E402
from bench.trees import Tree  # noqa: E402


def rate(
    tree: Tree, args: Sequence[str], clients: int, batch: int, seconds: float
) -> float:
    """Samples/s that `clients` clients pulled, in all, from one server."""
    server = tree.script("simulation_streamer.py", *args)
    return stream(server, clients, batch, seconds).total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-tree", type=Path, default=ROOT, help="A's checkout")
    parser.add_argument("--b-tree", type=Path, default=ROOT, help="B's checkout")
    parser.add_argument("--a-args", default="", help="A's server options")
    parser.add_argument("--b-args", default="", help="B's server options")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    print("python bench/ab.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    variants = {
        "A": (Tree.at(args.a_tree, "A"), shlex.split(args.a_args)),
        "B": (Tree.at(args.b_tree, "B"), shlex.split(args.b_args)),
    }
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            tree, options = variants[name]
            got = rate(tree, options, args.clients, args.batch_size, args.seconds)
            rates[name].append(got)
            print(f"round {round_ + 1}: {name} {got:,.0f} samples/s", flush=True)
    ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
    print(
        f"median A {statistics.median(rates['A']):,.0f}, "
        f"B {statistics.median(rates['B']):,.0f} samples/s; B/A per round "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f" (median {statistics.median(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
