"""The asyncio layer on the `websockets` library: sockets, HTTP checks
(health, path, token), logging, shutdown.

`StreamServer` feeds each message to the protocol core (`Connection` in
protocol.py, no I/O) and does what the core says. The stream (cursor, reset,
validation ids) is `SampleStream` (stream.py); samples are made ahead of
need by `SampleProducer` (readahead.py) on an engine (engines.py, or
dask_engine.py for a cluster); they come from a `SampleSource` (sources.py)
loaded by loading.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from itertools import count
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from eirstream.dask_engine import DaskEngine
from eirstream.engines import DefaultEngine, Engine, ProcessEngine, ThreadEngine
from eirstream.loading import load_configured_source
from eirstream.protocol import (
    AWAITING_HANDSHAKE,
    CLOSED,
    GOING_AWAY,
    HEARTBEAT_PAIRING,
    Close,
    Connection,
    Output,
    Reply,
    SendSamples,
    error,
    index_ranges,
)
from eirstream.readahead import SampleProducer
from eirstream.settings import Settings
from eirstream.stream import SampleStream

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
    from websockets.protocol import State
except ImportError:  # main() says what to install, in one line
    websockets_missing = True
else:
    websockets_missing = False

logger = logging.getLogger("eirstream.server")

FRAGMENT = 2**18  # larger data replies go out in frames of this size


def fragmented(message: bytes) -> bytes | AsyncIterator[memoryview]:
    """`message` as it should be given to `ws.send(..., text=True)`.

    A large reply (thousands of samples, megabytes) written in one go holds
    the event loop for as long as the kernel takes to swallow it: tens of
    milliseconds in which no other peer is answered. Above FRAGMENT bytes it
    is sent as a fragmented WebSocket message (continuation frames; clients
    reassemble it) with a yield to the loop between fragments.
    """
    if len(message) <= FRAGMENT:
        return message
    return _fragments(memoryview(message))


async def _fragments(view: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(view), FRAGMENT):
        if start:
            await asyncio.sleep(0)
        yield view[start : start + FRAGMENT]


class StreamServer:
    """Serves one `SampleStream` to every WebSocket peer."""

    def __init__(self, settings: Settings) -> None:
        """ValueError (one line) when the source or the cluster is unusable."""
        self.settings = settings
        spec, source_settings = settings.source, settings.source_settings()
        self.source = load_configured_source(settings)
        self.dataset_info = self.source.dataset_info()
        if self.source.num_samples is None and (
            settings.shuffle or settings.epochs != 1
        ):
            raise ValueError(
                f"--shuffle and --epochs need a source with an end, and {spec} "
                "has none: give --max-iterations N (samples per epoch)"
            )
        self.stream = SampleStream.for_source(
            self.source,
            epochs=settings.epochs,
            shuffle=settings.shuffle,
            seed=settings.seed,
        )
        self.producer = SampleProducer(self._engine(spec, source_settings))
        self.connections: dict[ServerConnection, Connection] = {}
        self.connections_total = 0
        self.started = time.monotonic()
        self._ids = count(1)
        self._server: Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._progress: asyncio.Task[None] | None = None
        self._redact: RedactFilter | None = None

    def _engine(self, spec: str, source_settings: dict[str, Any]) -> Engine:
        """Where samples are made, as the settings say."""
        settings = self.settings
        if settings.cluster:
            return DaskEngine(settings.cluster, spec, source_settings)
        if settings.workers_auto:
            return DefaultEngine(self.source, spec, source_settings, settings.workers)
        if settings.workers:
            return ProcessEngine(spec, source_settings, settings.workers)
        return ThreadEngine(self.source)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Listen. OSError: cannot bind; ValueError: unusable TLS files."""
        s = self.settings
        tls = None
        if s.certfile:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                tls.load_cert_chain(s.certfile, s.keyfile)
            except (OSError, ssl.SSLError) as exc:
                files = f"--certfile {s.certfile!r}" + (
                    f" / --keyfile {s.keyfile!r}" if s.keyfile else ""
                )
                raise ValueError(
                    f"cannot use {files} for TLS: {exc.strerror or exc}"
                ) from None
        if s.token:
            self._redact = RedactFilter(s.token)
            logging.getLogger("websockets.server").addFilter(self._redact)
        try:
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
        except BaseException:
            if self._redact is not None:
                logging.getLogger("websockets.server").removeFilter(self._redact)
            raise
        self.producer.prefetch(self.stream.peek)  # workers start on the first
        self._reaper = asyncio.create_task(self._reap_stuck_closes())
        if self.settings.progress_interval > 0 and logger.isEnabledFor(logging.INFO):
            self._progress = asyncio.create_task(
                self._report_progress(self.settings.progress_interval)
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
        for task in (self._reaper, self._progress):
            if task is not None:
                task.cancel()
        peers = list(self.connections)
        if peers:
            closing = [
                asyncio.create_task(ws.close(GOING_AWAY, reason)) for ws in peers
            ]
            _, pending = await asyncio.wait(closing, timeout=1.0)
            # A peer that does not read never sees the close frame (its send
            # buffer is full): drop its TCP connection instead of waiting.
            for ws in peers:
                if ws.state is not State.CLOSED:
                    ws.transport.abort()
            if pending:
                await asyncio.wait(pending, timeout=0.2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 0.3)
        self.producer.close()
        if self._redact is not None:
            logging.getLogger("websockets.server").removeFilter(self._redact)
        self._server = None

    async def _reap_stuck_closes(self) -> None:
        """Drop connections stuck half-closed.

        When websockets itself fails a connection (a message over
        --max-message-size: 1009; invalid UTF-8: 1007) it sends the close frame
        and waits for the peer to close TCP, without a time limit; a peer that
        never does (websocket-client leaves the socket open after it has read
        the server's close frame) would hold the connection forever.
        """
        closing_since: dict[ServerConnection, float] = {}
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for ws in list(self.connections):
                if ws.state is not State.CLOSING:
                    closing_since.pop(ws, None)
                elif now - closing_since.setdefault(ws, now) >= (ws.close_timeout or 1):
                    ws.transport.abort()
            for ws in [ws for ws in closing_since if ws not in self.connections]:
                del closing_since[ws]

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
            "uptime_s": round(time.monotonic() - self.started, 1),
            "making": self.producer.status(),
        }

    async def _report_progress(self, interval: float) -> None:
        """One INFO line every `interval` seconds while samples flow."""
        last_total = self.stream.status()["samples_served_total"]
        last_time = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            status, now = self.stream.status(), time.monotonic()
            total = status["samples_served_total"]
            rate = (total - last_total) / max(now - last_time, 1e-9)
            if total > last_total:
                logger.info("%s", progress_line(status, rate))
            last_total, last_time = total, now

    # -- one connection ------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(
            next(self._ids),
            self.stream,
            self.dataset_info,
            self.settings.max_batch_size,
            self.server_status,
            lambda: self.producer.broken,
        )
        self.connections[ws] = conn
        self.connections_total += 1
        peer = peer_of(ws)
        opened = time.monotonic()
        logger.info("conn#%d %s: opened", conn.id, peer)
        try:
            while conn.phase != CLOSED:
                if conn.phase == AWAITING_HANDSHAKE:
                    timeout: float | None = self.settings.handshake_timeout
                elif conn.heartbeat_pending:
                    timeout = HEARTBEAT_PAIRING
                else:
                    timeout = None  # a training client may not write for minutes
                try:  # asyncio.timeout, not wait_for: no task per message
                    async with asyncio.timeout(timeout):
                        raw = await ws.recv()
                except TimeoutError:
                    if conn.phase == AWAITING_HANDSHAKE:
                        outputs = conn.handshake_timed_out(timeout or 0)
                    else:
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
                message, _ = await self.producer.message(out.indices)
            except Exception as exc:
                text = f"server failed to make samples: {exc}"
                logger.error("conn#%d: %s", conn.id, text)
                await ws.send(json.dumps(error(text).message))
                return
            await ws.send(fragmented(message), text=True)  # UTF-8 bytes, text frames
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "conn#%d: sent %d samples %s",
                    conn.id,
                    len(out.indices),
                    index_ranges(out.indices),
                )
            self.producer.prefetch(self.stream.peek)
        elif isinstance(out, Close):
            await ws.close(out.code, out.reason)


