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
import contextlib
import hmac
import importlib.util
import json
import logging
import os
import signal
import ssl
import struct
import subprocess
import sys
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from itertools import (
    accumulate,
    chain,
    compress,
    count,
    filterfalse,
    groupby,
    repeat,
)
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from data_simulator import SampleSource, SampleStream

PROTOCOL_VERSION = "1.0"
DEFAULT_SOURCE = "data_simulator:SimulatedHealthData"

logger = logging.getLogger("simulation_streamer")

# =============================================================================
# The protocol: connection phases, and what each phase accepts.
#
# Rules this table keeps (every transition goes through Connection._enter):
#  1. The first message must be a valid handshake. Anything else, a wrong
#     version, or silence past --handshake-timeout gets an `error` naming the
#     problem and the connection is closed with 1008 (policy violation).
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
    AWAITING_HANDSHAKE: {
        "handshake": READY,
        "bad-message": CLOSED,
        "handshake-timeout": CLOSED,
        "lost": CLOSED,
    },
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


def index_ranges(indices: Sequence[int]) -> str:
    """Stream indices in order as compact runs for DEBUG logs: "0-31,40,42-50"."""
    runs: list[str] = []
    start = previous = None
    for index in [*indices, None]:
        if start is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ",".join(runs)


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
            logger.debug(  # a peer's unknown type is quoted: one line, cut short
                "conn#%d: received %s",
                self.id,
                kind if kind in REQUESTS else excerpt(kind),
            )
            if owed_heartbeat and not (kind == "getData" and self.phase == READY):
                outputs.append(HEARTBEAT)
                owed_heartbeat = False
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
                owed_heartbeat = False  # answered by the data reply
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

    def handshake_timed_out(self, seconds: float) -> list[Output]:
        """No handshake arrived in time: say so and close (1008)."""
        if self.phase != AWAITING_HANDSHAKE:
            return []
        self._enter("handshake-timeout")
        return [
            error(f"no handshake within {seconds:g} s of connecting; closing"),
            Close(POLICY_VIOLATION, "handshake timeout"),
        ]

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
            version = message["version"]
            kind = "" if isinstance(version, str) else f" ({type(version).__name__})"
            raise BadMessage(
                f"unsupported protocol version {excerpt(version)}{kind}; "
                f'this server speaks "{PROTOCOL_VERSION}"'
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
        if size > self.max_batch_size:
            if not self.warned_batch_size:
                self.warned_batch_size = True
                logger.warning(
                    "conn#%d asked for batch_size %s; serving %d (--max-batch-size)",
                    self.id,
                    excerpt(size),  # a 4000-digit number is cut short
                    self.max_batch_size,
                )
            size = self.max_batch_size
        indices = self.stream.take(self.id, size)
        if indices is None:
            logger.debug("conn#%d: stream exhausted, sending terminate", self.id)
            return [TERMINATE]
        self.samples_served += len(indices)
        return [SendSamples(indices)]

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
        if not all(type(value) is str for value in ids):  # fast for 500,000 ids
            for position, value in enumerate(ids):
                if not isinstance(value, str):
                    raise BadMessage(
                        f"validation_ids[{position}] must be a string, "
                        f"got {excerpt(value)}"
                    )
        # The stream maps ids to indices (in bulk: EIR may send 500,000 at once).
        received, known = self.stream.set_validation_ids(ids)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "conn#%d: validation ids skip indices %s",
                self.id,
                index_ranges(self.stream.validation_indices()),
            )
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
    except (ValueError, RecursionError):  # ValueError: also a >4300-digit number
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
    """Build a source from "module:factory" or "path/to/file.py:factory".

    A module is imported from sys.path, to which the current directory is
    added (so `--source mydata:make` finds ./mydata.py wherever the server
    script lives); a dotted module (`examples.multimodal.source`) is found
    from the repository root. A file path is loaded directly, and its folder
    is added to sys.path so it can import its neighbours. The factory may be
    a dotted attribute (`module:Class.create`); it gets seed, sequence_length
    and max_iterations as keyword arguments (take **kwargs to ignore some).
    Every problem raises ValueError with a one-line message.
    """
    import inspect

    try:  # checks the getInfo payload when stream_encoders.py is beside us
        from stream_encoders import check_dataset_info
    except ImportError:  # copied without it: the server still runs

        def check_dataset_info(info: Any) -> None:
            if not isinstance(info, dict) or not isinstance(info.get("outputs"), dict):
                raise ValueError(f"dataset info needs 'inputs' and 'outputs': {info!r}")

    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(
            f"--source must be module:factory or path/to/file.py:factory, got {spec!r}"
        )
    module = _import_source_module(target, spec)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--source {spec!r}: {target} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(
            f"--source {spec!r}: {attr} is a {type(factory).__name__}, not a "
            "callable factory"
        )
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as exc:
        raise ValueError(
            f"--source {spec!r}: {attr} must accept the keyword arguments "
            f"{', '.join(settings)} (or **kwargs): {exc}"
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin); just call it
    try:
        source = factory(**settings)
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: {attr}(...) failed: {type(exc).__name__}: {exc}"
        ) from exc
    problems = [
        f"no {name}() method"
        for name in ("dataset_info", "sample", "index_of")
        if not callable(getattr(source, name, None))
    ]
    if not callable(getattr(source, "samples", len)):
        problems.append("samples is not a method")
    if not hasattr(source, "num_samples"):
        problems.append("no num_samples attribute (an int, or None for unbounded)")
    else:
        bound = source.num_samples
        if bound is not None and (
            not isinstance(bound, int) or isinstance(bound, bool) or bound < 0
        ):
            problems.append(
                f"num_samples is {bound!r} (need an int >= 0, or None for unbounded)"
            )
    if problems:
        raise ValueError(
            f"--source {spec!r}: the {type(source).__name__} it made does not fit "
            f"SampleSource (data_simulator.py): {'; '.join(problems)}"
        )
    try:
        check_dataset_info(source.dataset_info())
    except ValueError as exc:
        raise ValueError(f"--source {spec!r}: {exc}") from None
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: dataset_info() failed: {type(exc).__name__}: {exc}"
        ) from exc
    return source


