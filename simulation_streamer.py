"""WebSocket data server for EIR's streaming mode (`eirtrain` with ws:// sources).

Run `python simulation_streamer.py --help`. The file has three layers:

1. The protocol core, `Connection`: no I/O, plain method calls. It turns one
   incoming message into a list of things to do (`Reply`, `SendSamples`,
   `Close`). The whole protocol is the two tables below it.
2. `SampleProducer`: turns stream indices into JSON-encoded samples, in worker
   processes and ahead of demand, so the event loop never generates data.
3. `StreamServer` and `main`: the asyncio layer on the `websockets` library,
   HTTP checks (health, path, token), logging, shutdown, CLI.

The stream itself (cursor, reset, validation ids) is `SampleStream` in
data_simulator.py; the samples come from a `SampleSource` (by default the
tutorial's `SimulatedHealthData`, or `--source module:factory`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hmac
import importlib
import json
import logging
import multiprocessing
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from itertools import count
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from data_simulator import SampleSource, SampleStream

PROTOCOL_VERSION = "1.0"
DEFAULT_SOURCE = "data_simulator:SimulatedHealthData"

logger = logging.getLogger("simulation_streamer")

# =============================================================================
# The protocol: connection phases, and what each phase accepts.
#
# Rules this table keeps (every transition goes through Connection._enter):
#  1. The first message must be a valid handshake. Anything else, or a wrong
#     version, gets an `error` naming the problem and the connection is closed
#     with 1008 (policy violation).
#  2. Once READY, every request gets exactly one reply, in order, except:
#     `reset` gets two (a `resetConfirmation`, then a `reset` notice, both to
#     the requester only), and a `heartbeat` followed directly by `getData` is
#     answered by the data reply alone (see HEARTBEAT_PAIRING below).
#  3. A malformed or unknown request in READY gets an `error` reply and
#     changes nothing: the connection, the stream position and the
#     validation ids stay exactly as they were.
#  4. Nothing is ever sent to a connection that did not ask for it.
#  5. Exhausting the stream never closes the connection: every `getData`
#     gets ["terminate"] until a reset; the client closes when it is done.
# =============================================================================
AWAITING_HANDSHAKE, READY, CLOSED = "awaiting-handshake", "ready", "closed"

PHASES: dict[str, dict[str, str]] = {  # phase -> {event -> next phase}
    AWAITING_HANDSHAKE: {"handshake": READY, "bad-message": CLOSED, "lost": CLOSED},
    READY: {"request": READY, "bad-message": READY, "lost": CLOSED},
    CLOSED: {},
}

REQUESTS: dict[str, str] = {  # message type (in READY) -> handler method
    "getInfo": "_on_get_info",
    "getData": "_on_get_data",
    "heartbeat": "_on_heartbeat",
    "reset": "_on_reset",
    "status": "_on_status",
    "setValidationIds": "_on_set_validation_ids",
    "handshake": "_on_repeated_handshake",
}

# EIR's training loop sends `heartbeat` and `getData` back to back for every
# batch and reads one reply, skipping heartbeats: answered one-for-one, the
# unread replies grow by one batch per fetch until the socket buffers fill and
# the run stalls. A heartbeat that is followed within this many seconds by a
# `getData` is answered by the data reply alone; any other next message (or
# silence) gets the heartbeat reply first, in order.
HEARTBEAT_PAIRING = 0.02

POLICY_VIOLATION = 1008
GOING_AWAY = 1001
EXCERPT = 80  # characters of an offending value quoted back in an error


@dataclass(frozen=True)
class Reply:
    """Send this message (a JSON object) to the peer."""

    message: dict[str, Any]


@dataclass(frozen=True)
class SendSamples:
    """Send a `data` reply holding the samples of these stream indices."""

    indices: list[int]


@dataclass(frozen=True)
class Close:
    """Close the connection with this code and reason."""

    code: int
    reason: str


Output = Reply | SendSamples | Close


class BadMessage(Exception):
    """A request the protocol rejects; the text goes back in an `error` reply."""


def excerpt(value: Any) -> str:
    """A short printable rendering of an offending value."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    text = repr(text) if isinstance(value, str) else text
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def error(message: str) -> Reply:
    return Reply({"type": "error", "payload": {"message": message}})


