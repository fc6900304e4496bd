"""A client that talks like EIR's (websocket-client, same messages, same order).

It does what docs/protocol.md describes of eir-dl 0.25.0: handshake on connect,
the validation probe at the start of setup and training connections, the
unread heartbeat, and the training loop that sends heartbeat + getData back to
back and reads one message, skipping heartbeat and error replies.
"""

import json
import time
from typing import Any

import websocket

from support.waiting import HANG


class EirLikeClient:
    """One connection, handshaken. `timeout` bounds the wait for each reply
    (EIR itself gives up after 30 s; a test's bound only guards a hang)."""

    def __init__(self, url: str, timeout: float = HANG, worker_id: int = 0) -> None:
        self.ws = websocket.create_connection(
            url, skip_utf8_validation=True, timeout=timeout
        )
        self.timeout = timeout
        self.send({"type": "handshake", "version": "1.0", "worker_id": worker_id})
        reply = self.recv()
        assert reply == {"type": "handshake", "version": "1.0"}, reply

    # -- raw ---------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        self.ws.settimeout(self.timeout if timeout is None else timeout)
        return json.loads(self.ws.recv())

    def request(self, message: dict[str, Any], replies: int = 1) -> list[dict]:
        self.send(message)
        return [self.recv() for _ in range(replies)]

    def close(self) -> None:
        self.ws.close()

    def count_queued(self, wait: float = 0.5) -> dict[str, int]:
        """Read whatever is still queued for this client, until `wait` seconds
        pass without a message; the counts by message type."""
        counts: dict[str, int] = {}
        while True:
            try:
                message = self.recv(timeout=wait)
            except websocket.WebSocketTimeoutException:
                return counts
            counts[message["type"]] = counts.get(message["type"], 0) + 1

    # -- EIR's sequences ---------------------------------------------------
    def validation_probe(self) -> dict[str, Any]:
        """getInfo, getData(1), heartbeat, reset (two replies, 5 s each).

        Returns timings and the probe's replies so tests can assert on them."""
        info = self.request({"type": "getInfo"})[0]
        assert info["type"] == "info", info
        data = self.request({"type": "getData", "payload": {"batch_size": 1}})[0]
        assert data["type"] == "data", data
        beat = self.request({"type": "heartbeat"})[0]
        assert beat == {"type": "heartbeat"}, beat
        start = time.monotonic()
        self.send({"type": "reset"})
        first = self.recv(timeout=5)
        second = self.recv(timeout=5)
        elapsed = time.monotonic() - start
        assert first["type"] == "resetConfirmation", first
        assert second["type"] == "reset", second
        return {
            "info": info,
            "data": data,
            "reset_seconds": elapsed,
            "reset_replies": [first, second],
        }

    def training_pass(self, batch_size: int, max_batches: int = 10**7) -> list[dict]:
        """EIR's training connection after the probe: the samples it received."""
        self.send({"type": "heartbeat"})  # sent, reply never read on purpose
        samples: list[dict] = []
        for _ in range(max_batches):
            batch = self.fetch_batch(batch_size)
            if batch is None:
                return samples
            samples.extend(batch)
        raise AssertionError(f"no terminate after {max_batches} batches")

    def fetch_batch(self, batch_size: int) -> list[dict] | None:
        """One `_fetch_batch` of EIR: None on terminate or an empty payload."""
        for _ in range(1000):
            self.send({"type": "heartbeat"})
            self.send({"type": "getData", "payload": {"batch_size": batch_size}})
            message = self.recv()
            if message["type"] in ("heartbeat", "error"):
                continue
            assert message["type"] == "data", message
            payload = message["payload"]
            if not payload or payload == ["terminate"]:
                return None
            return payload
        raise AssertionError("1000 replies without data")
