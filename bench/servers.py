"""Server processes for the benchmarks: started on a free port, stopped after.

`running_process(command)` runs a server command (ours, a baseline tree's, or
bench/ceiling_server.py) with `--port <a free port>` appended, waits until
the port accepts TCP connections and stops the process with SIGINT on the
way out. `Server` is what a scenario gets: the URL, the time the process took
to listen, and the CPU of the server process and of its children (its
sample workers) read from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTEN_TIMEOUT = 60.0  # seconds a server may take to listen (guards a hang)


def free_port() -> int:
    """A TCP port nobody listens on now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A server process that listens on 127.0.0.1:port."""

    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float
    log_path: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def status_field(self, name: str) -> int:
        """A field of /proc/<pid>/status in kB (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise KeyError(f"no {name!r} in /proc/{self.proc.pid}/status")

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) of the server process and of its children."""
        children: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            children += [int(pid) for pid in task.read_text().split()]
        return process_cpu(self.proc.pid), sum(process_cpu(pid) for pid in children)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_process(
    command: Sequence[str],
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """command + ["--port", <a free port>], run from `cwd` with `env` added to
    this process's environment, until it accepts TCP connections; stopped
    with SIGINT afterwards."""
    port = free_port()
    command = [*command, "--port", str(port)]
    with tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        try:
            startup = wait_listening(proc, port, started, log.name)
            yield Server(proc, port, startup, log.name)
        finally:
            stop_process(proc)


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, started: float, log_path: str
) -> float:
    """Seconds from Popen to the port accepting connections."""
    deadline = started + LISTEN_TIMEOUT
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server {proc.args!r} exited with {proc.returncode}:\n"
                + Path(log_path).read_text()
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(
        f"server {proc.args!r} did not listen within {LISTEN_TIMEOUT:g} s"
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, as Ctrl-C would; SIGKILL if it has not exited within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
