"""The server as an operator runs it: `simulation_streamer.py` in a subprocess.

Used by the tests that send signals, read the log or measure memory, and by
bench/long_run.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
STREAMER = ROOT / "simulation_streamer.py"
_URL = re.compile(r"\b(wss?://\S+)")
_LISTENING = re.compile(r"listening.*\bwss?://")


class ServerProcess:
    """`simulation_streamer.py` in a subprocess, its log collected line by line.

    `url` is the WebSocket URL on 127.0.0.1 (parsed from the "listening" log
    line, with any token placeholder removed); `startup_seconds` is the time
    from starting the process to that line. Use as a context manager: leaving
    it stops the server (SIGTERM, then SIGKILL after a few seconds).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        wait_listening: bool = True,
        timeout: float = 15,
    ) -> None:
        self.args = [sys.executable, str(STREAMER), *args]
        self.lines: list[str] = []
        self._changed = threading.Condition()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="backslashreplace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""
        self.port = 0
        self.startup_seconds = float("nan")
        if wait_listening:
            try:
                line = self.wait_for(_LISTENING, timeout)
            except BaseException:
                self.stop()  # never leave a server running behind a failure
                raise
            self.startup_seconds = time.monotonic() - started
            found = _URL.search(line)
            assert found is not None
            parts = urlsplit(found.group(1))
            self.port = parts.port or 0
            self.url = f"{parts.scheme}://127.0.0.1:{self.port}{parts.path}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str | re.Pattern[str], timeout: float = 10) -> str:
        """The first log line containing `text` (or matching a regular
        expression), waiting for it if need be."""
        pattern = re.compile(re.escape(text)) if isinstance(text, str) else text
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if pattern.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.proc.poll() is not None and not self._reader.is_alive()
                ):
                    raise TimeoutError(
                        f"no log line with {pattern.pattern!r} within {timeout} s "
                        f"(exit status {self.proc.poll()}); log so far:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.1))

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status. The log is complete."""
        status = self.proc.wait(timeout)
        self._reader.join(5)
        return status

    def children(self) -> list[int]:
        """Pids of the server's child processes (its sample workers)."""
        return child_pids(self.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait(5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (empty where /proc is unavailable)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            continue
    return found


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process in KiB (VmRSS), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
