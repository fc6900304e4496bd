"""The server as an operator runs it: `simulation_streamer.py` in a subprocess.

`ServerProcess` is the one helper that starts a server process, for every
test that needs a real process (signals, exit status, the log, memory,
worker processes, eirtrain runs) and for bench/long_run.py. Tests that only
talk to a server use the in-process `ServerThread` of support/servers.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import websocket

from support import ROOT
from support.commands import STREAMER, clean_env
from support.waiting import HANG

_URL = re.compile(r"\b(wss?://\S+)")
_LISTENING = re.compile(r"listening.*\bwss?://")

# Runs the script as `python SCRIPT ARGS` would, with the server's own logger
# at DEBUG level: every request and the indices of every data reply. (The
# server's `--log-level debug` would also turn on the websockets library's
# frame log.)
_DEBUG_LOG = (
    "import logging, os, runpy, sys\n"
    "logging.getLogger('eirstream').setLevel(logging.DEBUG)\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


class ServerProcess:
    """`simulation_streamer.py ARGS` in a subprocess, its log collected line by line.

    Give the command-line arguments as they are (usually "--port", "0", ...).
    `env` is added to this process's environment; `log_path` also writes the
    log to that file as it comes; `debug_log` turns on the server's own DEBUG
    lines (see `_DEBUG_LOG`); `python`, `cwd` and `script` run another copy of
    the server (relative `script` paths are from `cwd`).

    With `wait_listening` (the default), the constructor returns once the
    server logs its "listening" line: `url` is then its WebSocket URL on
    127.0.0.1 (any `?token=` placeholder removed), `port` its port and
    `startup_seconds` the time from starting the process to that line.
    Without it, nothing is waited for (the server may fail to start: see
    `wait`). Use as a context manager: leaving it stops the server (SIGTERM,
    then SIGKILL).

    The log is stdout and stderr together: `lines` (a list that grows),
    `log` (the text so far), `wait_for` (a line to come).
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        debug_log: bool = False,
        wait_listening: bool = True,
        timeout: float = HANG,
        python: str | Path = sys.executable,
        cwd: Path = ROOT,
        script: str | Path = STREAMER,
    ) -> None:
        run = [str(python), "-c", _DEBUG_LOG] if debug_log else [str(python)]
        self.args = [*run, str(script), *args]
        self.lines: list[str] = []
        self.log_path = log_path
        self._changed = threading.Condition()
        self._log_file: IO[str] | None = (
            log_path.open("w", encoding="utf-8") if log_path is not None else None
        )
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=clean_env(values=env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
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
            assert found is not None, line
            parts = urlsplit(found.group(1))
            self.port = parts.port or 0
            self.url = f"{parts.scheme}://127.0.0.1:{self.port}{parts.path}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            for line in self.process.stdout:
                if self._log_file is not None:
                    self._log_file.write(line)
                    self._log_file.flush()
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        finally:
            if self._log_file is not None:
                self._log_file.close()
            with self._changed:
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str | re.Pattern[str], timeout: float = HANG) -> str:
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
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise TimeoutError(
                        f"no log line with {pattern.pattern!r} within {timeout} s "
                        f"(exit status {self.process.poll()}); log so far:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.1))

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status. The log is complete."""
        status = self.process.wait(timeout)
        self._reader.join(HANG)
        return status

    def status(self, timeout: float = HANG) -> dict[str, Any]:
        """The server's `status` payload, asked on a connection of its own."""
        return request_status(self.url, timeout)

    def children(self) -> list[int]:
        """Pids of the server's child processes (its sample workers)."""
        return child_pids(self.pid)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, SIGKILL if it has not exited within `timeout` s; the exit
        status. The log is complete afterwards."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.wait(HANG)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self.process.stdout is not None:
            self.process.stdout.close()


def request_status(url: str, timeout: float = HANG) -> dict[str, Any]:
    """Handshake, then `status`; the status payload."""
    ws = websocket.create_connection(url, timeout=timeout, skip_utf8_validation=True)
    try:
        ws.send(json.dumps({"type": "handshake", "version": "1.0", "worker_id": 0}))
        reply = json.loads(ws.recv())
        if reply.get("type") != "handshake":
            raise RuntimeError(f"handshake refused: {reply}")
        ws.send(json.dumps({"type": "status", "payload": {}}))
        reply = json.loads(ws.recv())
        if reply.get("type") != "status":
            raise RuntimeError(f"expected a status reply, got {reply}")
        return reply["payload"]
    finally:
        ws.close()


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
