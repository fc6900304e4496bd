"""Processes a test starts: their environment, and commands run to their end.

`clean_env` is the one place that builds the environment of a process a
test starts (a server, a Dask cluster, eirtrain, a Python snippet): this
process's environment, some variables removed, some set. `run` runs a
command to its end with its output captured; `run_streamer` runs the
server's command line that way, for the runs that exit without serving
(bad settings, `--check`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from support import ROOT
from support.waiting import HANG

STREAMER = ROOT / "simulation_streamer.py"


def clean_env(
    without: Iterable[str] = (), values: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment without the variables named in `without`,
    then with `values` set: the environment of a process a test starts."""
    dropped = set(without)
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env.update(values or {})
    return env


def run(
    command: Sequence[str | Path],
    *,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    without: Iterable[str] = (),
    stdin: str | None = None,
    timeout: float = HANG,
) -> subprocess.CompletedProcess[str]:
    """`command` run to its end in `cwd`, stdout and stderr captured as text.

    Its environment is `clean_env(without, env)`; `stdin` is its input. The
    exit status is the caller's to check: nothing is raised for it."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_env(without, env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_streamer(
    *args: str,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    without: Iterable[str] = (),
    python: str | Path = sys.executable,
    python_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`python [PYTHON_ARGS] simulation_streamer.py ARGS` run to its end (see
    `run`)."""
    command = [python, *python_args, STREAMER, *args]
    return run(command, cwd=cwd, env=env, without=without)
