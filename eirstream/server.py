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
from dataclasses import dataclass
from http import HTTPStatus
from itertools import count
from typing import Any
from urllib.parse import parse_qs, urlsplit

from eirstream.dask_engine import DaskEngine
from eirstream.engines import DefaultEngine, Engine, ProcessEngine, ThreadEngine
from eirstream.loading import load_configured_source
from eirstream.metrics import ServerMetrics, metrics_available
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
from eirstream.readahead import Lane, SampleProducer
from eirstream.reports import (
    RedactFilter,
    brief,
    describe_close,
    http_response,
    json_response,
    progress_line,
)
from eirstream.resume import Keeper
from eirstream.settings import Settings
from eirstream.stream import SampleStream
from eirstream.streams import DEFAULT_STREAM, NamedStream, Refused, Streams, stream_name

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

TRY_AGAIN_LATER = 1013  # WebSocket close code
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
    """Serves named streams (streams.py) of one source to WebSocket peers:
    `--path` is the default stream, `--path/<name>` the stream `<name>`."""

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
        self._make_stream = SampleStream.maker(
            self.source,
            epochs=settings.epochs,
            shuffle=settings.shuffle,
            seed=settings.seed,
        )
        self.streams = Streams(self._new_stream, settings.max_streams)
        self.default = self.streams.open(DEFAULT_STREAM)
        self.keeper: Keeper | None = None
        if settings.state is not None:
            self.keeper = Keeper(settings, self.source, self.streams)
            for named in self.streams:
                self.keeper.watch(named)
        self.producer = SampleProducer(self._engine(spec, source_settings))
        self.metrics = None
        if metrics_available:
            state = None if self.keeper is None else self.keeper.status
            self.metrics = ServerMetrics(self.streams, self.producer.status, state)
        self.connections: dict[ServerConnection, Connection] = {}
        self._reading = 0  # streams with a connection open
        self.connections_total = 0
        self.started = time.monotonic()
        self._ids = count(1)
        self._server: Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._progress: asyncio.Task[None] | None = None
        self._redact: RedactFilter | None = None

    @property
    def stream(self) -> SampleStream:
        """The default stream (the one at --path itself)."""
        return self.default.stream

    def _new_stream(self, name: str) -> SampleStream:
        """A new named stream of the source, as the settings say."""
        stream = self._make_stream(name)
        if name != DEFAULT_STREAM:
            logger.info("stream %r: opened (stream %d)", name, len(self.streams) + 1)
        return stream

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
        if self.keeper is not None:
            self.keeper.start()
        self.producer.prefetch(self.stream.peek)  # workers start on the first
        if self.metrics is None:
            logger.info(
                "metrics are off: pip install 'eirstream[metrics]' (prometheus_client) "
                "to serve GET /metrics"
            )
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
        if self.keeper is not None:
            self.keeper.close()
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
        """Answer HTTP requests (/healthz, /metrics) and refuse upgrades to a
        path, a stream or without a token this server does not serve; None
        lets the upgrade go on."""
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return json_response(ws, self.health())
        if url.path == "/metrics":
            return self._metrics_response(ws, request, url.query)
        base = self.settings.path
        try:
            name = stream_name(url.path, base)
        except Refused as refused:
            return self._refuse(ws, refused)
        if name is None:
            return ws.respond(
                HTTPStatus.NOT_FOUND,
                f"no WebSocket endpoint at {url.path}; use {base} (the default "
                f"stream) or {base.rstrip('/')}/<name> (a named stream)\n",
            )
        if not self._token_ok(request, url.query):
            logger.warning(
                "%s: rejected, missing or wrong ?token= (HTTP 401)", peer_of(ws)
            )
            return ws.respond(
                HTTPStatus.UNAUTHORIZED, "missing or wrong ?token= in the URL\n"
            )
        try:  # opened by _handle, once the upgrade is through
            self.streams.check_room(name)
        except Refused as refused:
            return self._refuse(ws, refused)
        return None

    def _refuse(self, ws: ServerConnection, refused: Refused) -> Response:
        logger.warning(
            "%s: rejected (HTTP %d): %s", peer_of(ws), refused.status, refused.text
        )
        return ws.respond(refused.status, refused.text + "\n")

    def _token_ok(self, request: Request, query: str) -> bool:
        """No --token, or the token as ?token= or a bearer Authorization."""
        token = self.settings.token
        if token is None:
            return True
        offered = parse_qs(query).get("token", [""])[0]
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and not offered:
            offered = credentials.strip()
        return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode())

    def _metrics_response(
        self, ws: ServerConnection, request: Request, query: str
    ) -> Response:
        if self.metrics is None:
            return ws.respond(
                HTTPStatus.NOT_IMPLEMENTED,
                "metrics are off: pip install 'eirstream[metrics]' "
                "(prometheus_client) and restart the server\n",
            )
        if not self._token_ok(request, query):
            logger.warning(
                "%s: /metrics rejected, missing or wrong token (HTTP 401)",
                peer_of(ws),
            )
            response = ws.respond(
                HTTPStatus.UNAUTHORIZED,
                "/metrics needs the token: an 'Authorization: Bearer <token>' "
                "header or ?token=<token>\n",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        body, content_type = self.metrics.exposition()
        return http_response(ws, body, content_type)

    def briefs(self) -> dict[str, dict[str, Any]]:
        """Each stream in brief, by name (/healthz and the status reply)."""
        return {named.name: brief(named.stream.status()) for named in self.streams}

    def health(self) -> dict[str, Any]:
        """/healthz: up, and each stream in brief (totals over all streams)."""
        streams = self.briefs()
        return {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self.started, 1),
            "open_connections": len(self.connections),
            "samples_served_total": sum(
                one["samples_served_total"] for one in streams.values()
            ),
            "phase": streams[DEFAULT_STREAM]["phase"],
            "streams": streams,
        }

    def server_status(self) -> dict[str, Any]:
        return {
            "connections_total": self.connections_total,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "making": self.producer.status(),
            "max_streams": self.streams.max_streams,
            "state": None if self.keeper is None else self.keeper.status(),
            "streams": self.briefs(),
        }

    async def _report_progress(self, interval: float) -> None:
        """One INFO line per stream that served samples, every `interval`
        seconds."""
        last: dict[str, tuple[int, float]] = {}
        while True:
            for named in self.streams:
                status, now = named.stream.status(), time.monotonic()
                total = status["samples_served_total"]
                before, then = last.get(named.name, (0, self.started))
                rate = (total - before) / max(now - then, 1e-9)
                if total > before and named.name in last:
                    logger.info("%s", progress_line(status, rate))
                last[named.name] = (total, now)
            await asyncio.sleep(interval)

    # -- one connection ------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        named = await self._open_stream(ws)
        if named is None:
            return
        reader = Reader(named, self.producer.lane(named.name))
        conn = Connection(
            next(self._ids),
            named.stream,
            self.dataset_info,
            self.settings.max_batch_size,
            self.server_status,
            lambda: self.producer.broken,
            named.counts,
        )
        if named.stream.open_connections == 1:
            self._reading += 1
        self.connections[ws] = conn
        self.connections_total += 1
        peer = peer_of(ws)
        opened = time.monotonic()
        logger.info("conn#%d %s: opened on stream %r", conn.id, peer, named.name)
        try:
            await self._converse(ws, conn, reader)
        except ConnectionClosed:
            pass
        finally:
            conn.connection_lost()
            del self.connections[ws]
            if not named.stream.open_connections:
                self._reading -= 1
                self.producer.release(reader.lane)
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

    async def _open_stream(self, ws: ServerConnection) -> NamedStream | None:
        """The stream the upgraded request names, made if it is new; None
        (the connection closed) if the room `_check_request` saw went meanwhile."""
        name = stream_name(urlsplit(ws.request.path).path, self.settings.path)
        assert name is not None  # _check_request let only a stream's path through
        try:
            named = self.streams.open(name)
        except Refused as refused:
            logger.warning("%s: %s", peer_of(ws), refused.text)
            await ws.close(TRY_AGAIN_LATER, "too many streams (--max-streams)")
            return None
        if self.keeper is not None and named.stream.listener is None:
            self.keeper.watch(named)  # a new stream
        return named

    async def _converse(
        self, ws: ServerConnection, conn: Connection, reader: Reader
    ) -> None:
        """Feed each message to the protocol core and do what it says,
        until the connection is closed or closing (a closing one's queued
        requests get no replies: none could be sent)."""
        while conn.phase != CLOSED and ws.state is State.OPEN:
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
                reader.arrived = time.perf_counter()
                outputs = conn.receive(raw)
            for output in outputs:
                await self._perform(ws, conn, output, reader)

    async def _perform(
        self, ws: ServerConnection, conn: Connection, out: Output, reader: Reader
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
            counts = reader.named.counts
            try:
                message, _ = await self.producer.message(out.indices, reader.lane)
            except Exception as exc:
                text = f"server failed to make samples: {exc}"
                logger.error("conn#%d: %s", conn.id, text)
                counts.errors += 1
                await ws.send(json.dumps(error(text).message))
                return
            if ws.state is not State.OPEN:  # closing: the reply would not leave,
                return  # so its take is not marked sent (--state keeps it unsent),
                # and the conversation ends (_converse)
            counts.waits.observe(time.perf_counter() - reader.arrived)
            counts.bytes_served += len(message)
            reader.named.stream.sent(conn.id)
            if self.keeper is not None:  # on file before the bytes leave
                self.keeper.sent(reader.named)
            await ws.send(fragmented(message), text=True)  # UTF-8 bytes, text frames
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "conn#%d: sent %d samples %s",
                    conn.id,
                    len(out.indices),
                    index_ranges(out.indices),
                )
            self.producer.prefetch(reader.named.stream.peek, reader.lane, self._reading)
        elif isinstance(out, Close):
            await ws.close(out.code, out.reason)


@dataclass
class Reader:
    """What a connection's handler keeps of its stream: the stream, its
    read-ahead, and when the message being answered arrived."""

    named: NamedStream
    lane: Lane
    arrived: float = 0.0


def peer_of(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
