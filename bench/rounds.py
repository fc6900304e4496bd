"""Rounds, medians and the markdown table of the benchmarks.

A shared machine's speed drifts over minutes, so the benchmarks compare only
runs taken close together: the compared scenarios run in rounds, back to
back within a round, every other round in reverse order (ABBA), and a ratio
is the median over the rounds of the ratio within a round. With a baseline
tree, each scenario runs for both trees in every round, the two runs of a
scenario side by side, and the table shows a column for each tree and the
ratio of this tree to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.clients import Result, Run
from bench.trees import Tree

T = TypeVar("T")
Key = TypeVar("Key")


class HelpFormatter(
    argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter
):
    """The description as written, and each option's default."""


def step(text: str) -> None:
    """What the benchmark starts now, on a line of its own."""
    print(f"{text} ...", flush=True)


def in_round_order(items: Sequence[T], round_index: int) -> list[T]:
    """ABBA: every other round runs the scenarios backwards, so a drift of
    the machine's speed during a round does not favour the one that runs first."""
    return list(items) if round_index % 2 == 0 else list(items)[::-1]


def run_rounds(
    scenarios: Sequence[Key],
    trees: Sequence[Tree],
    repeats: int,
    run: Callable[[Key, Tree, str], T],
) -> dict[tuple[Key, Tree], list[T]]:
    """`run(scenario, tree, note)` for every scenario and tree, `repeats` times.

    A round runs every (scenario, tree) pair once, a scenario's trees side by
    side; `note` names the round for progress lines. The results of each pair
    are listed in round order.
    """
    pairs = [(scenario, tree) for scenario in scenarios for tree in trees]
    results: dict[tuple[Key, Tree], list[T]] = {pair: [] for pair in pairs}
    for index in range(repeats):
        note = f" (round {index + 1} of {repeats})" if repeats > 1 else ""
        for scenario, tree in in_round_order(pairs, index):
            results[scenario, tree].append(run(scenario, tree, note))
    return results


def totals(results: Sequence[Result]) -> list[float]:
    return [result.total for result in results]


def median_run(results: Sequence[Result]) -> Result:
    """The run with the median total rate (the lower middle of an even count)."""
    return sorted(results, key=lambda result: result.total)[(len(results) - 1) // 2]


def median_ratio(rates: Sequence[float], baseline: Sequence[float]) -> float:
    """The median over rounds of (this rate / the baseline's in the same round).

    Two runs a few seconds apart in one round see nearly the same machine, so
    the ratio of a round is steadier than a ratio of rates from different rounds.
    """
    return statistics.median(r / b for r, b in zip(rates, baseline, strict=True))


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rate_text(value: float, ratio: float | None = None, of: str = "") -> str:
    text = f"{value:,.0f} samples/s"
    return text if ratio is None else f"{text} ({ratio:.2f}x {of})"


@dataclass
class Row:
    """One measurement: its result on each tree (in the order of the trees),
    the ratio of this tree to the baseline, and a target if there is one."""

    name: str
    results: list[str]
    ratio: float | None = None
    target: str = ""
    met: list[bool] | None = None


def table(rows: Sequence[Row], trees: Sequence[Tree]) -> str:
    """The markdown table: one result column, or with a baseline tree a
    column per tree and `this / baseline`; `met` gives each tree's verdict."""
    if len(trees) == 1:
        head = ["measurement", "result", "target", "met"]
    else:
        head = ["measurement", *(t.label for t in trees), "this / baseline"]
        head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name, *row.results]
        if len(trees) > 1:
            cells.append("" if row.ratio is None else f"{row.ratio:.2f}x")
        met = (
            "-"
            if row.met is None
            else " / ".join("yes" if ok else "NO" for ok in row.met)
        )
        cells += [row.target, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tree_ratio(values: Sequence[float]) -> float | None:
    """this tree / baseline of one value per tree; None with one tree."""
    return values[-1] / values[0] if len(values) > 1 and values[0] else None


def round_ratio(per_tree: Sequence[Sequence[Result]]) -> float | None:
    """this tree / baseline: the median of the rounds' ratios; None with one tree."""
    if len(per_tree) < 2:
        return None
    return median_ratio(totals(per_tree[-1]), totals(per_tree[0]))


def busy(run: Run) -> str:
    return f"; workers busy {run.workers_cpu / run.wall:.2f} cores"


def compared(
    name: str,
    runs: list[list[Result]],
    against: list[list[float]] | None = None,
    of: str = "",
    target: float | None = None,
    show_busy: bool = True,
    target_of: str | None = None,
) -> Row:
    """A row of streaming runs in rounds, their list per tree: each tree's
    median run, the median ratio of its rounds to `against` (rates of the same
    tree and rounds) and this tree / baseline; `target` is a ratio to
    `against`, called `target_of` (by default `of`) in the target column."""
    results, ratios = [], []
    for index, tree_runs in enumerate(runs):
        middle = median_run(tree_runs)
        ratio = None
        if against is not None:
            ratio = median_ratio(totals(tree_runs), against[index])
            ratios.append(ratio)
        text = rate_text(middle.total, ratio, of)
        results.append(text + (busy(middle.run) if show_busy else ""))
    if target is None:
        return Row(name, results, round_ratio(runs))
    met = [ratio >= target for ratio in ratios]
    target_text = f">= {target}x {target_of or of}"
    return Row(name, results, round_ratio(runs), target_text, met)


def per_tree(
    name: str,
    values: Sequence[Any],
    text: Callable[[Any], str],
    number: Callable[[Any], float],
) -> Row:
    """A row of one measurement per tree; the ratio of `number(value)`."""
    return Row(name, [text(v) for v in values], tree_ratio([number(v) for v in values]))
