"""A throwaway Dask cluster on 127.0.0.1, as the README tells a user to start one.

`local_dask_cluster()` runs `dask scheduler` and `dask worker` as subprocesses
(the `dask` command next to this Python), waits until the scheduler counts
the workers, and kills both process groups on the way out, whatever happened.
The tests (test_cluster.py, test_dataset_server.py) and the benchmark
(bench/executors.py) use it, so both exercise the commands users run, not an
in-process LocalCluster.

Everything listens on 127.0.0.1 only, including the scheduler's and workers'
HTTP servers, which `--no-dashboard` alone leaves on 0.0.0.0:8787 (and a
second cluster on the same machine would then collide on that port). The
processes run in a scratch folder without our modules and without PYTHONPATH,
so the server has to ship its modules to the workers itself. The scheduler
exits by itself after a minute without work (`--idle-timeout`) and the
workers after half a minute without a scheduler (`--death-timeout`): a test
run killed hard does not leave a cluster behind for long.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.commands import clean_env
from support.waiting import HANG

LOOPBACK = "127.0.0.1"


def dask_command() -> Path:
    """The `dask` CLI installed beside the running Python (in its venv)."""
    name = "dask.exe" if os.name == "nt" else "dask"
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"no {name} next to {sys.executable}: install the cluster extra "
            "(pip install 'eirstream[cluster]')"
        )
    return path


@dataclass
class LocalDaskCluster:
    """A running scheduler and its workers; `client` stays connected."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: subprocess.Popen[bytes]
    folder: Path
    client: Any  # distributed.Client

    def log(self, which: str = "workers", lines: int = 40) -> str:
        """The tail of scheduler.log or workers.log, for error messages."""
        text = (self.folder / f"{which}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the worker process (not of its nanny), for
        the workers that answer (a killed one can be listed for a moment)."""
        pids = self.client.run(os.getpid, on_error="ignore")
        return {address: pid for address, pid in pids.items() if isinstance(pid, int)}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the worker processes and their nannies
        so far: every live process in the workers' process group (Linux)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == self.workers.pid:  # pgrp: started in our session
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def wait_for_workers(self, count: int, timeout: float = HANG) -> None:
        try:
            self.client.wait_for_workers(count, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(
                f"the scheduler at {self.address} did not see {count} workers "
                f"within {timeout:g} s; workers.log:\n{self.log()}"
            ) from None


@contextlib.contextmanager
def local_dask_cluster(
    nworkers: int = 2,
    nthreads: int = 1,
    timeout: float = HANG,
    idle_timeout: str = "60s",
) -> Iterator[LocalDaskCluster]:
    """Scheduler + `dask worker --nworkers N --nthreads T` on 127.0.0.1. The
    scheduler exits by itself after `idle_timeout` without work (a bench that
    keeps a cluster waiting between its runs gives it longer)."""
    from distributed import Client  # the caller needs `distributed` anyway

    dask = dask_command()
    with tempfile.TemporaryDirectory(prefix="local-dask-") as tmp:
        folder = Path(tmp)
        scratch = {"DASK_TEMPORARY_DIRECTORY": str(folder / "scratch")}  # not /tmp
        env = clean_env(without=["PYTHONPATH"], values=scratch)
        scheduler_file = folder / "scheduler.json"
        http = ["--no-dashboard", "--dashboard-address", f"{LOOPBACK}:0"]
        procs: list[subprocess.Popen[bytes]] = []
        client = None
        try:
            scheduler = _start(
                [
                    str(dask),
                    "scheduler",
                    "--host",
                    LOOPBACK,
                    "--port",
                    "0",
                    *http,
                    "--scheduler-file",
                    str(scheduler_file),
                    "--idle-timeout",
                    idle_timeout,
                ],
                folder / "scheduler.log",
                folder,
                env,
            )
            procs.append(scheduler)
            address = _wait_for_address(scheduler, scheduler_file, timeout, folder)
            workers = _start(
                [
                    str(dask),
                    "worker",
                    address,
                    "--host",
                    LOOPBACK,
                    "--nworkers",
                    str(nworkers),
                    "--nthreads",
                    str(nthreads),
                    *http,
                    "--death-timeout",
                    "30s",
                ],
                folder / "workers.log",
                folder,
                env,
            )
            procs.append(workers)
            client = Client(address, timeout=timeout)
            cluster = LocalDaskCluster(address, scheduler, workers, folder, client)
            cluster.wait_for_workers(nworkers, timeout)
            yield cluster
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close(timeout=5)
            for proc in reversed(procs):  # workers first: no reconnect attempts
                _kill_group(proc)


def _start(
    command: list[str], log_path: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A process in its own process group (session), output to log_path."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_address(
    scheduler: subprocess.Popen[bytes], scheduler_file: Path, timeout: float, folder
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            log = (folder / "scheduler.log").read_text(errors="replace")
            raise RuntimeError(
                f"dask scheduler exited with {scheduler.returncode}:\n{log}"
            )
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads(scheduler_file.read_text())["address"]
        time.sleep(0.05)
    raise RuntimeError(f"dask scheduler wrote no {scheduler_file} in {timeout:g} s")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group proc leads (its children included), reap it."""
    if os.name == "nt":  # no process groups: the leader at least
        proc.kill()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
