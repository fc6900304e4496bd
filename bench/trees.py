"""The checkouts a benchmark measures: this tree, and a baseline tree.

A baseline is another checkout of the project, for instance the layout
before the package (`git worktree add /tmp/before e083463`). Everything a
benchmark measures on a tree comes from that tree: its server
(`python TREE/simulation_streamer.py`, run from TREE, so `--source
bench/heavy_source.py:make_source` is that tree's heavy source), its
bench/ceiling_server.py, and the in-process measurements, which run in a
fresh Python process with TREE first on sys.path (bench/in_tree.py). This
tree is measured the same way, so both columns of a table are taken alike.

The two layouts name their modules differently: "package" is the eirstream/
package, "loose" the top-level modules before it (dataset_source,
stream_order, ...). bench/in_tree.py holds the names of both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.servers import ROOT, Server, running_process

IN_TREE = Path(__file__).resolve().parent / "in_tree.py"
MEASURE_TIMEOUT = 1800.0  # seconds an in-process measurement may take (a hang)


def layout_of(root: Path) -> str:
    """A checkout's layout: "package" (eirstream/) or "loose" (the modules
    before it)."""
    return "package" if (root / "eirstream" / "__init__.py").is_file() else "loose"


@dataclass(frozen=True)
class Tree:
    """A checkout, its label in tables, and environment for its processes."""

    root: Path
    label: str
    layout: str
    env: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def at(cls, root: Path, label: str) -> Tree:
        root = root.resolve()
        if not (root / "simulation_streamer.py").is_file():
            raise ValueError(f"{root} has no simulation_streamer.py")
        return cls(root, label, layout_of(root))

    def with_env(self, **env: str) -> Tree:
        """The same tree, with `env` added for every process it starts."""
        return replace(self, env={**self.env, **env})

    def server(
        self, workers: int | None, length: int, seed: int, extra: Sequence[str] = ()
    ) -> AbstractContextManager[Server]:
        """This tree's server with --workers N (left out if None) and `extra`."""
        options = ["--sequence-length", str(length), "--seed", str(seed)]
        if workers is not None:
            options += ["--workers", str(workers)]
        return self.script("simulation_streamer.py", *options, *extra)

    def script(self, path: str, *args: str) -> AbstractContextManager[Server]:
        """A server script of this tree (`path` from its root), run from it."""
        command = [sys.executable, str(self.root / path), *args]
        return running_process(command, cwd=self.root, env=self.env)

    def measure(self, name: str, **arguments: Any) -> Any:
        """bench/in_tree.py's measurement `name` on this tree, in a fresh
        process; its result (JSON)."""
        command = [sys.executable, str(IN_TREE), str(self.root), self.layout, name]
        done = subprocess.run(
            [*command, json.dumps(arguments)],
            cwd=self.root,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            text=True,
            timeout=MEASURE_TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{name} on {self.root} failed with exit status {done.returncode}"
            )
        return json.loads(done.stdout.splitlines()[-1])


def trees_of(baseline: Path | None) -> list[Tree]:
    """[this tree], or [the baseline, this tree]: a table's columns, in order."""
    this = Tree.at(ROOT, "this tree")
    if baseline is None:
        return [this]
    other = Tree.at(baseline, "baseline")
    if other.root == this.root:
        raise ValueError(f"--baseline {baseline} is this tree")
    return [other, this]
