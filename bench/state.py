"""Benchmark of what `--state PATH` costs the serving rate.

Two variants of this tree's server, each a fresh subprocess per run, driven
by EIR-pattern client processes (bench/clients.py):

  a. without --state;
  b. with --state, a new state file for every run, in a temporary folder
     (the system's, or --state-dir): the server appends one checksummed
     line to it before each data reply leaves, writes a snapshot by rename
     every 1 MiB of updates, and flushes it to disk every second
     (--state-sync's default).

in four scenarios: the default source (the simulator, default --workers,
64 readings) with 1 client and with 4 clients, batch 32; the same 4
clients after a setup connection sent 100,000 validation ids (so every
snapshot of the state file carries them: 226 KB written and flushed to
disk every 1 MiB of updates); and the word chunks of
bench/datasets.py's FineWeb-like corpus (bench/dataset_files.py, 4 files
of 4,000 documents, 64 words a chunk, index order) with 4 clients of batch
256. The issue's target: with --state, the default source's and the word
chunks' rates stay within 5% of without (b / a at least 0.95).

Each round runs every (scenario, variant) pair once, a scenario's variants
back to back, every other round in reverse order (bench/rounds.py); a rate
is the median of the rounds' steady rates (summed over the clients) and a
ratio the median of the rounds' ratios, so two runs compared are always
seconds apart. After each run with --state, before the server stops, a
`status` request reads the state file's counts (updates written, failed
writes: there must be none). The server's CPU per sample served is from
/proc, over the clients' timed run (its workers apart): less sensitive than
a rate to other work on a shared machine. It prints the command and a
markdown table.

Then, in this process (this checkout's eirstream), what `--state` adds to
each reply: a stream's progress and its update line appended to a state
file, as the server does before a reply leaves (`Keeper.sent`), timed over
UPDATES updates, with no validation ids and with 100,000 (the snapshots
every 1 MiB of updates then carry them: their cost is spread over the
updates, and the slowest update is one of them).

    python bench/state.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import Result, connect, request, stream_from  # noqa: E402
from bench.dataset_files import write_text_corpus  # noqa: E402
from bench.rounds import HelpFormatter, median_ratio, run_rounds, step  # noqa: E402
from bench.servers import Server  # noqa: E402
from bench.trees import Tree  # noqa: E402
from eirstream.statefile import StateFile  # noqa: E402
from eirstream.stream import SampleStream  # noqa: E402

# scenario: (clients, batch size, word chunks?, validation ids)
SCENARIOS = {
    "default source, 1 client, batch 32": (1, 32, False, 0),
    "default source, 4 clients, batch 32": (4, 32, False, 0),
    "default source, 4 clients, batch 32, 100,000 validation ids": (
        4,
        32,
        False,
        100_000,
    ),
    "word chunks, 4 clients, batch 256": (4, 256, True, 0),
}
WITHOUT, WITH = "a: without --state", "b: with --state"
TARGET = 0.95
UPDATES = 20_000  # updates timed in this process, for each case
VALIDATION = 100_000


@dataclass
class Measured:
    runs: dict[tuple[str, Tree], list[Result]]
    # Per run with --state: the status reply's "state" after the clients.
    state: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def state_status(server: Server) -> dict[str, Any]:
    """The status reply's "state" of a running server."""
    ws = connect(server.url)
    try:
        reply = request(ws, '{"type":"status","payload":{}}')
    finally:
        ws.close()
    state = reply["payload"].get("state")
    if not state:
        raise RuntimeError(f"the status reply has no state: {reply!r:.300}")
    return state


def set_validation_ids(server: Server, count: int, seed: int) -> None:
    """A run's setup: `count` validation ids of the simulator, drawn at
    random from its first 100 x `count` samples, sent on one connection."""
    rng = random.Random(f"{seed}:validation")
    chosen = sorted(rng.sample(range(100 * count), count))
    message = {
        "type": "setValidationIds",
        "payload": {"validation_ids": [f"sample_{i}" for i in chosen]},
    }
    ws = connect(server.url)
    try:
        reply = request(ws, json.dumps(message))
    finally:
        ws.close()
    if reply["type"] != "validationIdsConfirmation":
        raise RuntimeError(f"setValidationIds answered {reply!r:.300}")


def measure(args: argparse.Namespace, spec: Path, folder: Path) -> Measured:
    """Every scenario on both variants, in --rounds rounds."""
    cache = str(folder / "cache")
    variants = [
        Tree.at(args.tree, WITHOUT).with_env(EIR_STREAM_CACHE=cache),
        Tree.at(args.tree, WITH).with_env(EIR_STREAM_CACHE=cache),
    ]
    measured = Measured({}, {scenario: [] for scenario in SCENARIOS})
    numbers = count(1)

    def run(scenario: str, tree: Tree, note: str) -> Result:
        clients, batch, chunks, validation = SCENARIOS[scenario]
        step(f"{scenario}{note} [{tree.label}]")
        extra = ["--dataset", str(spec)] if chunks else []
        if tree.label == WITH:  # a new file each run: nothing to resume
            extra += ["--state", str(folder / "state" / f"run-{next(numbers)}")]
        with tree.server(None, 64, args.seed, extra) as server:
            if validation:
                set_validation_ids(server, validation, args.seed)
            result = stream_from(server, clients, batch, args.seconds)
            if tree.label == WITH:
                state = state_status(server)
                if state["failed_writes"] or not state["updates"]:
                    raise RuntimeError(f"the state file was not written: {state}")
                measured.state[scenario].append(state)
            return result

    measured.runs = run_rounds(list(SCENARIOS), variants, args.rounds, run)
    return measured