def _import_source_module(target: str, spec: str) -> Any:
    """The module named by the part of a --source spec before the colon."""
    import hashlib

    if target.endswith(".py") or "/" in target or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise ValueError(f"--source {spec!r}: no such file {path}")
        stem = os.path.splitext(os.path.basename(path))[0]
        digest = hashlib.sha1(path.encode()).hexdigest()[:8]
        name = f"_source_{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.append(folder)
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--source {spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ValueError(
                f"--source {spec!r}: importing {path} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return module
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ValueError(
                f"--source {spec!r}: no module named {exc.name!r} (looked in the "
                f"current directory {cwd} and on sys.path); run from the folder "
                "that holds it, or give its file: path/to/file.py:factory"
            ) from None
        raise ValueError(
            f"--source {spec!r}: importing {target} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}"
        ) from exc


def encode_samples(source: SampleSource, indices: Sequence[int]) -> list[str]:
    """Compact JSON text of each sample, ready to be joined into a `data` reply.

    Uses the source's optional `samples_json(indices)` when it has one (the
    simulated data writes its JSON directly), else `samples`, else `sample`.
    """
    fast = getattr(source, "samples_json", None)
    if fast is not None:
        return list(fast(indices))
    many = getattr(source, "samples", None)
    samples = many(indices) if many else [source.sample(i) for i in indices]
    return [json.dumps(s, separators=(",", ":")) for s in samples]


def encode_chunk(
    source: SampleSource, indices: Sequence[int]
) -> tuple[bytes, list[int]]:
    """The samples' JSON joined by commas, as UTF-8, and where each one ends.

    Sample k occupies payload[start:ends[k]], start being 0 for the first and
    ends[k - 1] + 1 (after the comma) for the others, so any run of
    consecutive samples is one slice of the payload.
    """
    texts = encode_samples(source, indices)
    joined = ",".join(texts)
    payload = joined.encode()
    if len(payload) == len(joined):  # ASCII: character and byte offsets agree
        lengths: Any = map(len, texts)
    else:
        lengths = (len(text.encode()) for text in texts)
    ends = list(accumulate((n + 1 for n in lengths), initial=-1))[1:]
    return payload, ends


# Frames between the server and a sample worker (all integers little-endian):
#   server -> worker: the init JSON as (u32 length, bytes), then requests
#                     (u64 chunk id, u32 count) + count x i64 indices;
#   worker -> server: (u64 chunk id, i32 count, i64 payload length) followed by
#                     count x i64 sample ends and the payload; a count of -1
#                     carries an error message as payload, -2 says "ready".
_REQUEST = struct.Struct("<QI")
_RESULT = struct.Struct("<Qiq")
_ERROR, _READY = -1, -2
_F_SETPIPE_SZ = 1031  # Linux fcntl: resize a pipe (fewer wakeups for big chunks)
_WORKER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "import simulation_streamer; simulation_streamer._worker_main()"
)


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(ImportError, OSError):
        import fcntl  # POSIX only; workers need POSIX anyway

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 2**20)