TERMINATE = Reply({"type": "data", "payload": ["terminate"]})
HEARTBEAT = Reply({"type": "heartbeat"})


class Connection:
    """One peer's conversation, without I/O: messages in, outputs out.

    `receive(text)` handles one incoming message; `flush_heartbeat()` is called
    by the I/O layer when a held heartbeat's pairing window runs out;
    `connection_lost()` when the socket is gone.
    """

    def __init__(
        self,
        conn_id: int,
        stream: SampleStream,
        dataset_info: dict[str, Any],
        max_batch_size: int = 10_000,
        server_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.id = conn_id
        self.phase = AWAITING_HANDSHAKE
        self.stream = stream
        self.dataset_info = dataset_info
        self.max_batch_size = max_batch_size
        self.server_status = server_status
        self.heartbeat_pending = False
        self.samples_served = 0
        self.requests = 0
        self.errors = 0
        self.worker_id: Any = None
        self.warned_batch_size = False
        stream.connect(conn_id)

    # -- the one place that changes phase ---------------------------------
    def _enter(self, event: str) -> None:
        allowed = PHASES[self.phase]
        if event not in allowed:
            raise RuntimeError(f"no transition from {self.phase!r} on {event!r}")
        self.phase = allowed[event]
        if self.phase == CLOSED:
            self.heartbeat_pending = False
            self.stream.disconnect(self.id)

    # -- entry points ------------------------------------------------------
    def receive(self, raw: str | bytes) -> list[Output]:
        if self.phase == CLOSED:
            return []
        outputs: list[Output] = []
        owed_heartbeat = self.heartbeat_pending  # held back by the previous message
        self.heartbeat_pending = False
        try:
            message = parse_message(raw)
            kind = message["type"]
            if owed_heartbeat and not (kind == "getData" and self.phase == READY):
                outputs.append(HEARTBEAT)
            owed_heartbeat = False  # paid above, or answered by the data reply
            if self.phase == AWAITING_HANDSHAKE:
                outputs += self._on_handshake(message)
                self._enter("handshake")
            else:
                handler = REQUESTS.get(kind)
                if handler is None:
                    raise BadMessage(
                        f"unknown message type {excerpt(kind)}; this server "
                        f"accepts: {', '.join(sorted(REQUESTS))}"
                    )
                self.requests += 1
                outputs += getattr(self, handler)(payload_of(message))
                self._enter("request")
        except BadMessage as problem:
            self.errors += 1
            if owed_heartbeat:
                outputs.append(HEARTBEAT)
            outputs.append(error(str(problem)))
            if self.phase == AWAITING_HANDSHAKE:
                outputs.append(Close(POLICY_VIOLATION, "handshake required"))
            self._enter("bad-message")
        return outputs

    def flush_heartbeat(self) -> list[Output]:
        if not self.heartbeat_pending:
            return []
        self.heartbeat_pending = False
        return [HEARTBEAT]

    def connection_lost(self) -> None:
        if self.phase != CLOSED:
            self._enter("lost")

    # -- handlers: each returns its replies or raises BadMessage ------------
    def _on_handshake(self, message: dict[str, Any]) -> list[Output]:
        if message["type"] != "handshake":
            raise BadMessage(
                f"expected a handshake first, got {excerpt(message['type'])}; "
                f'send {{"type": "handshake", "version": "{PROTOCOL_VERSION}"}}'
            )
        if "version" not in message:
            raise BadMessage(
                f"handshake has no 'version'; this server speaks {PROTOCOL_VERSION}"
            )
        if message["version"] != PROTOCOL_VERSION:
            raise BadMessage(
                f"unsupported protocol version {excerpt(message['version'])}; "
                f"this server speaks {PROTOCOL_VERSION}"
            )
        self.worker_id = message.get("worker_id")
        return [Reply({"type": "handshake", "version": PROTOCOL_VERSION})]

    def _on_repeated_handshake(self, payload: dict[str, Any]) -> list[Output]:
        raise BadMessage("handshake already done on this connection; ignored")

    def _on_get_info(self, payload: dict[str, Any]) -> list[Output]:
        return [Reply({"type": "info", "payload": self.dataset_info})]

    def _on_get_data(self, payload: dict[str, Any]) -> list[Output]:
        if "batch_size" not in payload:
            raise BadMessage(
                "getData needs payload.batch_size (a positive integer), "
                f"got payload {excerpt(payload)}"
            )
        size = payload["batch_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise BadMessage(
                f"batch_size must be a positive integer, got {excerpt(size)}"
            )
        outputs: list[Output] = []
        if size > self.max_batch_size:
            if not self.warned_batch_size:
                self.warned_batch_size = True
                logger.warning(
                    "conn#%d asked for batch_size %d; serving %d (--max-batch-size)",
                    self.id,
                    size,
                    self.max_batch_size,
                )
            size = self.max_batch_size
        indices = self.stream.take(self.id, size)
        if indices is None:
            return [*outputs, TERMINATE]
        self.samples_served += len(indices)
        return [*outputs, SendSamples(indices)]

    def _on_heartbeat(self, payload: dict[str, Any]) -> list[Output]:
        self.heartbeat_pending = True
        return []

    def _on_reset(self, payload: dict[str, Any]) -> list[Output]:
        outcome = self.stream.reset(self.id)
        if outcome.rewound:
            text = "stream rewound to sample 0"
        else:
            text = (
                "other connections are mid-pass: joined the pass in progress at "
                f"position {outcome.position} ({outcome.returned} sample(s) "
                "returned to the front)"
            )
        return [
            Reply({"type": "resetConfirmation", "payload": {"message": text}}),
            Reply({"type": "reset", "payload": {"message": text}}),
        ]

    def _on_status(self, payload: dict[str, Any]) -> list[Output]:
        status = self.stream.status()
        if self.server_status is not None:
            status.update(self.server_status())
        status["connection"] = {"id": self.id, "samples_served": self.samples_served}
        return [Reply({"type": "status", "payload": status})]

    def _on_set_validation_ids(self, payload: dict[str, Any]) -> list[Output]:
        ids = payload.get("validation_ids")
        if not isinstance(ids, list):
            raise BadMessage(
                "setValidationIds needs payload.validation_ids (a list of sample "
                f"id strings), got {excerpt(ids)}"
            )
        for position, value in enumerate(ids):
            if not isinstance(value, str):
                raise BadMessage(
                    f"validation_ids[{position}] must be a string, got {excerpt(value)}"
                )
        received, known = self.stream.set_validation_ids(ids)
        text = (
            f"Received {received} validation ids, {known} of them produced by this "
            "stream; they will not be streamed for training"
        )
        return [
            Reply({"type": "validationIdsConfirmation", "payload": {"message": text}})
        ]


def parse_message(raw: str | bytes) -> dict[str, Any]:
    """Decode one frame into a JSON object with a string "type", or BadMessage."""
    if isinstance(raw, bytes):
        raise BadMessage(
            f"binary frames are not supported (got {len(raw)} bytes); "
            "send JSON objects as text frames"
        )
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise BadMessage(f"message is not valid JSON: {excerpt(raw)}") from None
    if not isinstance(message, dict):
        raise BadMessage(
            f"message must be a JSON object, got {type(message).__name__} "
            f"{excerpt(message)}"
        )
    if "type" not in message:
        raise BadMessage(f'message has no "type": {excerpt(message)}')
    if not isinstance(message["type"], str):
        raise BadMessage(
            f'"type" must be a string, got {type(message["type"]).__name__} '
            f"{excerpt(message['type'])}"
        )
    return message


def payload_of(message: dict[str, Any]) -> dict[str, Any]:
    """The message's payload; absent or null counts as {}."""
    payload = message.get("payload")
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise BadMessage(
            f'"payload" of {message["type"]} must be a JSON object, got '
            f"{type(payload).__name__} {excerpt(payload)}"
        )
    return payload


# =============================================================================
# Samples: made from indices by the source, in worker processes, ahead of need.
# =============================================================================
def load_source(spec: str, settings: dict[str, Any]) -> SampleSource:
    """Build a source from "module:factory", calling factory(**settings).

    The factory gets seed, sequence_length and max_iterations as keyword
    arguments; one that does not need them can take **kwargs and ignore them.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--source must look like module:factory, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load --source {spec!r}: {exc}") from exc
    source = factory(**settings)
    missing = [
        name
        for name in ("dataset_info", "sample", "index_of", "num_samples")
        if not hasattr(source, name)
    ]
    if missing:
        raise ValueError(
            f"--source {spec!r} made a {type(source).__name__} without "
            f"{', '.join(missing)}; see SampleSource in data_simulator.py"
        )
    return source


def encode_samples(source: SampleSource, indices: Sequence[int]) -> list[str]:
    """JSON text of each sample, ready to be joined into a `data` reply."""
    many = getattr(source, "samples", None)
    samples = many(indices) if many else [source.sample(i) for i in indices]
    return [json.dumps(s, separators=(",", ":")) for s in samples]


_worker_source: SampleSource | None = None


def _worker_init(spec: str, settings: dict[str, Any]) -> None:
    global _worker_source
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _worker_source = load_source(spec, settings)


def _worker_encode(indices: list[int]) -> list[str]:
    assert _worker_source is not None
    return encode_samples(_worker_source, indices)


class SampleProducer:
    """Encoded samples for stream indices, made off the event loop.

    With workers, chunks of indices go to a process pool, and `prefetch` starts
    the next indices of the stream before anyone asks. Since a sample is a
    function of its index alone, a prefetched sample is valid whenever that
    index is served, including after a rewind. Without workers (workers=0),
    samples are made in the event loop in small chunks with a yield between
    them, so a large batch still does not freeze other peers for long.
    """

    IN_LOOP_CHUNK = 32

    def __init__(
        self,
        source: SampleSource,
        spec: str,
        settings: dict[str, Any],
        workers: int,
        read_ahead: int = 1024,
    ) -> None:
        self.source = source
        self.workers = workers
        self.read_ahead = read_ahead
        self._spec, self._settings = spec, settings
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pending: dict[int, tuple[asyncio.Future[list[str]], int]] = {}
        if workers > 0:
            self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        method = (
            "forkserver"
            if "forkserver" in multiprocessing.get_all_start_methods()
            else "spawn"
        )
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_worker_init,
            initargs=(self._spec, self._settings),
        )

    async def encode(self, indices: list[int]) -> list[str]:
        if self._pool is None:
            out: list[str] = []
            for start in range(0, len(indices), self.IN_LOOP_CHUNK):
                if start:
                    await asyncio.sleep(0)
                chunk = indices[start : start + self.IN_LOOP_CHUNK]
                out += encode_samples(self.source, chunk)
            return out
        self._submit([i for i in indices if i not in self._pending])
        entries = [self._pending.pop(i) for i in indices]
        try:
            return [(await future)[position] for future, position in entries]
        except concurrent.futures.BrokenExecutor:
            logger.error("a sample worker died; starting a new pool")
            self._restart_pool()
            raise

    def prefetch(self, upcoming: list[int]) -> None:
        """Start making these indices now (no-op without workers)."""
        if self._pool is None:
            return
        self._submit([i for i in upcoming if i not in self._pending])
        excess = len(self._pending) - 4 * self.read_ahead
        for index in list(self._pending)[: max(excess, 0)]:
            del self._pending[index]  # oldest first; a request re-submits if needed

    def _submit(self, indices: list[int]) -> None:
        if not indices:
            return
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        size = min(64, max(8, -(-len(indices) // self.workers)))
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            future = loop.run_in_executor(self._pool, _worker_encode, chunk)
            future.add_done_callback(_consume_exception)
            for position, index in enumerate(chunk):
                self._pending[index] = (future, position)

    def _restart_pool(self) -> None:
        old, self._pool = self._pool, self._new_pool()
        self._pending.clear()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A prefetched chunk may fail with nobody awaiting it; don't warn about that.
    if not future.cancelled():
        future.exception()


# =============================================================================
# The asyncio layer: sockets, HTTP checks, logging, shutdown.
# =============================================================================
@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/ws"
    source: str = DEFAULT_SOURCE
    max_iterations: int | None = None
    sequence_length: int = 64
    seed: int = 0
    workers: int = 0
    max_batch_size: int = 10_000
    max_message_size: int = 16 * 2**20
    token: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    ping_interval: float | None = None


class StreamServer:
    """Serves one `SampleStream` to every WebSocket peer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        source_settings = {
            "seed": settings.seed,
            "sequence_length": settings.sequence_length,
            "max_iterations": settings.max_iterations,
        }
        self.source = load_source(settings.source, source_settings)
        self.dataset_info = self.source.dataset_info()
        self.stream = SampleStream(self.source.num_samples)
        self.producer = SampleProducer(
            self.source, settings.source, source_settings, settings.workers
        )
        self.connections: dict[ServerConnection, Connection] = {}
        self.connections_total = 0
        self.started = time.monotonic()
        self._ids = count(1)
        self._server: Server | None = None

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        tls = None
        if s.certfile:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(s.certfile, s.keyfile)
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            ssl=tls,
            process_request=self._check_request,
            compression=None,
            max_size=s.max_message_size,
            ping_interval=s.ping_interval,
            ping_timeout=None if s.ping_interval is None else 3600,
            close_timeout=1,
            logger=logging.getLogger("websockets.server"),
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.certfile else "ws"
        host = self.settings.host
        host = (
            "localhost" if host in ("127.0.0.1", "localhost", "0.0.0.0", "::") else host
        )
        token = "?token=<your token>" if self.settings.token else ""
        return f"{scheme}://{host}:{self.port}{self.settings.path}{token}"

    async def stop(self, reason: str = "server shutting down") -> None:
        """Close every connection with 1001, stop listening, stop the workers."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        peers = list(self.connections)
        if peers:
            await asyncio.wait(
                [asyncio.create_task(ws.close(GOING_AWAY, reason)) for ws in peers],
                timeout=1.5,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 0.3)
        self.producer.close()
        self._server = None

    # -- HTTP, before any upgrade ------------------------------------------
    def _check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            body = json.dumps(self.health())
            response = ws.respond(HTTPStatus.OK, body + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if url.path != self.settings.path:
            return ws.respond(
                HTTPStatus.NOT_FOUND,
                f"no WebSocket endpoint at {url.path}; use {self.settings.path}\n",
            )
        if self.settings.token is not None:
            offered = parse_qs(url.query).get("token", [""])[0]
            if not hmac.compare_digest(
                offered.encode("utf-8", "replace"), self.settings.token.encode()
            ):
                logger.warning(
                    "%s: rejected, missing or wrong ?token= (HTTP 401)", peer_of(ws)
                )
                return ws.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong ?token= in the URL\n"
                )
        return None

    def health(self) -> dict[str, Any]:
        status = self.stream.status()
        return {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self.started, 1),
            "open_connections": status["open_connections"],
            "samples_served_total": status["samples_served_total"],
            "phase": status["phase"],
        }

    def server_status(self) -> dict[str, Any]:
        return {
            "connections_total": self.connections_total,
            "workers": self.settings.workers,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    # -- one connection ------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(
            next(self._ids),
            self.stream,
            self.dataset_info,
            self.settings.max_batch_size,
            self.server_status,
        )
        self.connections[ws] = conn
        self.connections_total += 1
        peer = peer_of(ws)
        opened = time.monotonic()
        logger.info("conn#%d %s: opened", conn.id, peer)
        try:
            while conn.phase != CLOSED:
                try:
                    if conn.heartbeat_pending:
                        raw = await asyncio.wait_for(ws.recv(), HEARTBEAT_PAIRING)
                    else:
                        raw = await ws.recv()
                except TimeoutError:
                    outputs = conn.flush_heartbeat()
                else:
                    outputs = conn.receive(raw)
                for output in outputs:
                    await self._perform(ws, conn, output)
        except ConnectionClosed:
            pass
        finally:
            conn.connection_lost()
            del self.connections[ws]
            logger.info(
                "conn#%d %s: closed (%s) after %.1fs; %d samples served, "
                "%d requests, %d errors",
                conn.id,
                peer,
                describe_close(ws),
                time.monotonic() - opened,
                conn.samples_served,
                conn.requests,
                conn.errors,
            )

    async def _perform(
        self, ws: ServerConnection, conn: Connection, out: Output
    ) -> None:
        if isinstance(out, Reply):
            if out.message["type"] == "error":
                logger.info(
                    "conn#%d: error reply: %s",
                    conn.id,
                    out.message["payload"]["message"],
                )
            await ws.send(json.dumps(out.message))
        elif isinstance(out, SendSamples):
            try:
                encoded = await self.producer.encode(out.indices)
            except Exception as exc:
                logger.exception("conn#%d: could not make samples", conn.id)
                await ws.send(
                    json.dumps(error(f"server failed to make samples: {exc}").message)
                )
                return
            await ws.send('{"type":"data","payload":[' + ",".join(encoded) + "]}")
            self.producer.prefetch(self.stream.peek(self.producer.read_ahead))
        elif isinstance(out, Close):
            await ws.close(out.code, out.reason)


def peer_of(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def describe_close(ws: ServerConnection) -> str:
    code = ws.close_code
    if code is None or code == 1006:
        return "no close frame from the client (normal for DataLoader workers)"
    reason = f" {ws.close_reason!r}" if ws.close_reason else ""
    return f"code {code}{reason}"


# =============================================================================
# Command line
# =============================================================================
def env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"error: {name} must be an integer, got {value!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, str]:
    parser = argparse.ArgumentParser(
        description="Stream simulated health data (or your own) to EIR's eirtrain "
        "over WebSocket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 serves other machines",
    )
    parser.add_argument(
        "--port", type=nonnegative_int, default=8000, help="TCP port (0: any free port)"
    )
    parser.add_argument(
        "--path",
        default="/ws",
        help="WebSocket path (the path of the URL in the configs)",
    )
    parser.add_argument(
        "--max-iterations",
        type=nonnegative_int,
        default=env_int("MAX_ITERATIONS", None),
        help="samples in one pass of the stream, then 'terminate' "
        "(env MAX_ITERATIONS; default: unbounded)",
    )
    parser.add_argument(
        "--sequence-length",
        type=positive_int,
        default=env_int("SEQUENCE_LENGTH", 64),
        help="HR readings per trace (env SEQUENCE_LENGTH)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sample k is a function of (seed, k)"
    )
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help="module:factory that builds the sample source",
    )
    parser.add_argument(
        "--workers",
        type=nonnegative_int,
        default=os.cpu_count() or 1,
        help="processes that generate samples (0: generate in the server process)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=10_000,
        help="larger getData requests are served this many",
    )
    parser.add_argument(
        "--max-message-size",
        type=positive_int,
        default=16 * 2**20,
        help="largest incoming message in bytes; a larger one closes the "
        "connection with 1009",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("EIR_STREAM_TOKEN") or None,
        help="require ?token=TOKEN in the URL (env EIR_STREAM_TOKEN)",
    )
    parser.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
    parser.add_argument("--keyfile", help="TLS private key (PEM) for --certfile")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        help="send keepalive pings this often, in seconds (default: off, since EIR "
        "answers pings only when it reads)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if not args.path.startswith("/"):
        parser.error(f"--path must start with '/', got {args.path!r}")
    settings = Settings(
        host=args.host,
        port=args.port,
        path=args.path,
        source=args.source,
        max_iterations=args.max_iterations,
        sequence_length=args.sequence_length,
        seed=args.seed,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        max_message_size=args.max_message_size,
        token=args.token,
        certfile=args.certfile,
        keyfile=args.keyfile,
        ping_interval=args.ping_interval,
    )
    return settings, args.log_level


async def run(
    settings: Settings, ready: Callable[[StreamServer], None] | None = None
) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit status."""
    try:
        server = StreamServer(settings)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    try:
        await server.start()
    except OSError as exc:
        server.producer.close()
        logger.error(
            "cannot listen on %s:%s: %s",
            settings.host,
            settings.port,
            exc.strerror or exc,
        )
        return 1
    if (
        settings.host not in ("127.0.0.1", "localhost", "::1")
        and settings.token is None
    ):
        logger.warning(
            "listening on %s without --token: anyone who can reach this port "
            "can read the data",
            settings.host,
        )
    bound = settings.max_iterations
    logger.info(
        "listening; put this in input_source/output_source: %s "
        "(%s, sequence length %d, seed %d, workers %d)",
        server.url,
        "unbounded stream" if bound is None else f"{bound} samples per pass",
        settings.sequence_length,
        settings.seed,
        settings.workers,
    )
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Left installed until the process exits: a second Ctrl-C during
        # shutdown must not turn into a KeyboardInterrupt traceback.
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    open_now = len(server.connections)
    await server.stop()
    logger.info(
        "stopped: %d connections served (%d closed at shutdown), %d samples served",
        server.connections_total,
        open_now,
        server.stream.status()["samples_served_total"],
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings, log_level = parse_args(argv)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if log_level != "debug":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
