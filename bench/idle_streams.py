"""What an idle named stream costs a real server process, in resident memory.

For each server (this tree's, the simulator with --max-iterations, in index
order and with --shuffle; default --workers), from the server's start:

  1. warm-up: a client on the default stream handshakes, takes a batch and
     closes (the allocator grows to hold one stream's read-ahead, which the
     server then lets go of);
  2. RSS before;
  3. 8 named streams, one after the other: a client opens /ws/idle-<k>,
     handshakes, takes a batch, closes; the server then holds 9 streams and
     no connection. RSS after: (after - before) / 8 is what a new stream
     that a run left behind costs, its read-ahead released;
  4. the same 8 names once more (streams that exist already): the growth
     per stream here is the noise of the allocator and of read-ahead made
     again, with no new stream.

The server's memory is VmRSS of its process (its worker processes apart),
read 1 s after the last client closed. tests/unit/test_stream_memory.py
checks the same for the streams alone, in one process, with tracemalloc.

    python bench/idle_streams.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import connect, request  # noqa: E402
from bench.metrics import http_get  # noqa: E402
from bench.rounds import HelpFormatter, step  # noqa: E402
from bench.servers import Server  # noqa: E402
from bench.trees import Tree  # noqa: E402

STREAMS = 8
SETTLE = 1.0  # seconds after the last close before RSS is read
IDLE_POLLS = 600  # /healthz polls, 0.05 s apart, for the connections to close


def open_take_close(server: Server, name: str | None, batch: int) -> None:
    """A client on stream `name` (None: the default stream) handshakes,
    takes one batch and closes; returns once the server has no connection."""
    url = server.url if name is None else f"{server.url}/{name}"
    ws = connect(url)
    getdata = {"type": "getData", "payload": {"batch_size": batch}}
    reply = request(ws, json.dumps(getdata))
    if reply["type"] != "data" or len(reply["payload"]) != batch:
        raise RuntimeError(f"expected {batch} samples on {url}, got {reply!r:.200}")
    ws.close()
    for _ in range(IDLE_POLLS):
        if health(server)["open_connections"] == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server still has a connection open after {url} closed")


def health(server: Server) -> dict[str, Any]:
    status, body = http_get(server.port, "/healthz")
    if status != 200:
        raise RuntimeError(f"/healthz answered {status}")
    return json.loads(body)


def memory(server: Server) -> tuple[float, float]:
    """(the server's RSS, the bytes of made samples its read-ahead holds), in
    MiB, SETTLE seconds after the last close. The second is read from a
    `status` reply on the default stream, after the RSS."""
    time.sleep(SETTLE)
    rss = server.status_field("VmRSS") / 1024
    ws = connect(server.url)
    making = request(ws, '{"type":"status","payload":{}}')["payload"]["making"]
    ws.close()
    return rss, making["bytes_held"] / 2**20


def measure(tree: Tree, options: Sequence[str], batch: int) -> dict[str, Any]:
    """Memory before and after 8 new named streams, and after the same 8
    again: {"before": (RSS, held), "after": ..., "again": ...}."""
    names = [f"idle-{k}" for k in range(STREAMS)]
    with tree.script("simulation_streamer.py", *options) as server:
        open_take_close(server, None, batch)
        before = memory(server)
        for name in names:
            open_take_close(server, name, batch)
        after = memory(server)
        streams = health(server)["streams"]
        if sorted(streams) != sorted(["default", *names]):
            raise RuntimeError(f"the server holds the streams {sorted(streams)}")
        for name in names:
            open_take_close(server, name, batch)
        again = memory(server)
    return {"before": before, "after": after, "again": again}


def per_stream_kib(start: tuple[float, float], end: tuple[float, float]) -> str:
    """RSS growth per stream, then that growth less the growth of the made
    samples held (what is left beyond the read-ahead), in KiB."""
    rss = (end[0] - start[0]) * 1024 / STREAMS
    held = (end[1] - start[1]) * 1024 / STREAMS
    return f"{rss:,.0f} KiB; {rss - held:,.0f} KiB beyond {held:,.0f} KiB held"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-iterations", type=int, default=1_000_000, help="samples per epoch"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/idle_streams.py", *given])
    print(command, flush=True)
    tree = Tree.at(ROOT, "this tree")
    common = ["--max-iterations", str(args.max_iterations)]
    servers = {
        f"simulator, {args.max_iterations:,} samples": common,
        f"simulator, {args.max_iterations:,} samples, --shuffle": [
            *common,
            "--shuffle",
        ],
    }
    found = {}
    for label, options in servers.items():
        step(label)
        found[label] = measure(tree, options, args.batch_size)
    print(f"\n{command}")
    print(
        "| server | RSS (made samples held) before | after 8 new streams "
        "| per new stream | after the same 8 again | per stream, again |"
    )
    print("|---|---|---|---|---|---|")
    for label, got in found.items():
        cells = [f"{rss:.1f} MiB ({held:.1f} MiB)" for rss, held in got.values()]
        new = per_stream_kib(got["before"], got["after"])
        again = per_stream_kib(got["after"], got["again"])
        print(f"| {label} | {cells[0]} | {cells[1]} | {new} | {cells[2]} | {again} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, **found}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
