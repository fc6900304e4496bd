"""The ceiling for one server process: a WebSocket server that generates nothing.

It speaks just enough of EIR's protocol for an EIR-pattern client (handshake,
getInfo, getData, heartbeat, reset, status) and answers every `getData` of a
given batch size with the same prebuilt bytes: the first samples of
bench/pool_source.py, so the replies are as large as those of our server
with that source. There is no stream, no cursor, no validation ids, no
end of stream and no checks. Whatever rate a client reaches here is the
most any server written on `websockets` in one Python process can deliver
to it on this machine; bench/executors.py compares ours with it.

With `--dataset SPEC` the canned samples are instead the first samples of
that dataset (as `simulation_streamer.py --dataset SPEC` makes them, ids
and all), so the replies are as large as our server's on that dataset;
bench/datasets.py compares ours with it.

Like our server it answers a `heartbeat` followed at once by `getData` with
the data reply alone (EIR reads one reply per heartbeat + getData pair);
answered one-for-one, EIR's unread replies would pile up and the server
would do twice the work.

    python bench/ceiling_server.py --port 8001
    python bench/ceiling_server.py --port 8001 --dataset corpus.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pool_source import make_source
from eirstream.datasets.source import load_dataset

PAIRING = 0.02  # seconds a heartbeat waits for a getData to pair with


def prebuilt(
    seed: int, sequence_length: int, dataset: str | None = None
) -> tuple[dict[int, bytes], bytes]:
    """(batch size -> its data message, the info message), built lazily:
    the first samples of bench/pool_source.py, or of `dataset` (a spec)."""
    if dataset is None:
        source = make_source(seed=seed, sequence_length=sequence_length)
    else:
        source = load_dataset(dataset)
    info = json.dumps({"type": "info", "payload": source.dataset_info()}).encode()

    class Cache(dict[int, bytes]):
        def __missing__(self, size: int) -> bytes:
            texts = source.samples_json(range(size))
            message = b'{"type":"data","payload":[' + ",".join(texts).encode()
            self[size] = message + b"]}"
            return self[size]

    return Cache(), info


def replies_for(
    message: dict, data: dict[int, bytes], info: bytes
) -> list[bytes | str]:
    kind = message.get("type")
    if kind == "getData":
        return [data[int(message.get("payload", {}).get("batch_size", 1))]]
    if kind == "getInfo":
        return [info]
    if kind == "handshake":
        return ['{"type":"handshake","version":"1.0"}']
    if kind == "reset":
        note = '{"message":"rewound"}'
        return [
            f'{{"type":"resetConfirmation","payload":{note}}}',
            f'{{"type":"reset","payload":{note}}}',
        ]
    if kind == "status":
        return ['{"type":"status","payload":{}}']
    return ['{"type":"error","payload":{"message":"unknown type"}}']


async def handle(ws: ServerConnection, data: dict[int, bytes], info: bytes) -> None:
    try:
        pending: str | bytes | None = None
        while True:
            raw = pending if pending is not None else await ws.recv()
            pending = None
            message = json.loads(raw)
            if message.get("type") == "heartbeat":
                with contextlib.suppress(TimeoutError):
                    pending = await asyncio.wait_for(ws.recv(), PAIRING)
                if pending is None or json.loads(pending).get("type") != "getData":
                    await ws.send('{"type":"heartbeat"}')
                continue
            for reply in replies_for(message, data, info):
                # bytes go out as text frames, the way our server sends them
                await ws.send(reply, text=True)
    except ConnectionClosed:
        pass


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument(
        "--dataset",
        metavar="SPEC",
        default=None,
        help="send the first samples of this dataset spec instead of the pool's",
    )
    args = parser.parse_args(argv)
    data, info = prebuilt(args.seed, args.sequence_length, args.dataset)

    async def handler(ws: ServerConnection) -> None:
        await handle(ws, data, info)

    async with serve(
        handler, args.host, args.port, compression=None, max_size=2**24
    ) as server:
        print(f"ceiling server listening on ws://{args.host}:{args.port}/ws")
        await server.serve_forever()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