def peer_of(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def describe_close(ws: ServerConnection) -> str:
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    if sent is not None and not ws.protocol.close_rcvd_then_sent:
        reason = f" {sent.reason!r}" if sent.reason else ""
        return f"closed by the server: code {sent.code}{reason}"
    if received is None:
        return "no close frame from the client (normal for DataLoader workers)"
    reason = f" {received.reason!r}" if received.reason else ""
    return f"code {received.code}{reason}"


class RedactFilter(logging.Filter):
    """Replaces a secret (and its URL-encoded form) in log records.

    websockets logs request lines ("GET /ws?token=...") at DEBUG level."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secrets = sorted({secret, quote(secret, safe=""), quote_plus(secret)})

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "<token>")
            record.msg, record.args = message, None
        return True


def progress_line(status: dict[str, Any], rate: float) -> str:
    """The periodic progress line, from the stream's status and a rate."""
    served, total = status["samples_served_in_pass"], status["samples_served_total"]
    text = f"progress: {served:,} samples served in this pass"
    remaining = status["remaining_iterations"]
    if remaining is not None:
        whole = served + remaining
        percent = 100 * served / whole if whole else 100.0
        left = f"{remaining / rate:,.0f} s left" if rate > 0 else "time left unknown"
        text += f" ({percent:.1f}% of {whole:,}, {left})"
    streaming = status["connections_in_pass"]
    return (
        f"{text}, {total:,} in total; {rate:,.0f} samples/s; "
        f"{streaming} connection{'' if streaming == 1 else 's'} streaming"
    )