def server_us(result: Result) -> float:
    """The server process's CPU per sample served (its workers apart), in
    microseconds."""
    return result.run.server_cpu / sum(r["samples"] for r in result.run.streams()) * 1e6


def update_cost(folder: Path, validation: int) -> tuple[float, float]:
    """What `Keeper.sent` costs in this process, with `validation` ids on
    file: microseconds an update (all of them, snapshots included) and the
    slowest one, in milliseconds."""
    stream = SampleStream(None, epochs=None)  # the default source's: unbounded
    state_file, _ = StateFile.open(str(folder / f"timed-{validation}"), {"bench": 1})
    ids = sorted(random.Random(0).sample(range(100 * validation), validation))
    stream.set_validation_ids([f"sample_{i}" for i in ids])
    state = stream.state()
    state_file.validation("default", state.validation, state.progress)
    stream.reset("c")
    spent = slowest = 0.0
    for _ in range(UPDATES):
        stream.take("c", 32)
        stream.sent("c")  # (the server calls it with or without --state)
        before = time.perf_counter()
        state_file.progress("default", stream.progress())
        took = time.perf_counter() - before
        spent, slowest = spent + took, max(slowest, took)
    state_file.close()
    return spent / UPDATES * 1e6, slowest * 1e3


def report_updates(folder: Path) -> dict[str, Any]:
    """Print what an update costs in this process; the numbers for --json."""
    print(
        f"\nWhat --state adds to each reply, in this process ({UPDATES:,} "
        "updates, each a stream's progress appended to the state file):\n"
    )
    print("| validation ids on file | an update | a sample, batch 32 / 256 | slowest |")
    print("|---|---|---|---|")
    found = {}
    for validation in (0, VALIDATION):
        step_us, slowest_ms = update_cost(folder, validation)
        print(
            f"| {validation:,} | {step_us:.1f} us | {step_us / 32:.2f} / "
            f"{step_us / 256:.3f} us | {slowest_ms:.1f} ms |"
        )
        found[str(validation)] = {"update_us": step_us, "slowest_ms": slowest_ms}
    return found


def report(measured: Measured) -> dict[str, Any]:
    """Print the markdown table; the numbers as a dict for --json."""
    head = [
        "scenario",
        WITHOUT,
        WITH,
        "b / a",
        "server CPU a / b",
        "state updates",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary: dict[str, Any] = {}
    for scenario in SCENARIOS:
        results = {
            tree.label: found
            for (name, tree), found in measured.runs.items()
            if name == scenario
        }
        rates = {label: [r.total for r in found] for label, found in results.items()}
        ratio = median_ratio(rates[WITH], rates[WITHOUT])
        cpu_runs = {v: [server_us(r) for r in results[v]] for v in (WITHOUT, WITH)}
        cpu = [statistics.median(cpu_runs[v]) for v in (WITHOUT, WITH)]
        cpu_ratio = median_ratio(cpu_runs[WITH], cpu_runs[WITHOUT])
        updates = statistics.median(
            state["updates"] for state in measured.state[scenario]
        )
        cells = [
            f"{statistics.median(rates[v]):,.0f} samples/s" for v in (WITHOUT, WITH)
        ]
        cells += [
            f"{ratio:.3f}",
            f"{cpu[0]:.2f} / {cpu[1]:.2f} us/sample ({cpu_ratio:.2f}x)",
        ]
        cells.append(f"{updates:,.0f} a run")
        lines.append("| " + " | ".join([scenario, *cells]) + " |")
        summary[scenario] = {
            "rates": rates,
            "ratio": ratio,
            "server_us_per_sample": cpu_runs,
            "server_cpu_ratio": cpu_ratio,
            "state": measured.state[scenario],
        }
    print("\n".join(lines))
    low = [
        f"{scenario}: {found['ratio']:.3f}"
        for scenario, found in summary.items()
        if found["ratio"] < TARGET
    ]
    print(f"ratios below {TARGET}: " + ("; ".join(low) if low else "none"))
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--rounds", type=int, default=5, help="rounds of every scenario and variant")
    add("--seconds", type=float, default=8.0, help="length of each streaming run")
    add("--seed", type=int, default=0, help="the servers' and the corpus's seed")
    add(
        "--tree",
        type=Path,
        default=ROOT,
        help="the checkout whose server is measured (a worktree of a commit)",
    )
    add(
        "--state-dir",
        type=Path,
        default=None,
        help="where the temporary folder of state files goes (default: the "
        "system's temporary folder)",
    )
    add("--json", metavar="FILE", help="also write the rates and ratios here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds and --seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/state.py", *given])
    folder = Path(tempfile.mkdtemp(prefix="bench-state-", dir=args.state_dir))
    same = os.stat(folder).st_dev == os.stat(args.tree).st_dev
    print(
        f"{command}\n{os.cpu_count()} cores; {args.seconds:g} s a run, "
        f"{args.rounds} rounds; state files in {folder} "
        f"({'the same' if same else 'another'} file system as {args.tree})",
        flush=True,
    )
    try:
        (folder / "state").mkdir()
        step("writing the word-chunk corpus")
        corpus = write_text_corpus(folder / "text", 4, 4000, 1000, args.seed)
        measured = measure(args, corpus.spec, folder)
        print()
        print(command)
        summary = report(measured)
        summary["updates in this process"] = report_updates(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": command, **summary}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
