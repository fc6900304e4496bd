"""Long run: EIR's exact fetch pattern against the server, for a million fetches.

EIR's training loop sends `heartbeat` and `getData` back to back for every
batch and reads one message, skipping heartbeat replies. Against the
tutorial's server the unread replies pile up and, with batch size 1, the run
stalls for good before 800,000 fetches (the client's 30 s read timeout). This
benchmark starts our server as a subprocess on a free port, plays that client
(tests/support/eir_like_client.py: handshake, validation probe, the unread heartbeat,
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
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import websocket  # noqa: E402
from support.eir_like_client import EirLikeClient  # noqa: E402
from support.server_process import ServerProcess, child_pids, rss_kib  # noqa: E402


def memory_snapshot(pid: int) -> dict[str, int | None]:
    workers = [rss_kib(child) for child in child_pids(pid)]
    return {
        "server_kib": rss_kib(pid),
        "children": len(workers),
        "children_kib": sum(w for w in workers if w is not None),
    }


def server_status(url: str) -> dict:
    """The `status` payload, asked on a connection of its own."""
    client = EirLikeClient(url, timeout=10)
    try:
        reply = client.request({"type": "status", "payload": {}})[0]
    finally:
        client.close()
    assert reply["type"] == "status", reply
    return reply["payload"]


@dataclass
class Tally:
    """What the fetches so far got."""

    fetches: int = 0
    samples_read: int = 0
    out_of_order: int = 0  # sample ids arrive in stream order on one connection
    slowest: float = 0.0
    stalled: str | None = None

    def add(self, batch: list[dict], took: float) -> None:
        """One fetch's batch, which took `took` seconds."""
        for offset, sample in enumerate(batch):
            if sample["sample_id"] != f"sample_{self.samples_read + offset}":
                self.out_of_order += 1
        self.samples_read += len(batch)
        self.fetches += 1
        self.slowest = max(self.slowest, took)


def fetch_all(
    client: EirLikeClient,
    server_pid: int,
    fetches: int,
    batch_size: int,
    progress_every: int,
    memory: dict,
) -> Tally:
    """`fetches` fetches, or fewer on a stall; the server's memory half way."""
    tally = Tally()
    started = last_report = time.monotonic()
    for fetch in range(1, fetches + 1):
        before = time.monotonic()
        try:
            batch = client.fetch_batch(batch_size)
        except websocket.WebSocketTimeoutException:
            tally.stalled = f"read timeout ({client.timeout} s) at fetch {fetch}"
            break
        if batch is None:
            tally.stalled = f"unexpected terminate at fetch {fetch}"
            break
        tally.add(batch, time.monotonic() - before)
        if fetch == fetches // 2:
            memory["middle"] = memory_snapshot(server_pid)
        now = time.monotonic()
        if progress_every and now - last_report >= progress_every:
            last_report = now
            print(
                f"  {fetch:>9,} fetches  {fetch / (now - started):8,.0f}/s  "
                f"slowest {tally.slowest * 1000:.1f} ms  "
                f"server RSS {rss_kib(server_pid)} KiB",
                file=sys.stderr,
                flush=True,
            )
    return tally


def run_bench(
    url: str,
    server_pid: int,
    fetches: int,
    batch_size: int,
    read_timeout: float,
    progress_every: int,
) -> dict:
    """Play EIR's training connection for `fetches` fetches; the measurements."""
    client = EirLikeClient(url, timeout=read_timeout)
    client.validation_probe()
    client.send({"type": "heartbeat"})  # EIR's initial heartbeat, never read
    memory = {"start": memory_snapshot(server_pid)}
    started = time.monotonic()
    tally = fetch_all(client, server_pid, fetches, batch_size, progress_every, memory)
    elapsed = time.monotonic() - started
    memory["end"] = memory_snapshot(server_pid)
    queued = client.count_queued() if tally.stalled is None else {}
    client.close()
    served = server_status(url)["samples_served_total"]
    probe_samples = 1  # the validation probe's getData
    return {
        "fetches": tally.fetches,
        "batch_size": batch_size,
        "seconds": round(elapsed, 2),
        "fetches_per_second": round(tally.fetches / elapsed, 1) if elapsed else None,
        "slowest_fetch_ms": round(tally.slowest * 1000, 2),
        "stalled": tally.stalled,
        "samples_read": tally.samples_read,
        "samples_out_of_order": tally.out_of_order,
        "samples_served_total": served,
        "served_minus_read": served - tally.samples_read - probe_samples,
        "queued_at_end": queued,
        "memory": memory,
    }


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fetches < 1 or args.batch_size < 1:
        parser.error(
            f"--fetches and --batch-size must be positive, got {args.fetches} "
            f"and {args.batch_size}"
        )
    extra = [a for a in args.server_args if a != "--"]

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
