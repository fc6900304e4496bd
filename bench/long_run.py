"""Long run: EIR's exact fetch pattern against the server, for a million fetches.

EIR's training loop sends `heartbeat` and `getData` back to back for every
batch and reads one message, skipping heartbeat replies. Against the
tutorial's server the unread replies pile up and, with batch size 1, the run
stalls for good before 800,000 fetches (the client's 30 s read timeout). This
benchmark starts our server as a subprocess on a free port, plays that client
(tests/eir_like_client.py: handshake, validation probe, the unread heartbeat,
then `fetch_batch` over and over) and reports:

* the fetch rate and the slowest fetch (a stall shows up as a read timeout);
* the server's resident memory (VmRSS of the server process, and of its sample
  workers) at the start, the middle and the end;
* samples served by the server against samples the client read, and the
  replies still queued for the client at the end (both stay within a couple of
  batches when nothing piles up).

    python bench/long_run.py                      # 1,000,000 fetches of 1 sample
    python bench/long_run.py --fetches 20000 --batch-size 32

Exit status 0 when every fetch got its data, 1 on a stall or any mismatch.
`ServerProcess` is also what the operations tests use to run the server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
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


def memory_snapshot(pid: int) -> dict[str, int | None]:
    workers = [rss_kib(child) for child in child_pids(pid)]
    return {
        "server_kib": rss_kib(pid),
        "children": len(workers),
        "children_kib": sum(w for w in workers if w is not None),
    }


def server_status(url: str) -> dict:
    """The `status` payload, asked on a connection of its own."""
    from eir_like_client import EirLikeClient

    client = EirLikeClient(url, timeout=10)
    try:
        reply = client.request({"type": "status", "payload": {}})[0]
    finally:
        client.close()
    assert reply["type"] == "status", reply
    return reply["payload"]


def count_queued(client: object, wait: float = 0.5) -> dict[str, int]:
    """Drain what is still queued for `client`: counts by message type."""
    import websocket

    counts: dict[str, int] = {}
    while True:
        try:
            message = client.recv(timeout=wait)  # type: ignore[attr-defined]
        except websocket.WebSocketTimeoutException:
            return counts
        counts[message["type"]] = counts.get(message["type"], 0) + 1


def run_bench(
    url: str,
    server_pid: int,
    fetches: int,
    batch_size: int,
    read_timeout: float,
    progress_every: int,
) -> dict:
    """Play EIR's training connection for `fetches` fetches; the measurements."""
    import websocket
    from eir_like_client import EirLikeClient

    client = EirLikeClient(url, timeout=read_timeout)
    client.validation_probe()
    client.send({"type": "heartbeat"})  # EIR's initial heartbeat, never read
    memory = {"start": memory_snapshot(server_pid)}
    samples_read = 0
    slowest = 0.0
    stalled: str | None = None
    started = time.monotonic()
    last_report = started
    expected = 0  # sample ids arrive in stream order on a single connection
    out_of_order = 0
    for fetch in range(1, fetches + 1):
        before = time.monotonic()
        try:
            batch = client.fetch_batch(batch_size)
        except websocket.WebSocketTimeoutException:
            stalled = f"read timeout ({read_timeout} s) at fetch {fetch}"
            break
        took = time.monotonic() - before
        slowest = max(slowest, took)
        if batch is None:
            stalled = f"unexpected terminate at fetch {fetch}"
            break
        for sample in batch:
            if sample["sample_id"] != f"sample_{expected}":
                out_of_order += 1
            expected += 1
        samples_read += len(batch)
        if fetch == fetches // 2:
            memory["middle"] = memory_snapshot(server_pid)
        now = time.monotonic()
        if progress_every and now - last_report >= progress_every:
            last_report = now
            print(
                f"  {fetch:>9,} fetches  {fetch / (now - started):8,.0f}/s  "
                f"slowest {slowest * 1000:.1f} ms  "
                f"server RSS {rss_kib(server_pid)} KiB",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.monotonic() - started
    done = fetch if stalled is None else fetch - 1
    memory["end"] = memory_snapshot(server_pid)
    queued = count_queued(client) if stalled is None else {}
    client.close()
    status = server_status(url)
    probe_samples = 1  # the validation probe's getData
    return {
        "fetches": done,
        "batch_size": batch_size,
        "seconds": round(elapsed, 2),
        "fetches_per_second": round(done / elapsed, 1) if elapsed else None,
        "slowest_fetch_ms": round(slowest * 1000, 2),
        "stalled": stalled,
        "samples_read": samples_read,
        "samples_out_of_order": out_of_order,
        "samples_served_total": status["samples_served_total"],
        "served_minus_read": status["samples_served_total"]
        - samples_read
        - probe_samples,
        "queued_at_end": queued,
        "memory": memory,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run EIR's fetch pattern (heartbeat + getData per batch, one "
        "read) against a fresh server subprocess and report rate, latency, "
        "memory and samples served vs read.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--fetches", type=int, default=1_000_000, help="batches to fetch"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="getData batch_size")
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30,
        help="seconds to wait for a reply, as EIR does; a timeout is a stall",
    )
    parser.add_argument(
        "--progress",
        type=float,
        default=10,
        help="print progress to stderr every this many seconds (0: never)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object"
    )
    parser.add_argument(
        "server_args",
        nargs=argparse.REMAINDER,
        help="after --, extra arguments for simulation_streamer.py "
        "(e.g. -- --workers 1)",
    )
    args = parser.parse_args(argv)
    if args.fetches < 1 or args.batch_size < 1:
        parser.error("--fetches and --batch-size must be positive")
    extra = [a for a in args.server_args if a != "--"]
    sys.path.insert(0, str(ROOT / "tests"))

    with ServerProcess("--port", "0", *extra) as server:
        print(
            f"server pid {server.pid} at {server.url}, listening after "
            f"{server.startup_seconds:.2f} s; {args.fetches:,} fetches of "
            f"{args.batch_size}",
            file=sys.stderr,
            flush=True,
        )
        result = run_bench(
            server.url,
            server.pid,
            args.fetches,
            args.batch_size,
            args.read_timeout,
            int(args.progress),
        )
        result["server_startup_seconds"] = round(server.startup_seconds, 3)
        server.stop()
    result["server_summary"] = next(
        (line for line in server.lines if "stopped" in line), None
    )
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    ok = (
        result["stalled"] is None
        and result["samples_out_of_order"] == 0
        and result["fetches"] == args.fetches
    )
    return 0 if ok else 1


