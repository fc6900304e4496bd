"""The protocol core: one connection's conversation, without I/O.

`Connection` turns one incoming message into a list of things to do
(`Reply`, `SendSamples`, `Close`); the asyncio layer (server.py) does
them. The whole protocol is the two tables below: `PHASES`, a
connection's phases and the events that move it between them, and
`REQUESTS`, which handler answers which message type. Nothing here touches
a socket, so tests drive it with plain function calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from eirstream.stream import SampleStream
from eirstream.streams import Counts

logger = logging.getLogger("eirstream.protocol")

PROTOCOL_VERSION = "1.0"


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
class Phase(StrEnum):
    AWAITING_HANDSHAKE = "awaiting-handshake"
    READY = "ready"
    CLOSED = "closed"


class Event(StrEnum):
    HANDSHAKE = "handshake"  # a valid handshake arrived
    REQUEST = "request"  # a valid request was answered
    BAD_MESSAGE = "bad-message"  # a message the protocol rejects
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    LOST = "lost"  # the socket is gone


AWAITING_HANDSHAKE, READY, CLOSED = Phase

PHASES: dict[Phase, dict[Event, Phase]] = {  # phase -> {event -> next phase}
    AWAITING_HANDSHAKE: {
        Event.HANDSHAKE: READY,
        Event.BAD_MESSAGE: CLOSED,
        Event.HANDSHAKE_TIMEOUT: CLOSED,
        Event.LOST: CLOSED,
    },
    READY: {Event.REQUEST: READY, Event.BAD_MESSAGE: READY, Event.LOST: CLOSED},
    CLOSED: {},
}


class MessageType(StrEnum):  # the requests a READY connection accepts
    GET_INFO = "getInfo"
    GET_DATA = "getData"
    HEARTBEAT = "heartbeat"
    RESET = "reset"
    STATUS = "status"
    SET_VALIDATION_IDS = "setValidationIds"
    HANDSHAKE = "handshake"


REQUESTS: dict[str, str] = {  # message type (in READY) -> handler method
    MessageType.GET_INFO: "_on_get_info",
    MessageType.GET_DATA: "_on_get_data",
    MessageType.HEARTBEAT: "_on_heartbeat",
    MessageType.RESET: "_on_reset",
    MessageType.STATUS: "_on_status",
    MessageType.SET_VALIDATION_IDS: "_on_set_validation_ids",
    MessageType.HANDSHAKE: "_on_repeated_handshake",
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
    """Stream indices in order as compact ranges for DEBUG logs: "0-31,40,42-50"."""
    ranges: list[str] = []
    start = previous = None
    for index in [*indices, None]:
        if start is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ",".join(ranges)


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
        counts: Counts | None = None,
    ) -> None:
        """`server_status` adds to `status` replies; `samples_broken` says why
        no samples can be made (then `getData` gets that as an error);
        `counts` are the stream's, where requests and errors add up."""
        self.id = conn_id
        self.phase = AWAITING_HANDSHAKE
        self.stream = stream
        self.dataset_info = dataset_info
        self.max_batch_size = max_batch_size
        self.server_status = server_status
        self.samples_broken = samples_broken
        self.counts = counts if counts is not None else Counts()
        self.heartbeat_pending = False
        self.samples_served = 0
        self.requests = 0
        self.errors = 0
        self.worker_id: Any = None
        self.warned_batch_size = False
        stream.connect(conn_id)

    # -- the one place that changes phase ---------------------------------
    def _enter(self, event: Event) -> None:
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
            if owed_heartbeat and not (
                kind == MessageType.GET_DATA and self.phase == READY
            ):
                outputs.append(HEARTBEAT)
                owed_heartbeat = False
            if self.phase == AWAITING_HANDSHAKE:
                outputs += self._on_handshake(message)
                self._enter(Event.HANDSHAKE)
            else:
                handler = REQUESTS.get(kind)
                if handler is None:
                    raise BadMessage(
                        f"unknown message type {excerpt(kind)}; this server "
                        f"accepts: {', '.join(sorted(REQUESTS))}"
                    )
                self.requests += 1
                self.counts.requests += 1
                outputs += getattr(self, handler)(payload_of(message))
                owed_heartbeat = False  # answered by the data reply
                self._enter(Event.REQUEST)
        except BadMessage as problem:
            self.errors += 1
            self.counts.errors += 1
            if owed_heartbeat:
                outputs.append(HEARTBEAT)
            outputs.append(error(str(problem)))
            if self.phase == AWAITING_HANDSHAKE:
                outputs.append(Close(POLICY_VIOLATION, "handshake required"))
            self._enter(Event.BAD_MESSAGE)
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
        self._enter(Event.HANDSHAKE_TIMEOUT)
        return [
            error(f"no handshake within {seconds:g} s of connecting; closing"),
            Close(POLICY_VIOLATION, "handshake timeout"),
        ]

    def connection_lost(self) -> None:
        if self.phase != CLOSED:
            self._enter(Event.LOST)

    # -- handlers: each returns its replies or raises BadMessage ------------
    def _on_handshake(self, message: dict[str, Any]) -> list[Output]:
        if message["type"] != MessageType.HANDSHAKE:
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
        if outcome.resumed:
            text = (
                "training resumes where this stream's --state left it: epoch "
                f"{outcome.epoch}, position {outcome.position}"
            )
        elif outcome.rewound:
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
