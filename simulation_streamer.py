"""WebSocket data server for EIR's streaming mode (`eirtrain` with ws:// sources).

Run `python simulation_streamer.py --help`. This file has two layers:

1. `StreamServer`: the asyncio layer on the `websockets` library: sockets,
   HTTP checks (health, path, token), logging, shutdown. It feeds each
   message to the protocol core and does what the core says.
2. The command line: `parse_args`, `run`, `main`.

Every other layer lives in a module of its own: the protocol core, without
I/O, is `Connection` in stream_protocol.py (its two tables are the whole
protocol); the stream (cursor, reset, validation ids) is `SampleStream` in
data_simulator.py; samples are made ahead of need by `SampleProducer`
(sample_producer.py) on an engine (local processes, a thread, or a Dask
cluster: dask_engine.py); they come from a `SampleSource` (sample_sources.py),
by default the tutorial's `SimulatedHealthData`, or `--source module:factory`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from itertools import count
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from data_simulator import SampleStream
from sample_producer import (
    DefaultEngine,
    Engine,
    ProcessEngine,
    SampleProducer,
    ThreadEngine,
)
from sample_sources import DATASET_SOURCE, load_checked_source, load_dataset_source
from stream_protocol import (
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

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
    from websockets.protocol import State
except ImportError:  # main() says what to install, in one line
    websockets_missing = True
else:
    websockets_missing = False

logger = logging.getLogger("simulation_streamer")

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


# =============================================================================
# The asyncio layer: sockets, HTTP checks, logging, shutdown.
# =============================================================================
@dataclass
class Settings:
    """What the server runs with: the parsed command line (see `parse_args`,
    which owns every default)."""

    host: str
    port: int
    path: str
    source: str
    dataset: str | None  # a spec file: the source is dataset_source's
    shuffle: bool
    epochs: int | None  # epochs in a pass; None: endless
    max_iterations: int | None
    sequence_length: int
    seed: int
    workers: int
    workers_auto: bool  # --workers not given: one per core, or a thread
    cluster: str | None
    max_batch_size: int
    max_message_size: int
    token: str | None
    certfile: str | None
    keyfile: str | None
    ping_interval: float | None
    handshake_timeout: float
    progress_interval: float
    log_level: str

    def source_settings(self) -> dict[str, Any]:
        """The keyword arguments a source factory gets (and `dataset`, the
        spec's absolute path or URL, for dataset_source's)."""
        settings: dict[str, Any] = {
            "seed": self.seed,
            "sequence_length": self.sequence_length,
            "max_iterations": self.max_iterations,
        }
        if self.dataset is not None:
            local = "://" not in self.dataset
            settings["dataset"] = (
                os.path.abspath(self.dataset) if local else self.dataset
            )
        return settings


class StreamServer:
    """Serves one `SampleStream` to every WebSocket peer."""

    def __init__(self, settings: Settings) -> None:
        """ValueError (one line) when the source or the cluster is unusable."""
        self.settings = settings
        spec, source_settings = settings.source, settings.source_settings()
        self.source = (
            load_dataset_source(source_settings)
            if settings.dataset is not None
            else load_checked_source(spec, source_settings)
        )
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
            from dask_engine import DaskEngine  # Dask is needed for --cluster only

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
            "generation": self.producer.status(),
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


# =============================================================================
# Command line
# =============================================================================
def number_at_least(
    minimum: float, kind: Callable[[str], Any] = int, above: bool = False
) -> Callable[[str], Any]:
    """An argparse type: an int (or float) no smaller than `minimum` (or, with
    `above`, larger than it)."""
    noun = "an integer" if kind is int else "a number"
    bound = f"{'above' if above else 'at least'} {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < minimum or (above and value == minimum) or value != value:
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text}")
        return value

    return parse


positive_int, nonnegative_int = number_at_least(1), number_at_least(0)
positive_float = number_at_least(0, float, above=True)

# Options whose default an environment variable may set. The value goes
# through the option's own type check; an error names the variable.
ENVIRONMENT = {
    "max_iterations": "MAX_ITERATIONS",
    "sequence_length": "SEQUENCE_LENGTH",
    "token": "EIR_STREAM_TOKEN",
    "cluster": "DASK_SCHEDULER_ADDRESS",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default of the server is here and only here."""
    parser = argparse.ArgumentParser(
        description="Stream simulated health data (or your own) to EIR's eirtrain "
        "over WebSocket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 serves others")
    add("--port", type=nonnegative_int, default=8000, help="TCP port (0: any free)")
    add("--path", default="/ws", help="WebSocket path (the URL's path in the configs)")
    add(
        "--max-iterations",
        type=nonnegative_int,
        default=None,
        help="samples in one pass of the stream, then 'terminate' "
        "(env MAX_ITERATIONS; None: unbounded)",
    )
    add(
        "--sequence-length",
        type=positive_int,
        default=64,
        help="HR readings per trace (env SEQUENCE_LENGTH)",
    )
    add("--seed", type=int, default=0, help="sample k is a function of (seed, k)")
    add(
        "--source",
        default=None,
        help="module:factory or path/to/file.py:factory that builds the samples "
        "(default: data_simulator:SimulatedHealthData, the tutorial's data)",
    )
    add(
        "--dataset",
        default=None,
        metavar="SPEC",
        help="serve the dataset this YAML file describes (Parquet, JSON Lines, "
        "CSV, Arrow, save_to_disk; local or fsspec URLs) instead of a --source; "
        "needs requirements-datasets.txt",
    )
    add(
        "--shuffle",
        action="store_true",
        help="serve each epoch in its own order, a function of (--seed, epoch)",
    )
    add(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs in a pass, then 'terminate' (default: endless with "
        "--dataset, 1 otherwise); an epoch is every sample of the source once",
    )
    add(
        "--workers",
        type=nonnegative_int,
        default=None,
        help="local processes that make samples (default: one per core, or a "
        "thread of the server process for samples quicker to make than to "
        "receive from a process; 0: that thread)",
    )
    add(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="make samples on this Dask scheduler's workers, e.g. "
        "tcp://host:8786 (env DASK_SCHEDULER_ADDRESS; needs distributed)",
    )
    add(
        "--max-batch-size",
        type=positive_int,
        default=10_000,
        help="larger getData requests are served this many",
    )
    add(
        "--max-message-size",
        type=positive_int,
        default=16 * 2**20,
        help="largest incoming message in bytes; a larger one closes with 1009",
    )
    add(
        "--token",
        default=None,
        help="require ?token=TOKEN in the URL (env EIR_STREAM_TOKEN)",
    )
    add("--certfile", help="TLS certificate (PEM): serve wss://")
    add("--keyfile", help="TLS private key (PEM) for --certfile")
    add(
        "--ping-interval",
        type=positive_float,
        default=None,
        help="send keepalive pings this often, in seconds (None: off, since EIR "
        "answers pings only when it reads)",
    )
    add(
        "--handshake-timeout",
        type=positive_float,
        default=30.0,
        help="close (1008) a connection that sends no handshake within this many "
        "seconds",
    )
    add(
        "--progress-interval",
        type=number_at_least(0, float),
        default=30.0,
        help="seconds between progress lines in the log while samples flow (0: none)",
    )
    add(
        "--log-level",
        default="info",
        type=str.lower,  # WARNING as well as warning, like logging's own names
        choices=["debug", "info", "warning", "error"],
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line, with defaults from ENVIRONMENT."""
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions}
    for dest, name in ENVIRONMENT.items():
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        convert = actions[dest].type or str
        try:
            parser.set_defaults(**{dest: convert(value)})  # type: ignore[operator]
        except argparse.ArgumentTypeError as exc:
            parser.error(f"environment variable {name}={value!r}: {exc}")
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if not args.path.startswith("/"):
        parser.error(f"--path must start with '/', got {args.path!r}")
    if args.token is not None and not args.token.strip():
        parser.error("--token must not be empty (leave it out to run without one)")
    if args.cluster is not None and args.workers is not None:
        parser.error(
            f"--workers {args.workers} and --cluster {args.cluster!r}: samples are "
            "made either by local processes or by the cluster; give one"
        )
    if args.dataset is not None and args.source is not None:
        parser.error(
            f"--dataset {args.dataset!r} and --source {args.source!r}: serve a "
            "dataset or a source; give one"
        )
    if args.dataset is not None:
        args.source = DATASET_SOURCE
    elif args.source is None:
        args.source = "data_simulator:SimulatedHealthData"
    if args.epochs is None and args.dataset is None:
        args.epochs = 1  # a source's pass is one epoch unless asked for more
    args.workers_auto = args.workers is None and args.cluster is None
    if args.workers is None:
        args.workers = os.cpu_count() or 1
    return Settings(**vars(args))


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


async def run(
    settings: Settings, ready: Callable[[StreamServer], None] | None = None
) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit status."""
    server = await started_server(settings)
    if isinstance(server, int):
        return server
    stop = asyncio.Event()
    stop_on_signals(stop)  # before the "listening" line: a script may act on it
    announce(server)
    if ready is not None:
        ready(server)
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


async def started_server(settings: Settings) -> StreamServer | int:
    """A listening server, or the exit status after one line on what failed:
    2 for an unusable source, cluster or TLS file, 1 when it cannot listen."""
    try:
        server = StreamServer(settings)
    except ValueError as exc:
        logger.error("%s", exc)
        logger.debug("the cause of the error above:", exc_info=exc.__cause__)
        return 2
    try:
        await server.start()
    except ValueError as exc:  # unusable --certfile/--keyfile
        server.producer.close()
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        server.producer.close()
        logger.error(
            "cannot listen on %s:%s: %s",
            settings.host,
            settings.port,
            exc.strerror or exc,
        )
        return 1
    return server


def announce(server: StreamServer) -> None:
    """The "listening" line (with the URL for the configs), and a warning
    when anyone who can reach the port can read the data."""
    settings = server.settings
    if (
        settings.host not in ("127.0.0.1", "localhost", "::1")
        and settings.token is None
    ):
        logger.warning(
            "listening on %s without --token: anyone who can reach this port "
            "can read the data",
            settings.host,
        )
    if settings.cluster:
        makers = f"the Dask cluster at {settings.cluster}"
    elif settings.workers:
        makers = f"{settings.workers} local processes"
    else:
        makers = "a thread of the server process"
    logger.info(
        "listening; put this in input_source/output_source: %s "
        "(%s; seed %d; samples made by %s)",
        server.url,
        describe_stream(server),
        settings.seed,
        makers,
    )


def describe_stream(server: StreamServer) -> str:
    """What a pass of the stream is, for the "listening" line."""
    settings, per_epoch = server.settings, server.stream.num_samples
    if per_epoch is None:
        text = "unbounded stream"
    elif settings.epochs == 1:
        text = f"{per_epoch} samples per pass"
    else:
        epochs = "endless" if settings.epochs is None else f"{settings.epochs}"
        text = f"{per_epoch:,} samples per epoch, {epochs} epochs per pass"
    if settings.shuffle:
        text += ", shuffled"
    if settings.dataset is None:
        text += f", sequence length {settings.sequence_length}"
    return text


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGINT/SIGTERM (Ctrl-C). Left installed until the process
    exits: a second Ctrl-C during shutdown must not become a traceback."""
    loop = asyncio.get_running_loop()
    for name in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            # Windows' event loops have no add_signal_handler: a plain handler
            # runs in the main thread and hands the event to the loop.
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))


def main(argv: Sequence[str] | None = None) -> int:
    if websockets_missing:
        print(
            "error: the server needs the websockets package: "
            "pip install -r requirements.txt (or pip install 'websockets>=14')",
            file=sys.stderr,
        )
        return 2
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "debug":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    for quiet in ("distributed", "tornado"):  # the Dask client's own chatter
        if not logging.getLogger(quiet).isEnabledFor(logging.DEBUG):
            logging.getLogger(quiet).setLevel(logging.WARNING)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