def print_report(r: dict) -> None:
    mem = r["memory"]

    def mib(snap: dict | None) -> str:
        if not snap or snap["server_kib"] is None:
            return "n/a"
        return (
            f"{snap['server_kib'] / 1024:.1f} MiB (+{snap['children']} workers "
            f"{snap['children_kib'] / 1024:.1f} MiB)"
        )

    print(f"fetches              {r['fetches']:,} of batch size {r['batch_size']}")
    print(f"time                 {r['seconds']} s")
    print(f"fetch rate           {r['fetches_per_second']:,} fetches/s")
    print(f"slowest fetch        {r['slowest_fetch_ms']} ms")
    print(f"stall                {r['stalled'] or 'none'}")
    print(f"samples read         {r['samples_read']:,}")
    print(f"samples served       {r['samples_served_total']:,} (incl. 1 for the probe)")
    print(f"served - read        {r['served_minus_read']:,}")
    print(f"queued at the end    {r['queued_at_end']}")
    print(f"out-of-order samples {r['samples_out_of_order']}")
    print(f"server RSS start     {mib(mem.get('start'))}")
    print(f"server RSS middle    {mib(mem.get('middle'))}")
    print(f"server RSS end       {mib(mem.get('end'))}")
    print(f"server startup       {r['server_startup_seconds']} s to 'listening'")
    print(f"server summary       {r['server_summary']}")


if __name__ == "__main__":
    sys.exit(main())