def _read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from a blocking fd; None at end of file."""
    parts, missing = [], size
    while missing:
        part = os.read(fd, missing)
        if not part:
            return None
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_frame(
    fd: int, chunk_id: int, count: int, ends: Sequence[int], payload: bytes
) -> None:
    """One worker -> server frame, written without joining it first."""
    parts = [_RESULT.pack(chunk_id, count, len(payload)), array("q", ends), payload]
    done = os.writev(fd, parts)
    if done < _RESULT.size + 8 * len(ends) + len(payload):  # a signal came
        _write_all(fd, b"".join(map(bytes, parts))[done:])


def _worker_main() -> None:
    """A sample worker: requests on stdin, results on stdout (see the frames).

    Stray output of the source's code goes to stderr (the server's log), not
    into the result pipe; Ctrl-C is left to the server, which closes our stdin
    to stop us; the worker runs at a lower priority than the event loop.
    """
    requests, results = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _grow_pipe(results)
    with contextlib.suppress(OSError):
        os.nice(SampleProducer.WORKER_NICE)
    head = _read_exactly(requests, 4)
    if head is None:
        return
    try:
        init = json.loads(_read_exactly(requests, struct.unpack("<I", head)[0]) or b"")
        _worker_init(init["spec"], init["settings"], init["sys_path"], init["cwd"])
    except Exception as exc:  # reported by the server, which then works without us
        message = f"{type(exc).__name__}: {exc}".encode()
        _write_frame(results, 0, _ERROR, (), message)
        return
    with contextlib.suppress(BrokenPipeError):  # raised when the server is gone
        _write_frame(results, 0, _READY, (), b"")
        _worker_serve(requests, results)


def _worker_init(
    spec: str, settings: dict[str, Any], sys_path: list[str], cwd: str
) -> None:
    global _worker_source
    # Import the --source module the way the server did: same directory and
    # sys.path (a relative path or a module in the current folder must work).
    os.chdir(cwd)
    sys.path[:] = sys_path
    _worker_source = load_source(spec, settings)


def _worker_serve(requests: int, results: int) -> None:
    source = _worker_source
    assert source is not None
    while True:
        head = _read_exactly(requests, _REQUEST.size)
        if head is None:
            return  # the server closed our stdin: done
        chunk_id, count = _REQUEST.unpack(head)
        indices = array("q")
        indices.frombytes(_read_exactly(requests, 8 * count) or b"")
        try:
            payload, ends = encode_chunk(source, indices.tolist())
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".encode()
            _write_frame(results, chunk_id, _ERROR, (), message)
        else:
            _write_frame(results, chunk_id, len(ends), ends, payload)


_worker_source: SampleSource | None = None


# A sample made or in the making is known by a code: its chunk's id << _SHIFT
# | its position in the chunk. Plain ints keep the read-ahead (thousands of
# entries) out of the garbage collector's way: tuples holding the chunk would
# be tracked, and full collections over them stall the event loop.
_SHIFT = 20
_POSITION = (1 << _SHIFT) - 1
_MISSING = -1
_chunk_id_of = _SHIFT.__rrshift__  # code -> chunk id, in C
_position_of = _POSITION.__and__  # code -> position, in C


def _codes(chunk: _Chunk) -> range:
    base = chunk.id << _SHIFT
    return range(base, base + len(chunk.indices))


class _Chunk:
    """Samples made together: by one worker request, or by the event loop."""

    __slots__ = (
        "attempts",
        "ends",
        "future",
        "id",
        "indices",
        "payload",
        "unclaimed",
        "urgent",
    )

    def __init__(
        self, chunk_id: int, indices: list[int], future: asyncio.Future[None]
    ) -> None:
        self.id = chunk_id
        self.indices = indices
        self.future = future  # done when payload and ends are set (or failed)
        self.payload: bytes | memoryview = b""
        self.ends: Sequence[int] = ()
        self.attempts = 0
        self.urgent = False  # a request waits for it: dispatch before prefetch
        self.unclaimed = 0  # its samples in the read-ahead, not yet requested

    def failed(self) -> bool:
        return self.future.exception() is not None


class _Worker:
    """One worker process and the server's end of its two pipes."""

    def __init__(self, slot: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.slot = slot
        self.proc = proc
        self.requests = proc.stdin.fileno()
        self.results = proc.stdout.fileno()
        self.head = bytearray(_RESULT.size)  # the frame being read: header,
        self.frame: bytearray | None = None  # then its body, once sized
        self.frame_view = memoryview(b"")
        self.frame_head: tuple[int, int, int] = (0, 0, 0)
        self.filled = 0
        self.ready = False
        self.attached = False
        self.inflight: dict[int, _Chunk] = {}


class SampleProducer:
    """The `data` replies for stream indices, made off the event loop.

    With workers (workers > 0), indices are made in chunks by that many
    worker processes (plain subprocesses on pipes, read by the event loop
    itself: no threads, no pickling). `prefetch` keeps the next
    `read_ahead` indices of the stream made or in the making, so a request
    usually finds its samples ready and only joins slices of bytes. Since a
    sample is a function of its index alone, a prefetched sample stays valid
    whatever happens to the stream: after a rewind it is served when its
    index comes round again. The cache is bounded (oldest entries go first)
    and grows the read-ahead to twice the largest batch asked for, up to
    MAX_READ_AHEAD.

    Without workers (workers=0), or while none is running, samples are made
    in the event loop, IN_LOOP_CHUNK at a time with a yield in between, so a
    large batch does not freeze other peers for long.

    A worker that dies is replaced (at most MAX_RESTARTS a minute per slot);
    its unfinished chunks are retried once, then fail with an error.
    """

    IN_LOOP_CHUNK = 32
    CHUNK = 128  # samples per worker request when reading ahead
    MAX_INFLIGHT = 2  # requests queued at each worker
    MAX_READ_AHEAD = 8192
    MAX_RESTARTS = 5
    WORKER_NICE = 5

    def __init__(
        self,
        source: SampleSource,
        spec: str,
        settings: dict[str, Any],
        workers: int,
        read_ahead: int = 1024,
    ) -> None:
        if workers and os.name != "posix":
            logger.warning(
                "--workers needs a POSIX system (Linux, macOS); making samples "
                "in the server process"
            )
            workers = 0
        self.source = source
        self.workers = workers
        self.read_ahead = read_ahead
        self._init = json.dumps(
            {
                "spec": spec,
                "settings": settings,
                "sys_path": sys.path,
                "cwd": os.getcwd(),
            }
        ).encode()
        self._where: dict[int, int] = {}  # read-ahead: stream index -> code
        self._chunks: dict[int, _Chunk] = {}  # id -> chunk, if in the read-ahead
        self._chunk_samples = 0  # samples in those chunks (what they hold)
        self._urgent: deque[_Chunk] = deque()
        self._waiting: deque[_Chunk] = deque()
        self._ids = count(1)
        self._missed = True
        self._closed = False
        self._deaths: dict[int, list[float]] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self.made_in_workers = 0
        self.made_in_loop = 0
        self.served_from_read_ahead = 0
        self._workers: list[_Worker | None] = [
            self._spawn(slot) for slot in range(workers)
        ]

    # -- public --------------------------------------------------------------
    def start(self, peek: Callable[[int], Sequence[int]] | None = None) -> None:
        """In the running loop: listen to the workers and, given the stream's
        `peek`, start making its first read-ahead."""
        for worker in self._workers:
            if worker is not None:
                self._attach(worker)
        if peek is not None:
            self.prefetch(peek)

    async def message(self, indices: list[int]) -> bytes:
        """The complete `data` reply for these indices, as UTF-8 JSON bytes."""
        if self._closed:
            raise RuntimeError("server shutting down")
        if len(indices) * 2 > self.read_ahead:
            self.read_ahead = min(self.MAX_READ_AHEAD, len(indices) * 2)
        codes = list(map(self._where.pop, indices, repeat(_MISSING)))
        held = self._claim(codes)
        misses = codes.count(_MISSING)
        self.served_from_read_ahead += len(codes) - misses
        if misses:
            self._missed = True
            codes = self._fill(indices, codes, held, self._new_chunks)
        try:
            await self._wait_for(held)
        except RuntimeError:
            # A chunk holds many samples, made together; one bad sample fails
            # it. Remake this request's samples of failed chunks one by one,
            # so that only a request holding a bad sample fails, naming it.
            failed = {i for i, c in held.items() if c.future.done() and c.failed()}
            codes = [_MISSING if c >> _SHIFT in failed else c for c in codes]
            for chunk_id in failed:
                del held[chunk_id]
            codes = self._fill(indices, codes, held, self._single_chunks)
            await self._wait_for(held)
        return _data_message(codes, held)

    def _claim(self, codes: list[int]) -> dict[int, _Chunk]:
        """The read-ahead chunks of these codes (taken out of the read-ahead)."""
        held: dict[int, _Chunk] = {}
        chunks = self._chunks
        for chunk_id, group in groupby(codes, key=_chunk_id_of):
            if chunk_id < 0:  # _MISSING
                continue
            chunk = held[chunk_id] = chunks[chunk_id]
            chunk.unclaimed -= len(list(group))
            if not chunk.unclaimed:
                del chunks[chunk_id]
                self._chunk_samples -= len(chunk.indices)
        return held

    def _fill(
        self,
        indices: list[int],
        codes: list[int],
        held: dict[int, _Chunk],
        chunker: Callable[[list[int]], list[_Chunk]],
    ) -> list[int]:
        """Codes with the missing ones made by new urgent chunks from `chunker`."""
        missing = list(compress(indices, map(_MISSING.__eq__, codes)))
        made = chunker(missing)
        for chunk in made:
            held[chunk.id] = chunk
        new = chain.from_iterable(map(_codes, made))
        if len(missing) == len(codes):
            return list(new)
        return [next(new) if c == _MISSING else c for c in codes]

    async def _wait_for(self, held: dict[int, _Chunk]) -> None:
        chunks = list(held.values())
        for chunk in chunks:
            if not chunk.future.done() and not chunk.urgent:
                chunk.urgent = True
                with contextlib.suppress(ValueError):
                    self._waiting.remove(chunk)
                    self._urgent.append(chunk)
        self._dispatch()
        for chunk in chunks:  # shielded: other requests may wait for it too
            await asyncio.shield(chunk.future)  # raises if it could not be made

    def prefetch(self, peek: Callable[[int], Sequence[int]]) -> None:
        """Top up the read-ahead from `peek(n)`, the stream's next n indices.

        Cheap when there is nothing to do: `peek` is called only when fewer
        than half the read-ahead is left or the last request missed.
        """
        if self._closed or not any(self._workers):
            return
        where = self._where
        if not self._missed and len(where) >= self.read_ahead // 2:
            return
        self._missed = False
        new = list(filterfalse(where.__contains__, peek(self.read_ahead)))
        if new:
            self._new_chunks(new, urgent=False)
        # Bounded memory: a chunk is held while any of its samples may still
        # be asked for; samples never asked for (made before a rewind, or
        # validation ids set later) would pin theirs. Oldest chunks go first.
        limit = 2 * self.read_ahead + self.CHUNK
        chunks = self._chunks
        while self._chunk_samples > limit:
            chunk = next(iter(chunks.values()))
            self._forget(chunk)
            if not chunk.urgent:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(chunk)  # never dispatched: skip it
        self._dispatch()

    def status(self) -> dict[str, Any]:
        """Counters for the server's `status` reply."""
        return {
            "workers_ready": sum(1 for w in self._workers if w is not None and w.ready),
            "read_ahead": self.read_ahead,
            "samples_ready_or_in_making": len(self._where),
            "samples_held": self._chunk_samples,
            "samples_made_in_workers": self.made_in_workers,
            "samples_made_in_loop": self.made_in_loop,
            "samples_served_from_read_ahead": self.served_from_read_ahead,
            "worker_pids": [w.proc.pid for w in self._workers if w is not None],
        }

    def close(self) -> None:
        """Stop the workers: EOF on their stdin, then a kill after 0.2 s."""
        self._closed = True
        self._where.clear()
        self._chunks.clear()
        self._chunk_samples = 0
        unfinished = [*self._urgent, *self._waiting]
        for worker in self._workers:
            if worker is not None:
                self._hang_up(worker)
        deadline = time.monotonic() + 0.2  # they hold no state: no need to wait
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            unfinished += worker.inflight.values()
        self._workers = [None] * len(self._workers)
        for chunk in unfinished:
            self._fail(chunk, "server shutting down")
        self._urgent.clear()
        self._waiting.clear()
        if self._drain_task is not None:
            self._drain_task.cancel()

    # -- chunks ----------------------------------------------------------------
    def _single_chunks(self, indices: list[int]) -> list[_Chunk]:
        return self._new_chunks(indices, urgent=True, size=1)

    def _new_chunks(
        self, indices: list[int], urgent: bool = True, size: int = 0
    ) -> list[_Chunk]:
        loop = asyncio.get_running_loop()
        live = sum(1 for w in self._workers if w is not None)
        if size < 1:
            if not live:
                size = self.IN_LOOP_CHUNK
            elif urgent:  # split a request so that every worker takes a share
                size = min(self.CHUNK, max(8, -(-len(indices) // live)))
            else:
                size = self.CHUNK
        made = []
        for start in range(0, len(indices), size):
            chunk = _Chunk(
                next(self._ids), indices[start : start + size], loop.create_future()
            )
            chunk.urgent = urgent
            made.append(chunk)
            if not urgent:
                self._where.update(zip(chunk.indices, _codes(chunk), strict=True))
                self._chunks[chunk.id] = chunk
                chunk.unclaimed = len(chunk.indices)
                self._chunk_samples += len(chunk.indices)
        (self._urgent if urgent else self._waiting).extend(made)
        return made

    def _dispatch(self) -> None:
        if self._closed:
            return
        live = [w for w in self._workers if w is not None]
        if not live:
            self._start_in_loop_drain()
            return
        for worker in live:
            self._attach(worker)
        ready = [w for w in live if w.ready]
        while (self._urgent or self._waiting) and ready:
            worker = min(ready, key=lambda w: len(w.inflight))
            if len(worker.inflight) >= self.MAX_INFLIGHT:
                return
            chunk = (self._urgent or self._waiting).popleft()
            if chunk.future.done():
                continue
            request = _REQUEST.pack(chunk.id, len(chunk.indices))
            try:
                _write_all(
                    worker.requests, request + array("q", chunk.indices).tobytes()
                )
            except OSError:
                (self._urgent if chunk.urgent else self._waiting).appendleft(chunk)
                self._worker_lost(worker)
                return
            worker.inflight[chunk.id] = chunk

    def _start_in_loop_drain(self) -> None:
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.get_running_loop().create_task(
                self._drain_in_loop()
            )

    async def _drain_in_loop(self) -> None:
        """Make the chunks that requests wait for in the event loop (no workers)."""
        for chunk in list(self._chunks.values()):
            if not chunk.future.done():  # prefetch needs workers; forget it
                self._forget(chunk)
        self._waiting.clear()
        while self._urgent and not self._closed:
            chunk = self._urgent.popleft()
            if chunk.future.done():
                continue
            parts: list[bytes] = []
            ends: list[int] = []
            offset = 0
            for start in range(0, len(chunk.indices), self.IN_LOOP_CHUNK):
                if start:
                    await asyncio.sleep(0)
                try:
                    payload, part_ends = encode_chunk(
                        self.source, chunk.indices[start : start + self.IN_LOOP_CHUNK]
                    )
                except Exception as exc:
                    logger.exception("could not make samples in the server process")
                    self._fail(chunk, f"{type(exc).__name__}: {exc}")
                    break
                parts.append(payload)
                ends += [offset + e for e in part_ends]
                offset += len(payload) + 1
            else:
                self.made_in_loop += len(chunk.indices)
                self._finish(chunk, b",".join(parts), ends)
            await asyncio.sleep(0)

    def _finish(
        self, chunk: _Chunk, payload: bytes | memoryview, ends: Sequence[int]
    ) -> None:
        chunk.payload, chunk.ends = payload, ends
        if not chunk.future.done():
            chunk.future.set_result(None)

    def _forget(self, chunk: _Chunk) -> None:
        """Take the chunk's samples out of the read-ahead."""
        if self._chunks.pop(chunk.id, None) is not None:
            self._chunk_samples -= len(chunk.indices)
            where = self._where
            for index, code in zip(chunk.indices, _codes(chunk), strict=True):
                if where.get(index) == code:
                    del where[index]
            chunk.unclaimed = 0

    def _fail(self, chunk: _Chunk, message: str) -> None:
        if len(chunk.indices) == 1:
            message = f"sample index {chunk.indices[0]}: {message}"
        self._forget(chunk)
        if not chunk.future.done():
            chunk.future.set_exception(RuntimeError(message))
            chunk.future.add_done_callback(_consume_exception)

    # -- worker processes ------------------------------------------------------
    def _spawn(self, slot: int) -> _Worker | None:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER_BOOT,
                    os.path.dirname(os.path.abspath(__file__)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
        except OSError as exc:
            logger.error("cannot start sample worker %d: %s", slot, exc)
            return None
        worker = _Worker(slot, proc)
        _grow_pipe(worker.requests)
        with contextlib.suppress(OSError):  # if it died at once, its EOF says so
            _write_all(worker.requests, struct.pack("<I", len(self._init)) + self._init)
        return worker

    def _attach(self, worker: _Worker) -> None:
        if worker.attached:
            return
        os.set_blocking(worker.results, False)
        asyncio.get_running_loop().add_reader(worker.results, self._on_readable, worker)
        worker.attached = True

    def _detach(self, worker: _Worker) -> None:
        if worker.attached:
            worker.attached = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(worker.results)

    def _hang_up(self, worker: _Worker) -> None:
        """Stop listening and close both pipes: EOF on the worker's stdin tells
        it to exit, and a broken pipe stops it if it is still writing."""
        self._detach(worker)
        with contextlib.suppress(OSError):
            worker.proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            worker.proc.stdout.close()  # type: ignore[union-attr]

    def _on_readable(self, worker: _Worker) -> None:
        """Read what a worker wrote: a frame's fixed-size header, then its body
        straight into a buffer of its size (no further copies)."""
        for _ in range(64):  # then let the loop run; epoll calls again
            if worker.frame is None:
                target = memoryview(worker.head)[worker.filled :]
            else:
                target = worker.frame_view[worker.filled :]
            try:
                got = os.readv(worker.results, [target])
            except BlockingIOError:
                break
            except OSError:
                got = 0
            if not got:
                self._worker_lost(worker)
                return
            worker.filled += got
            if worker.frame is None:
                if worker.filled < _RESULT.size:
                    continue
                worker.frame_head = _RESULT.unpack(worker.head)
                _, n, size = worker.frame_head
                worker.frame = bytearray(8 * max(n, 0) + size)
                worker.frame_view = memoryview(worker.frame)
                worker.filled = 0
            if worker.filled == len(worker.frame):
                self._complete(worker, *worker.frame_head, worker.frame_view)
                worker.frame, worker.filled = None, 0
        self._dispatch()

    def _complete(
        self, worker: _Worker, chunk_id: int, n: int, size: int, frame: memoryview
    ) -> None:
        """One frame from a worker has arrived in full."""
        if n == _READY:
            worker.ready = True
            logger.info("sample worker %d ready (pid %d)", worker.slot, worker.proc.pid)
            return
        chunk = worker.inflight.pop(chunk_id, None)
        if n == _ERROR:
            message = bytes(frame).decode(errors="replace")
            if not worker.ready:
                logger.error(
                    "sample worker %d could not load the source: %s",
                    worker.slot,
                    message,
                )
            elif chunk is not None:
                logger.error("sample worker %d: %s", worker.slot, message)
                self._fail(chunk, message)
        elif chunk is not None:
            ends = array("q")
            ends.frombytes(frame[: 8 * n])
            self.made_in_workers += n
            self._finish(chunk, frame[8 * n :], ends)

    def _worker_lost(self, worker: _Worker) -> None:
        if self._workers[worker.slot] is not worker:
            return
        self._hang_up(worker)
        try:  # its output ended: it has exited or is about to
            code: int | None = worker.proc.wait(0.2)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            code = worker.proc.wait()
        retry = []
        for chunk in worker.inflight.values():
            chunk.attempts += 1
            if chunk.attempts > 1:
                self._fail(chunk, f"sample worker {worker.slot} died twice making it")
            else:
                retry.append(chunk)
        for chunk in reversed(retry):
            (self._urgent if chunk.urgent else self._waiting).appendleft(chunk)
        now = time.monotonic()
        deaths = [t for t in self._deaths.get(worker.slot, []) if now - t < 60] + [now]
        self._deaths[worker.slot] = deaths
        if self._closed:
            return
        if not worker.ready:
            logger.error(
                "sample worker %d exited (code %s) before it was ready; "
                "making samples in the server process",
                worker.slot,
                code,
            )
            self._workers[worker.slot] = None
        elif len(deaths) > self.MAX_RESTARTS:
            logger.error(
                "sample worker %d died %d times in a minute (code %s); not restarted",
                worker.slot,
                len(deaths),
                code,
            )
            self._workers[worker.slot] = None
        else:
            logger.warning(
                "sample worker %d died (code %s); restarting it", worker.slot, code
            )
            self._workers[worker.slot] = self._spawn(worker.slot)
        self._dispatch()


def _data_message(codes: Sequence[int], chunks: dict[int, _Chunk]) -> bytes:
    """`{"type":"data","payload":[...]}` from the samples' codes, taking each
    run of consecutive positions of one chunk as a single slice.

    One join, so one allocation: fresh memory for a reply of megabytes costs
    page faults, which are slow in a virtual machine.
    """
    parts: list[Any] = [b'{"type":"data","payload":[']
    for chunk_id, group in groupby(codes, key=_chunk_id_of):
        chunk = chunks[chunk_id]
        positions = list(map(_position_of, group))
        first, last = positions[0], positions[-1]
        if last - first + 1 != len(positions):  # not one run: sample by sample
            for position in positions:
                parts += (_span(chunk, position, position), b",")
        elif first == 0 and last == len(chunk.ends) - 1:
            parts += (chunk.payload, b",")
        else:
            parts += (_span(chunk, first, last), b",")
    if len(parts) > 1:
        parts.pop()  # the last comma
    parts.append(b"]}")
    return b"".join(parts)


def _span(chunk: _Chunk, first: int, last: int) -> memoryview:
    """The payload bytes of the chunk's samples first..last."""
    ends = chunk.ends
    return memoryview(chunk.payload)[ends[first - 1] + 1 if first else 0 : ends[last]]


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
    handshake_timeout: float = 30.0


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
        self.stream = SampleStream.for_source(self.source)
        self.producer = SampleProducer(
            self.source, settings.source, source_settings, settings.workers
        )
        self.connections: dict[ServerConnection, Connection] = {}
        self.connections_total = 0
        self.started = time.monotonic()
        self._ids = count(1)
        self._server: Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._redact: RedactFilter | None = None

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
        self.producer.start(self.stream.peek)
        self._reaper = asyncio.create_task(self._reap_stuck_closes())

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
        if self._reaper is not None:
            self._reaper.cancel()
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
                if conn.phase == AWAITING_HANDSHAKE:
                    timeout: float | None = self.settings.handshake_timeout
                elif conn.heartbeat_pending:
                    timeout = HEARTBEAT_PAIRING
                else:
                    timeout = None  # a training client may not write for minutes
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout)
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
                message = await self.producer.message(out.indices)
            except Exception as exc:
                logger.exception("conn#%d: could not make samples", conn.id)
                await ws.send(
                    json.dumps(error(f"server failed to make samples: {exc}").message)
                )
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
def env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"error: {name} must be an integer, got {value!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected an integer of at least {minimum}, got {value}"
            )
        return value

    return parse


positive_int, nonnegative_int = int_at_least(1), int_at_least(0)


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
        "(env MAX_ITERATIONS; None: unbounded)",
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
        help="send keepalive pings this often, in seconds (None: off, since EIR "
        "answers pings only when it reads)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=30.0,
        help="close (1008) a connection that sends no handshake within this many "
        "seconds",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if not args.path.startswith("/"):
        parser.error(f"--path must start with '/', got {args.path!r}")
    if args.token is not None and not args.token.strip():
        parser.error("--token must not be empty (leave it out to run without one)")
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
        handshake_timeout=args.handshake_timeout,
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
