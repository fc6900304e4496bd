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
import multiprocessing
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
import zipfile
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import (
    BrokenExecutor,
    Executor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from itertools import accumulate, count, filterfalse, islice, pairwise
from typing import Any, cast
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

from data_simulator import (
    Chunk,
    SampleSource,
    SampleStream,
    cached_source,
    encode_chunk,
    is_file_spec,
    load_source,
    make_chunk,
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

PROTOCOL_VERSION = "1.0"

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
        samples_broken: Callable[[], str | None] | None = None,
    ) -> None:
        """`server_status` adds to `status` replies; `samples_broken` says why
        no samples can be made (then `getData` gets that as an error)."""
        self.id = conn_id
        self.phase = AWAITING_HANDSHAKE
        self.stream = stream
        self.dataset_info = dataset_info
        self.max_batch_size = max_batch_size
        self.server_status = server_status
        self.samples_broken = samples_broken
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
        broken = self.samples_broken() if self.samples_broken else None
        if broken:  # checked before taking: the stream loses nothing
            raise BadMessage(f"no samples can be made: {broken}")
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
# Samples: stream indices -> `data` replies, made by an executor, ahead of need.
#
# A sample is a pure function of its index, so making samples is the one job
# that can run anywhere: the stream (cursor, validation ids) stays in this
# process, and only "make these indices" goes to a concurrent.futures
# executor, a chunk of indices per task (data_simulator.make_chunk):
#   --workers N  N local processes (ProcessPoolExecutor, spawned), N >= 1;
#   --workers 0  one thread of the server process;
#   --cluster A  a Dask cluster, through distributed's Client.get_executor().
# =============================================================================
SOURCE_HELPERS = ("single_sample_simulation", "data_simulator", "stream_encoders")
CLUSTER_CONNECT_TIMEOUT = 10  # seconds to reach a Dask scheduler at start


def load_checked_source(spec: str, settings: dict[str, Any]) -> SampleSource:
    """`load_source`, plus the full check of its `getInfo` payload when
    stream_encoders.py is beside us (the server runs without it)."""
    source = load_source(spec, settings)
    try:
        from stream_encoders import check_dataset_info
    except ImportError:
        return source
    try:
        check_dataset_info(source.dataset_info())
    except ValueError as exc:
        raise ValueError(f"--source {spec!r}: {exc}") from None
    return source


def _frozen(settings: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(settings.items()))


def _start_local_worker(spec: str, settings: tuple[tuple[str, Any], ...]) -> None:
    """Initializer of a local worker process: load the source once, yield the
    CPU to the server's event loop when both want it, and exit with the server
    even if it is killed (a pool's workers otherwise wait for work forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(5)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    cached_source(spec, settings)


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the server process is gone
    os._exit(0)


class LocalEngine:
    """Samples made on this machine: `workers` spawned processes (each loads
    the source once), or, with workers == 0, one thread of the server process
    (which uses the server's own source object).

    `auto` (the default --workers): the processes may hand over to the thread
    for good (`make_here`) once the samples turn out cheaper to make than to
    receive from a process; see SampleProducer._choose_engine.
    """

    def __init__(
        self,
        source: SampleSource,
        spec: str,
        settings: dict[str, Any],
        workers: int,
        auto: bool = False,
    ) -> None:
        self.source = source
        self.workers = workers
        self.auto = auto and workers > 0
        self.task_seconds = 0.05  # a local task costs ~0.1 ms of overhead
        self._init = (spec, _frozen(settings))
        self._set_task()
        self.executor = self._new_executor()

    def _set_task(self) -> None:
        self.kind = "processes" if self.workers else "thread"
        self.task: Callable[[list[int]], Chunk] = (
            partial(make_chunk, *self._init)
            if self.workers
            else partial(encode_chunk, self.source)
        )

    def make_here(self) -> None:
        """From now on, samples are made in a thread of this process. The
        processes finish the tasks they have (their chunks are not lost), then
        exit."""
        pool, self.workers, self.auto = self.executor, 0, False
        self._set_task()
        self.executor = self._new_executor()
        pool.shutdown(wait=False)

    def _new_executor(self) -> Executor:
        if not self.workers:
            return ThreadPoolExecutor(1, thread_name_prefix="samples")
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),  # portable, no fork
            initializer=_start_local_worker,
            initargs=self._init,
        )

    def replace_executor(self) -> None:
        """A fresh pool: a pool whose worker died is broken for good."""
        self.close()
        self.executor = self._new_executor()

    def live_workers(self) -> int:
        return self.workers or 1

    def pids(self) -> list[int]:
        # ProcessPoolExecutor has no public list of its processes: `_processes`
        # (pid -> Process) is read for `status`, `heal` and `close` only.
        return list(self._processes())

    def why_waiting(self) -> str:
        if not self.workers:
            return "the server's sample thread is busy"
        return f"all {self.workers} local worker processes are busy"

    def heal(self) -> None:
        """Make the pool notice a dead worker it has missed.

        ProcessPoolExecutor (3.11-3.13) reads results in one thread; a worker
        killed while writing a large result leaves that thread waiting for the
        rest of it, forever (this process holds the result pipe's other write
        end), and the pool never reports itself broken. Stopping the pool's
        processes and closing our write end ends that read; the pool then
        fails its futures with BrokenProcessPool as usual, and a new pool
        makes their chunks again.
        """
        processes = list(self._processes().values())
        if not any(process.exitcode is not None for process in processes):
            return
        logger.warning("a local worker process died unnoticed; ending its pool")
        self._terminate(processes)
        self._end_result_read()

    def _end_result_read(self) -> None:
        """Close our write end of the pool's result pipe, so that a read
        waiting for a result its (terminated) worker never finished ends."""
        results = getattr(self.executor, "_result_queue", None)
        with contextlib.suppress(Exception):
            results._writer.close()  # type: ignore[union-attr]

    def _processes(self) -> dict[int, Any]:
        return dict(getattr(self.executor, "_processes", None) or {})

    @staticmethod
    def _terminate(processes: list[Any]) -> None:
        for process in processes:  # they hold no state: no need to let them finish
            with contextlib.suppress(Exception):
                process.terminate()

    def close(self) -> None:
        processes = list(self._processes().values())
        manager = getattr(self.executor, "_executor_manager_thread", None)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._terminate(processes)
        if manager is not None:  # let it tear down its queues before we exit
            manager.join(1.0)
            if manager.is_alive():  # reading a result cut off by terminate()
                self._end_result_read()
                manager.join(1.0)


class DaskEngine:
    """Samples made on a Dask cluster (`dask scheduler`, `dask worker ADDRESS`).

    The workers get our modules and the source's own file (or package) from
    the server, as worker plugins, so plain `dask worker` processes started
    anywhere, and workers that join later, can make samples. What the source
    imports beyond that must be installed where the workers run. A worker
    that dies is handled by Dask itself: the scheduler runs its tasks again
    on the others.
    """

    kind = "dask"
    # A Dask task costs milliseconds of scheduler and worker bookkeeping (and
    # a heavy pure-Python source holds the GIL against the worker's own
    # thread): measured here, 2 workers with 50 ms tasks made 1.07x what one
    # local process did, with 0.5 s tasks 1.55x.
    task_seconds = 0.5
    auto = False  # a cluster never hands its samples over (LocalEngine.auto)

    def __init__(self, address: str, spec: str, settings: dict[str, Any]) -> None:
        try:
            from distributed import Client
            from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile
        except ImportError:
            raise ValueError(
                "--cluster needs Dask's distributed package: "
                "pip install -r requirements-cluster.txt"
            ) from None
        self.address = address
        try:
            self.client = Client(address, timeout=CLUSTER_CONNECT_TIMEOUT)
        except Exception as exc:
            raise ValueError(
                f"--cluster {address!r}: no Dask scheduler answered there: {exc}"
            ) from None
        try:
            ours, theirs, worker_spec = files_for_workers(spec)
            for path in ours + theirs:  # named by file: a new server replaces them
                name = f"eir-stream:{os.path.basename(path)}"
                if path in ours:  # the scheduler unpickles make_chunk's reference
                    self.client.register_plugin(SchedulerUploadFile(path), name=name)
                self.client.register_plugin(UploadFile(path), name=name)
        except Exception as exc:
            self.client.close()
            raise ValueError(
                f"--cluster {address!r}: could not give the workers the source "
                f"{spec!r}: {type(exc).__name__}: {exc}"
            ) from None
        self.task = partial(make_chunk, worker_spec, _frozen(settings))
        self.executor: Executor = self.client.get_executor(pure=False)
        self._asked, self._workers = -1.0, 0

    def replace_executor(self) -> None:
        """Nothing to do: a lost Dask worker's tasks are rerun by the scheduler."""

    def heal(self) -> None:
        """Nothing to do: the scheduler notices lost workers itself."""

    def live_workers(self) -> int:
        """Workers connected to the scheduler (asked at most once a second:
        it is a round trip to the scheduler)."""
        now = time.monotonic()
        if now - self._asked >= 1.0:
            self._asked = now
            with contextlib.suppress(Exception):
                info = self.client.scheduler_info(n_workers=-1)
                self._workers = sum(
                    w.get("nthreads", 1) for w in info["workers"].values()
                )
        return self._workers

    def pids(self) -> list[int]:
        return []

    def why_waiting(self) -> str:
        workers = self.live_workers()
        if not workers:
            return f"no Dask worker is connected to {self.address} yet"
        return f"all {workers} Dask workers of {self.address} are busy"

    def close(self) -> None:
        self.executor.shutdown(wait=False)
        with contextlib.suppress(Exception):
            self.client.close(timeout=2)


def files_for_workers(spec: str) -> tuple[list[str], list[str], str]:
    """What a remote worker needs to make samples of `spec`: our own modules
    (the scheduler needs them too, to unpickle a task's reference to
    make_chunk), the source's own files, and the spec as the worker imports
    it (a file's module is named by its stem there).

    The source's module goes along when it lives in the current directory or
    beside this script; a package goes as a zip of its .py files. Anything
    else it imports must be installed where the workers run.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    ours = [
        path
        for name in SOURCE_HELPERS
        if os.path.isfile(path := os.path.join(here, f"{name}.py"))
    ]
    target, _, attr = spec.rpartition(":")
    if is_file_spec(target):
        path = os.path.abspath(target)
        return ours, [path], f"{os.path.splitext(os.path.basename(path))[0]}:{attr}"
    top = target.partition(".")[0]
    found = None if top in SOURCE_HELPERS else importlib.util.find_spec(top)
    locations = list(found.submodule_search_locations or []) if found else []
    origin = found.origin if found and found.has_location else None
    local = (os.getcwd(), here)
    if locations and locations[0].startswith(local):
        return ours, [_zip_package(locations[0], top)], spec
    if origin and origin.startswith(local):
        return ours, [origin], spec
    return ours, [], spec


def _zip_package(folder: str, name: str) -> str:
    """A zip of the package's .py files, importable from sys.path as `name`
    (with an entry per folder: zipimport needs them for namespace packages)."""
    path = os.path.join(tempfile.mkdtemp(prefix="eir-stream-"), f"{name}.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
            inside = os.path.normpath(os.path.join(name, os.path.relpath(root, folder)))
            archive.write(root, inside)
            for file in names:
                if file.endswith(".py"):
                    archive.write(os.path.join(root, file), os.path.join(inside, file))
    return path


class _Chunk:
    """Indices made in one task and, once made, their samples in the same
    order: sample k is bytes offsets[k]:offsets[k + 1] of the parts laid end
    to end, with its comma, empty where the source raised (see
    data_simulator.Chunk); part p starts at byte starts[p]."""

    __slots__ = (
        "attempts",
        "done",
        "failed",
        "first",
        "indices",
        "made",
        "offsets",
        "parts",
        "positions",
        "served",
        "starts",
        "urgent",
    )

    def __init__(self, indices: list[int], urgent: bool = False) -> None:
        self.indices = indices
        self.first = indices[0]
        # Where an index sits in the chunk: index - first, for a range.
        ranged = indices == list(range(self.first, self.first + len(indices)))
        self.positions = None if ranged else {i: at for at, i in enumerate(indices)}
        self.urgent = urgent  # made for a request that missed, not read ahead
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.attempts = self.served = 0
        self.made = self.failed = False
        self.parts: list[memoryview] = []
        self.starts: list[int] = []
        self.offsets: list[int] = []

    def position(self, index: int) -> int:
        return index - self.first if self.positions is None else self.positions[index]

    def made_from(self, parts: list[bytes], offsets: list[int]) -> None:
        self.parts = [memoryview(part) for part in parts]
        self.starts = list(accumulate(map(len, parts[:-1]), initial=0))
        self.offsets = offsets
        self.made = True

    def run(self, start: int, stop: int) -> tuple[list[memoryview], int]:
        """The samples at positions start..stop-1 (those that were made), as
        slices of the parts (one, unless the run crosses into the next part),
        and how many they are."""
        offsets = self.offsets
        low, high = offsets[start], offsets[stop]
        pieces = []
        at = bisect_right(self.starts, low) - 1
        while low < high:
            part, base = self.parts[at], self.starts[at]
            end = min(high, base + len(part))
            pieces.append(part[low - base : end - base])
            low, at = end, at + 1
        if not self.failed:
            return pieces, stop - start
        made = sum(1 for at in range(start, stop) if offsets[at + 1] > offsets[at])
        return pieces, made


Run = tuple[_Chunk, int, int]  # positions start..stop-1 of a made chunk
DATA_HEAD, DATA_TAIL = b'{"type":"data","payload":[', b"]}"


class SampleProducer:
    """The `data` replies for stream indices, made by an engine's executor.

    `prefetch` keeps the stream's next `read_ahead` indices made or in the
    making, in chunks; `_where` maps each of their indices to its chunk. A
    request is usually a run of consecutive samples of one or two made
    chunks, so its reply is a slice of each and no work per sample. A sample
    depends on its index alone, so a sample made ahead stays right whatever
    the stream does: after a rewind it is served when its index comes round
    again. A chunk is let go once all its samples were served; the chunks
    held have at most 2 x read_ahead + `chunk` samples (the oldest made ones
    go first). At most `max_in_flight` tasks are at the executor at a time
    (the rest wait here, a request's own chunks first). A task makes `chunk`
    samples, sized from the measured cost of a sample so that a task takes
    about the engine's `task_seconds`: a cheap source gets big tasks (each
    task costs the executor some fixed work), a heavy one small tasks that
    spread over every worker; large samples get fewer per task (at most
    MAX_CHUNK_BYTES of them).

    Faults: a chunk whose task was lost (its worker died, the pool broke) is
    made again, the same bytes since they depend on the index alone, up to
    MAX_ATTEMPTS times; a broken local pool is replaced, up to MAX_RESTARTS a
    minute. A sample whose source raised is left out of its reply, logged
    once and counted; FAILURE_RUN failures in a row mean the source is broken,
    and `broken` then says why (the server answers `getData` with it).
    """

    # Receiving a made sample from a worker process (pipe, unpickling) costs
    # this process about this much CPU per byte: bench/making.py measured
    # 2.05 us per 810-byte sample of the near-free source here (see
    # _choose_engine).
    RECEIVE_SECONDS_PER_BYTE = 2.5e-9
    CHOOSE_AFTER = 1024  # samples measured before the engine is chosen
    # Near-free samples (a pool, a memory-mapped array) want big chunks: a
    # task costs the pool a fixed amount of shipping. In bench/executors.py
    # (when chunks were one blob and the pool relabelled its samples) the
    # near-free source with worker processes reached 0.53 of the ceiling with
    # chunks of up to 4,096 samples and 0.61 with 16,384. Much larger chunks
    # did worse in a thread: each making holds the GIL for tens of ms.
    MIN_CHUNK, FIRST_CHUNK, MAX_CHUNK = 8, 64, 16384
    MAX_CHUNK_BYTES = 16 * 2**20  # large samples get smaller chunks
    MAX_READ_AHEAD = 2 * MAX_CHUNK
    MAX_ATTEMPTS = 3
    MAX_RESTARTS = 5
    FAILURE_RUN = 64
    WAIT_WARNING = 10.0  # seconds a request waits before the log says why
    HEAL_AFTER = 1.0  # seconds a request waits before the engine is checked

    def __init__(self, engine: LocalEngine | DaskEngine, read_ahead: int = 1024):
        self.engine = engine
        self.read_ahead = read_ahead
        self.chunk = self.FIRST_CHUNK  # samples per task, until measured
        self._sample_seconds = 0.0  # a moving average, once measured
        # (CPU seconds a sample in the cheapest chunk, samples): _choose_engine
        self._measured: tuple[float, int] | None = None
        self.broken: str | None = None
        self._where: dict[int, _Chunk] = {}  # index -> the chunk that makes it
        self._chunks: dict[_Chunk, None] = {}  # the chunks in _where, oldest first
        self._held = 0  # samples in those chunks
        self._unserved = 0  # of those, the ones not served yet
        self._queue: deque[_Chunk] = deque()  # chunks not yet at the executor
        self._in_flight = 0
        self._missed = True
        self._closed = False
        self._pool = 0  # generation of the local pool (bumped when replaced)
        self._restarts: deque[float] = deque()
        self._failure_run = 0
        self._failed_logged: set[int] = set()
        self._last_failure = ""
        self.samples_made = self.samples_failed = 0
        self.chunks_remade = self.pool_restarts = self.served_from_read_ahead = 0

    @property
    def max_in_flight(self) -> int:
        """Tasks at the executor at once: two per worker, one to run, one to
        start right after it."""
        return 2 * max(1, self.engine.live_workers())

    # -- requests ------------------------------------------------------------
    async def message(self, indices: list[int]) -> tuple[bytes, int]:
        """The `data` reply for these indices, as UTF-8 JSON, and how many
        samples it holds (samples whose source raised are left out)."""
        if self._closed:
            raise RuntimeError("server shutting down")
        if len(indices) * 2 > self.read_ahead:
            self.read_ahead = min(self.MAX_READ_AHEAD, len(indices) * 2)
        runs = self._runs(indices, self._where.get)
        if runs is None:  # some of them are not made yet
            runs = await self._make_missing(indices)
        pieces: list[bytes | memoryview] = [DATA_HEAD]
        served = 0
        for chunk, start, stop in runs:
            slices, made = chunk.run(start, stop)
            pieces += slices
            served += made
            self._served(chunk, stop - start)
        if not served:
            raise RuntimeError(
                f"the source raised for all {len(indices)} samples of this batch "
                f"(last: {self._last_failure}); see the server log"
            )
        pieces[-1] = pieces[-1][:-1]  # the last sample's comma
        pieces.append(DATA_TAIL)
        return b"".join(pieces), served  # the one copy of the samples

    @staticmethod
    def _runs(
        indices: list[int], chunk_of: Callable[[int], _Chunk | None]
    ) -> list[Run] | None:
        """`indices` as runs of consecutive samples of made chunks; None if
        one of them is not made (or not even asked for) yet."""
        runs: list[Run] = []
        at, wanted = 0, len(indices)
        while at < wanted:
            chunk = chunk_of(indices[at])
            if chunk is None or not chunk.made:
                return None
            start = chunk.position(indices[at])
            stop = min(len(chunk.indices), start + wanted - at)
            if chunk.indices[start:stop] != indices[at : at + stop - start]:
                stop = start + 1  # not in the chunk's order (after a rewind)
            runs.append((chunk, start, stop))
            at += stop - start
        return runs

    async def _make_missing(self, indices: list[int]) -> list[Run]:
        """Wait for the chunks of `indices`, first asking for those no chunk
        makes yet (split so every worker takes a share, ahead of the
        read-ahead in the queue)."""
        self._missed = True
        owners = {index: self._where.get(index) for index in indices}
        unasked = [index for index, chunk in owners.items() if chunk is None]
        if unasked:
            workers = max(1, self.engine.live_workers())
            size = min(self.chunk, max(self.MIN_CHUNK, -(-len(unasked) // workers)))
            made = [
                _Chunk(unasked[at : at + size], urgent=True)
                for at in range(0, len(unasked), size)
            ]
            for chunk in made:
                self._hold(chunk)
                owners.update(dict.fromkeys(chunk.indices, chunk))
            self._queue.extendleft(reversed(made))
            self._pump()
        # Kept here: the read-ahead may let go of a chunk while we wait.
        chunks = list({id(c): c for c in owners.values() if c is not None}.values())
        await self._wait_for(chunks)
        runs = self._runs(indices, owners.get)
        if runs is None:
            raise RuntimeError("a chunk was done but not made")  # _wait_for raises
        return runs

    async def _wait_for(self, chunks: list[_Chunk]) -> None:
        pending = [c.done for c in chunks if not c.done.done()]
        waited = 0.0
        while pending:
            _, still = await asyncio.wait(pending, timeout=self.HEAL_AFTER)
            waited += self.HEAL_AFTER
            if still:
                self.engine.heal()
            if still and waited >= self.WAIT_WARNING:
                waited = 0.0
                logger.warning(
                    "a request has waited %.0f s for samples: %s (%d tasks queued "
                    "here, %d at the executor)",
                    self.WAIT_WARNING,
                    self.engine.why_waiting(),
                    len(self._queue),
                    self._in_flight,
                )
            pending = list(still)
        for chunk in chunks:
            chunk.done.result()  # raises if the chunk could not be made

    def prefetch(self, peek: Callable[[int], Sequence[int]]) -> None:
        """Top up the read-ahead from `peek(n)`, the stream's next n indices.

        Cheap when there is nothing to do: `peek` is called only when fewer
        than half the read-ahead is left or the last request missed.
        """
        if self._closed or (
            not self._missed and self._unserved >= self.read_ahead // 2
        ):
            return
        missed, self._missed = self._missed, False
        where, upcoming = self._where, peek(self.read_ahead)
        # What is held is usually what comes first: look at the rest only
        # (had it been otherwise, a request misses and the next call looks
        # at everything).
        known = 0 if missed else min(self._unserved, len(upcoming))
        new = list(filterfalse(where.__contains__, islice(upcoming, known, None)))
        size = self.chunk
        for start in range(0, len(new), size):
            chunk = _Chunk(new[start : start + size])
            self._hold(chunk)
            self._queue.append(chunk)
        limit = 2 * self.read_ahead + size
        if self._held > limit:
            for chunk in list(self._chunks):  # the oldest made ones go first
                if self._held <= limit:
                    break
                if chunk.made:
                    self._let_go(chunk)
        self._pump()

    # -- the chunks held -----------------------------------------------------
    def _hold(self, chunk: _Chunk) -> None:
        self._where.update(dict.fromkeys(chunk.indices, chunk))
        self._chunks[chunk] = None
        self._held += len(chunk.indices)
        self._unserved += len(chunk.indices)

    def _served(self, chunk: _Chunk, count: int) -> None:
        if not chunk.urgent:
            self.served_from_read_ahead += count
        if chunk not in self._chunks:  # let go of while its request waited
            return
        left = len(chunk.indices) - chunk.served
        chunk.served += count
        self._unserved -= min(count, max(left, 0))
        if chunk.served >= len(chunk.indices):
            self._let_go(chunk)

    def _let_go(self, chunk: _Chunk) -> None:
        if self._chunks.pop(chunk, False) is False:
            return
        # Each index is in one held chunk at most (map: no Python loop per index).
        deque(map(self._where.__delitem__, chunk.indices), maxlen=0)
        self._held -= len(chunk.indices)
        self._unserved -= max(len(chunk.indices) - chunk.served, 0)

    # -- tasks ---------------------------------------------------------------
    def _pump(self) -> None:
        """Hand queued chunks to the executor, up to max_in_flight."""
        queue = self._queue
        while queue and self._in_flight < self.max_in_flight and not self._closed:
            chunk = queue.popleft()
            if self.broken:
                self._fail(chunk, self.broken)
                continue
            if chunk.done.done():
                continue
            try:
                task = self.engine.executor.submit(self.engine.task, chunk.indices)
            except BrokenExecutor:  # found broken before a task told us
                queue.appendleft(chunk)
                self._replace_pool(self._pool, "the local worker pool broke")
                continue
            self._in_flight += 1
            asyncio.wrap_future(task).add_done_callback(
                partial(self._task_done, chunk, self._pool)
            )

    def _task_done(self, chunk: _Chunk, pool: int, task: asyncio.Future[Chunk]) -> None:
        self._in_flight -= 1
        problem = None if task.cancelled() else task.exception()  # (retrieved)
        if self._closed or task.cancelled():  # cancelled: only at shutdown
            self._fail(chunk, "server shutting down")
            return
        if problem is None:
            try:
                self._finish(chunk, *task.result())
            except Exception as exc:  # a malformed result must not strand requests
                logger.exception(
                    "the result of a task for %d samples", len(chunk.indices)
                )
                self._fail(chunk, f"a task's result was unusable: {exc!r}")
        else:
            chunk.attempts += 1
            if isinstance(problem, BrokenExecutor):
                self._replace_pool(pool, f"a local worker process died ({problem})")
            if self.broken or chunk.attempts >= self.MAX_ATTEMPTS:
                self._fail(chunk, self.broken or f"{type(problem).__name__}: {problem}")
            else:
                self.chunks_remade += 1
                self._queue.appendleft(chunk)
        self._pump()

    def _replace_pool(self, pool: int, why: str) -> None:
        """Once per broken pool: a new one, unless pools keep breaking."""
        if pool != self._pool:
            return  # the pool this task ran on has been replaced already
        self._pool += 1
        now = time.monotonic()
        self._restarts.append(now)
        while now - self._restarts[0] > 60:
            self._restarts.popleft()
        if len(self._restarts) > self.MAX_RESTARTS:
            self.broken = (
                f"sample workers keep dying ({len(self._restarts)} times in a "
                f"minute; last: {why}); restart the server after fixing the cause"
            )
            logger.error("%s", self.broken)
            return
        self.pool_restarts += 1
        logger.warning(
            "%s; starting new worker processes and making its unfinished chunks again",
            why,
        )
        self.engine.replace_executor()

    def _finish(
        self,
        chunk: _Chunk,
        parts: list[bytes],
        offsets: list[int],
        failures: dict[int, str],
        seconds: float,
        cpu_seconds: float,
    ) -> None:
        wanted, size = len(chunk.indices), sum(map(len, parts))
        if len(offsets) != wanted + 1 or offsets[-1] != size or not all(parts):
            raise ValueError(
                f"{len(offsets) - 1} samples ({size} bytes in {len(parts)} parts, "
                f"up to {offsets[-1] if offsets else None}) for {wanted} indices"
            )
        self._resize(seconds / wanted, size / wanted)
        chunk.made_from(parts, offsets)
        chunk.failed = bool(failures)
        self.samples_made += wanted - len(failures)
        if failures:
            self._record_failures(chunk, failures)
        else:
            self._failure_run = 0
        if self.engine.auto:
            self._choose_engine(cpu_seconds, wanted, size / wanted)
        if not chunk.done.done():
            chunk.done.set_result(None)

    def _resize(self, sample_seconds: float, sample_bytes: float) -> None:
        """Chunks of about the engine's task_seconds of work and at most
        MAX_CHUNK_BYTES, and a read-ahead of at least two chunks per worker."""
        average = self._sample_seconds
        average = 0.8 * average + 0.2 * sample_seconds if average else sample_seconds
        self._sample_seconds = average
        size = int(self.engine.task_seconds / max(average, 1e-9))
        size = min(size, int(self.MAX_CHUNK_BYTES / max(sample_bytes, 1.0)))
        self.chunk = max(self.MIN_CHUNK, min(self.MAX_CHUNK, size))
        wanted = 2 * self.chunk * max(1, self.engine.live_workers())
        self.read_ahead = max(self.read_ahead, min(self.MAX_READ_AHEAD, wanted))

    def _choose_engine(
        self, cpu_seconds: float, samples: int, sample_bytes: float
    ) -> None:
        """With the default --workers, once CHOOSE_AFTER samples are measured:
        keep the worker processes, or make samples in this process's thread
        if making one costs less CPU than receiving it from a process (then
        the processes only add work: a pool of samples, a memory-mapped
        array). A sample's cost is its chunk's CPU time, not its duration
        (the processes share the cores with this one and its clients), in the
        cheapest chunk: chunks of one near-free source vary by a factor of two
        or more in CPU per sample (bench/making.py prints the spread), as page
        faults of fresh memory and a cold cache only ever add to it. The first
        chunk does not count."""
        if self._measured is None:
            self._measured = (float("inf"), 0)
            return
        cheapest, count = self._measured
        if cpu_seconds > 0:  # (Windows counts it in 15.6 ms ticks: may read 0)
            cheapest = min(cheapest, cpu_seconds / samples)
        count += samples
        self._measured = (cheapest, count)
        if count < self.CHOOSE_AFTER or cheapest == float("inf"):
            return
        engine = cast(LocalEngine, self.engine)
        engine.auto = False  # chosen once, for the server's life
        making = cheapest
        receiving = sample_bytes * self.RECEIVE_SECONDS_PER_BYTE
        if making >= receiving:
            return
        engine.make_here()
        self._pool += 1  # a task the old pool loses is made again, in the thread
        logger.info(
            "a sample takes %.2f us to make and would take about %.2f us to "
            "receive from a worker process: making samples in a thread of the "
            "server from now on (--workers N keeps N processes)",
            making * 1e6,
            receiving * 1e6,
        )

    def _record_failures(self, chunk: _Chunk, failures: dict[int, str]) -> None:
        self.samples_failed += len(failures)
        for index, text in failures.items():
            self._last_failure = f"index {index}: {text}"
            if index not in self._failed_logged and len(self._failed_logged) < 10_000:
                self._failed_logged.add(index)
                logger.error("the source raised for sample index %d: %s", index, text)
        for start, end in pairwise(chunk.offsets):  # in order: a run of failures
            self._failure_run = 0 if end > start else self._failure_run + 1
        if self._failure_run >= self.FAILURE_RUN and self.broken is None:
            self.broken = (
                f"the source raised for each of the last {self._failure_run} "
                f"samples (last: {self._last_failure}); it is not asked for "
                "more: fix --source and restart the server"
            )
            logger.error("%s", self.broken)

    def _fail(self, chunk: _Chunk, message: str) -> None:
        self._let_go(chunk)
        if not chunk.done.done():
            chunk.done.set_exception(RuntimeError(message))
            chunk.done.add_done_callback(_consume_exception)

    # -- reporting and shutdown -----------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counters for the server's `status` reply."""
        return {
            "engine": self.engine.kind,
            "workers": self.engine.live_workers(),
            "chunks_in_flight": self._in_flight,
            "chunks_queued": len(self._queue),
            "read_ahead": self.read_ahead,
            "chunk": self.chunk,
            "samples_ahead": self._unserved,  # made or in the making, not served
            "samples_held": self._held,  # in memory here, served or not
            "samples_made": self.samples_made,
            "samples_failed": self.samples_failed,
            "samples_served_from_read_ahead": self.served_from_read_ahead,
            "chunks_remade": self.chunks_remade,
            "pool_restarts": self.pool_restarts,
            "worker_pids": self.engine.pids(),
        }

    def close(self) -> None:
        """Stop making samples; requests still waiting get an error."""
        self._closed = True
        for chunk in [*self._queue, *self._chunks]:
            self._fail(chunk, "server shutting down")
        self._queue.clear()
        self.engine.close()


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A chunk made ahead may fail with nobody awaiting it; don't warn about that.
    if not future.cancelled():
        future.exception()


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
        """The keyword arguments a source factory gets."""
        return {
            "seed": self.seed,
            "sequence_length": self.sequence_length,
            "max_iterations": self.max_iterations,
        }


class StreamServer:
    """Serves one `SampleStream` to every WebSocket peer."""

    def __init__(self, settings: Settings) -> None:
        """ValueError (one line) when the source or the cluster is unusable."""
        self.settings = settings
        spec, source_settings = settings.source, settings.source_settings()
        self.source = load_checked_source(spec, source_settings)
        self.dataset_info = self.source.dataset_info()
        self.stream = SampleStream.for_source(self.source)
        engine: LocalEngine | DaskEngine
        if settings.cluster:
            engine = DaskEngine(settings.cluster, spec, source_settings)
        else:
            engine = LocalEngine(
                self.source,
                spec,
                source_settings,
                settings.workers,
                auto=settings.workers_auto,
            )
        self.producer = SampleProducer(engine)
        self.connections: dict[ServerConnection, Connection] = {}
        self.connections_total = 0
        self.started = time.monotonic()
        self._ids = count(1)
        self._server: Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._progress: asyncio.Task[None] | None = None
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
                try:
                    if timeout == 0:  # no wait at all (pairing turned off)
                        raise TimeoutError
                    # asyncio.timeout, not wait_for: no task per message
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
        default="data_simulator:SimulatedHealthData",
        help="module:factory or path/to/file.py:factory that builds the samples",
    )
    add(
        "--workers",
        type=nonnegative_int,
        default=None,
        help="local processes that make samples (default: one per core, or a "
        "thread of the server process for samples cheaper to make than to "
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
    stop = asyncio.Event()
    stop_on_signals(stop)  # before the "listening" line: a script may act on it
    bound = settings.max_iterations
    logger.info(
        "listening; put this in input_source/output_source: %s "
        "(%s, sequence length %d, seed %d; samples made by %s)",
        server.url,
        "unbounded stream" if bound is None else f"{bound} samples per pass",
        settings.sequence_length,
        settings.seed,
        f"the Dask cluster at {settings.cluster}"
        if settings.cluster
        else f"{settings.workers} local processes"
        if settings.workers
        else "a thread of the server process",
    )
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
