"""The sans-I/O protocol core, `Connection`, driven by plain calls (no sockets).

Each test feeds messages to `Connection.receive` and checks the exact list of
outputs (`Reply`, `SendSamples`, `Close`), the phase, and the shared stream.
"""

import json
from typing import Any

import pytest

from data_simulator import SimulatedHealthData
from eirstream.protocol import (
    AWAITING_HANDSHAKE,
    CLOSED,
    PHASES,
    READY,
    REQUESTS,
    Close,
    Connection,
    Output,
    Reply,
    SendSamples,
)
from eirstream.stream import SampleStream

# docs/protocol.md, "Requests and our answers": what the client sends, one each.
CLIENT_MESSAGES: dict[str, dict[str, Any]] = {
    "handshake": {"type": "handshake", "version": "1.0", "worker_id": 0},
    "getInfo": {"type": "getInfo"},
    "getData": {"type": "getData", "payload": {"batch_size": 4}},
    "heartbeat": {"type": "heartbeat"},
    "reset": {"type": "reset", "payload": {}},
    "status": {"type": "status", "payload": {}},
    "setValidationIds": {
        "type": "setValidationIds",
        "payload": {"validation_ids": ["sample_1", "sample_5"]},
    },
}
# docs/protocol.md: the reply types the client knows (plus the `reset` notice).
REPLY_TYPES = {
    "info",
    "data",
    "status",
    "heartbeat",
    "error",
    "handshake",
    "validationIdsConfirmation",
    "resetConfirmation",
    "reset",
}
HEARTBEAT = Reply({"type": "heartbeat"})
TERMINATE = Reply({"type": "data", "payload": ["terminate"]})
INFO = SimulatedHealthData().dataset_info()

# Frames that are not a usable message at all, with what the error must name.
MALFORMED: list[tuple[str | bytes, str]] = [
    ("this is not json", "json"),
    ("", "json"),
    ('{"type": "getInfo"', "json"),
    ("[1, 2]", "object"),
    ('"getInfo"', "object"),
    ("null", "object"),
    ('{"payload": {}}', "type"),
    ('{"type": 5}', "type"),
    ('{"type": null}', "type"),
    ('{"type": ["getInfo"]}', "type"),
    (b'{"type": "handshake", "version": "1.0"}', "binary"),
]


def make(num_samples: int | None = 10, **kwargs: Any) -> Connection:
    return Connection(1, SampleStream(num_samples), INFO, **kwargs)


def send(conn: Connection, message: dict[str, Any]) -> list[Output]:
    return conn.receive(json.dumps(message))


def ready(num_samples: int | None = 10, **kwargs: Any) -> Connection:
    conn = make(num_samples, **kwargs)
    assert send(conn, CLIENT_MESSAGES["handshake"]) == [
        Reply({"type": "handshake", "version": "1.0"})
    ]
    assert conn.phase == READY
    return conn


def error_text(output: Output) -> str:
    assert isinstance(output, Reply), output
    assert output.message["type"] == "error", output
    text = output.message["payload"]["message"]
    assert isinstance(text, str) and text, output
    return text


def get_data(size: Any) -> dict[str, Any]:
    return {"type": "getData", "payload": {"batch_size": size}}


def snapshot(conn: Connection) -> tuple[Any, ...]:
    return (conn.phase, conn.heartbeat_pending, conn.stream.status())


# -- the tables ----------------------------------------------------------------
def test_requests_table_covers_exactly_the_client_messages_of_protocol_md() -> None:
    assert set(REQUESTS) == set(CLIENT_MESSAGES)
    for kind, handler in REQUESTS.items():
        assert callable(getattr(Connection, handler, None)), (kind, handler)


def test_phases_table_opens_only_on_a_handshake_and_closes_on_a_loss() -> None:
    assert set(PHASES) == {AWAITING_HANDSHAKE, READY, CLOSED}
    assert PHASES[CLOSED] == {}  # nothing leaves CLOSED
    for phase, events in PHASES.items():
        assert set(events.values()) <= set(PHASES), phase
        if phase != CLOSED:
            assert events["lost"] == CLOSED, phase
    # Only a handshake opens the conversation; nothing goes back to waiting.
    opened = [e for e, to in PHASES[AWAITING_HANDSHAKE].items() if to == READY]
    assert opened == ["handshake"]
    assert AWAITING_HANDSHAKE not in PHASES[READY].values()
    # A bad message closes a connection only before the handshake.
    assert PHASES[AWAITING_HANDSHAKE]["bad-message"] == CLOSED
    assert PHASES[READY]["bad-message"] == READY


def test_every_reply_is_a_type_the_client_knows() -> None:
    conn = make(3)
    replies: list[dict[str, Any]] = []
    extra = [get_data(4), {"type": "nope"}, get_data(0)]
    for message in [*CLIENT_MESSAGES.values(), *extra] * 3:
        for output in [
            *send(conn, message),
            *conn.receive("{"),
            *conn.flush_heartbeat(),
        ]:
            if isinstance(output, SendSamples):
                continue
            assert isinstance(output, Reply), output
            replies.append(output.message)
    assert {r["type"] for r in replies} == REPLY_TYPES
    for reply in replies:
        assert json.loads(json.dumps(reply)) == reply


# -- AWAITING_HANDSHAKE --------------------------------------------------------
def test_handshake_opens_the_conversation() -> None:
    conn = make()
    assert conn.phase == AWAITING_HANDSHAKE
    assert conn.stream.status()["open_connections"] == 1
    assert send(conn, CLIENT_MESSAGES["handshake"]) == [
        Reply({"type": "handshake", "version": "1.0"})
    ]
    assert conn.phase == READY


def test_handshake_without_worker_id_is_accepted() -> None:
    conn = make()
    assert send(conn, {"type": "handshake", "version": "1.0"}) == [
        Reply({"type": "handshake", "version": "1.0"})
    ]
    assert conn.phase == READY


def assert_refused(conn: Connection, outputs: list[Output], named: str) -> None:
    """error naming the problem, then Close(1008); the connection is gone."""
    assert len(outputs) == 2, outputs
    assert named.lower() in error_text(outputs[0]).lower()
    assert isinstance(outputs[1], Close) and outputs[1].code == 1008, outputs
    assert conn.phase == CLOSED
    status = conn.stream.status()
    assert status["open_connections"] == 0
    assert status["current_position"] == 0  # nothing was taken or moved
    assert status["validation_ids"] == 0
    # CLOSED: whatever arrives, nothing goes out.
    for message in CLIENT_MESSAGES.values():
        assert send(conn, message) == []
    assert conn.receive("garbage") == []
    assert conn.flush_heartbeat() == []


@pytest.mark.parametrize("kind", sorted(set(CLIENT_MESSAGES) - {"handshake"}))
def test_any_request_before_the_handshake_is_refused(kind: str) -> None:
    conn = make()
    outputs = send(conn, CLIENT_MESSAGES[kind])
    assert_refused(conn, outputs, "handshake")
    assert kind in error_text(outputs[0])


def test_unknown_type_before_the_handshake_is_refused() -> None:
    conn = make()
    assert_refused(conn, send(conn, {"type": "hello"}), "handshake")


@pytest.mark.parametrize(("raw", "named"), MALFORMED)
def test_malformed_first_message_is_refused(raw: str | bytes, named: str) -> None:
    conn = make()
    assert_refused(conn, conn.receive(raw), named)


@pytest.mark.parametrize(
    ("handshake", "named"),
    [
        ({"type": "handshake", "version": "2.0", "worker_id": 0}, "2.0"),
        ({"type": "handshake", "version": "0.9"}, "0.9"),
        ({"type": "handshake", "version": 1.0}, "version"),
        ({"type": "handshake", "version": None}, "version"),
        ({"type": "handshake", "worker_id": 0}, "version"),
        ({"type": "handshake"}, "version"),
    ],
)
def test_handshake_with_a_wrong_or_missing_version_is_refused(
    handshake: dict[str, Any], named: str
) -> None:
    conn = make()
    outputs = send(conn, handshake)
    assert_refused(conn, outputs, named)
    assert "1.0" in error_text(outputs[0])  # says what the server speaks


# -- READY: each request's replies ---------------------------------------------
def test_get_info_replies_with_the_dataset_info() -> None:
    conn = ready()
    assert send(conn, {"type": "getInfo"}) == [Reply({"type": "info", "payload": INFO})]
    assert send(conn, {"type": "getInfo", "payload": {}}) == [
        Reply({"type": "info", "payload": INFO})
    ]


def test_get_data_hands_out_the_next_indices() -> None:
    conn = ready(100)
    assert send(conn, get_data(4)) == [SendSamples([0, 1, 2, 3])]
    assert send(conn, get_data(1)) == [SendSamples([4])]
    assert send(conn, get_data(10)) == [SendSamples(list(range(5, 15)))]
    assert conn.stream.status()["current_position"] == 15


def test_get_data_above_the_maximum_batch_size_is_served_the_maximum() -> None:
    conn = ready(100, max_batch_size=8)
    assert send(conn, get_data(50)) == [SendSamples(list(range(8)))]
    assert send(conn, get_data(3)) == [SendSamples([8, 9, 10])]


def test_heartbeat_alone_is_answered_when_its_window_ends() -> None:
    conn = ready()
    assert send(conn, {"type": "heartbeat"}) == []  # held: a getData may follow
    assert conn.heartbeat_pending
    assert conn.flush_heartbeat() == [HEARTBEAT]
    assert conn.flush_heartbeat() == []  # answered once
    assert not conn.heartbeat_pending


@pytest.mark.parametrize(
    "message", [{"type": "reset"}, {"type": "reset", "payload": {}}]
)
def test_reset_gets_exactly_a_confirmation_and_a_reset_notice(
    message: dict[str, Any],
) -> None:
    conn = ready(20)
    send(conn, get_data(5))
    outputs = send(conn, message)
    assert [o.message["type"] for o in outputs] == ["resetConfirmation", "reset"]
    for output in outputs:
        assert isinstance(output.message["payload"]["message"], str)
    assert conn.stream.status()["current_position"] == 0
    assert send(conn, get_data(2)) == [SendSamples([0, 1])]


def test_status_replies_with_the_stream_state() -> None:
    conn = ready(50)
    send(conn, get_data(7))
    (output,) = send(conn, {"type": "status", "payload": {}})
    assert output.message["type"] == "status"
    payload = output.message["payload"]
    assert payload["current_position"] == 7
    assert payload["max_iterations"] == 50
    assert payload["remaining_iterations"] == 43
    assert payload["open_connections"] == 1
    json.dumps(payload)
    (again,) = send(conn, {"type": "status"})  # payload may be absent
    assert again.message["type"] == "status"


def test_set_validation_ids_is_confirmed_and_takes_effect() -> None:
    conn = ready(10)
    (output,) = send(conn, CLIENT_MESSAGES["setValidationIds"])
    assert output.message["type"] == "validationIdsConfirmation"
    assert "2" in output.message["payload"]["message"]  # how many it got
    assert conn.stream.status()["validation_ids"] == 2
    assert send(conn, get_data(10)) == [SendSamples([0, 2, 3, 4, 6, 7, 8, 9])]


def test_second_handshake_is_an_error_and_the_connection_stays_ready() -> None:
    conn = ready(10)
    send(conn, get_data(3))
    before = snapshot(conn)
    (output,) = send(conn, CLIENT_MESSAGES["handshake"])
    assert "handshake" in error_text(output)
    assert snapshot(conn) == before
    assert send(conn, get_data(1)) == [SendSamples([3])]


@pytest.mark.parametrize("kind", ["hello", "getdata", "GetData", "", "data", "info"])
def test_unknown_type_is_an_error_naming_it_and_the_connection_stays_ready(
    kind: str,
) -> None:
    conn = ready(10)
    before = snapshot(conn)
    (output,) = send(conn, {"type": kind, "payload": {"batch_size": 2}})
    text = error_text(output)
    assert repr(kind) in text
    assert "getData" in text  # and lists what is accepted
    assert snapshot(conn) == before
    assert send(conn, get_data(1)) == [SendSamples([0])]


@pytest.mark.parametrize(("raw", "named"), MALFORMED)
def test_malformed_message_when_ready_is_an_error_only(
    raw: str | bytes, named: str
) -> None:
    conn = ready(10)
    before = snapshot(conn)
    (output,) = conn.receive(raw)
    assert named in error_text(output).lower()
    assert snapshot(conn) == before


# -- end of the stream ---------------------------------------------------------
def test_terminate_repeats_after_exhaustion_until_a_reset() -> None:
    conn = ready(5)
    assert send(conn, get_data(3)) == [SendSamples([0, 1, 2])]
    assert send(conn, get_data(3)) == [SendSamples([3, 4])]  # partial last batch
    for _ in range(4):
        assert send(conn, get_data(3)) == [TERMINATE]  # and no Close
        assert conn.phase == READY
    # Other requests still work at the end of the stream.
    (status,) = send(conn, {"type": "status"})
    assert status.message["payload"]["remaining_iterations"] == 0
    outputs = send(conn, {"type": "reset"})
    assert [o.message["type"] for o in outputs] == ["resetConfirmation", "reset"]
    assert send(conn, get_data(3)) == [SendSamples([0, 1, 2])]


def test_empty_stream_terminates_at_once() -> None:
    conn = ready(0)
    assert send(conn, get_data(1)) == [TERMINATE]
    assert send(conn, get_data(1)) == [TERMINATE]


# -- the heartbeat pairing rule ------------------------------------------------
def test_heartbeat_then_get_data_is_answered_by_the_data_alone() -> None:
    conn = ready(10)
    assert send(conn, {"type": "heartbeat"}) == []
    assert send(conn, get_data(2)) == [SendSamples([0, 1])]
    assert not conn.heartbeat_pending
    assert conn.flush_heartbeat() == []


def test_heartbeat_then_get_data_at_the_end_is_answered_by_terminate_alone() -> None:
    conn = ready(2)
    send(conn, get_data(2))
    assert send(conn, {"type": "heartbeat"}) == []
    assert send(conn, get_data(2)) == [TERMINATE]
    assert conn.flush_heartbeat() == []


@pytest.mark.parametrize(
    "message",
    [
        CLIENT_MESSAGES["getInfo"],
        CLIENT_MESSAGES["reset"],
        CLIENT_MESSAGES["status"],
        CLIENT_MESSAGES["setValidationIds"],
        CLIENT_MESSAGES["handshake"],
        {"type": "unknownThing"},
    ],
    ids=lambda m: m["type"],
)
def test_heartbeat_then_anything_else_gets_the_heartbeat_reply_first(
    message: dict[str, Any],
) -> None:
    alone = ready(10)
    expected = send(alone, message)
    conn = ready(10)
    assert send(conn, {"type": "heartbeat"}) == []
    outputs = send(conn, message)
    assert outputs[0] == HEARTBEAT
    assert outputs[1:] == expected
    assert conn.flush_heartbeat() == []


def test_heartbeat_then_heartbeat_answers_the_first_and_holds_the_second() -> None:
    conn = ready(10)
    assert send(conn, {"type": "heartbeat"}) == []
    assert send(conn, {"type": "heartbeat"}) == [HEARTBEAT]
    assert conn.heartbeat_pending
    assert conn.flush_heartbeat() == [HEARTBEAT]


@pytest.mark.parametrize(("raw", "named"), MALFORMED)
def test_heartbeat_then_malformed_gets_heartbeat_then_error(
    raw: str | bytes, named: str
) -> None:
    conn = ready(10)
    send(conn, {"type": "heartbeat"})
    heartbeat, error = conn.receive(raw)
    assert heartbeat == HEARTBEAT
    assert named in error_text(error).lower()
    assert conn.flush_heartbeat() == []


@pytest.mark.parametrize("size", [0, -1, "4", None, 2.5, True])
def test_heartbeat_then_rejected_get_data_still_answers_the_heartbeat(
    size: Any,
) -> None:
    conn = ready(10)
    send(conn, {"type": "heartbeat"})
    before = snapshot(conn)
    heartbeat, error = send(conn, get_data(size))
    assert heartbeat == HEARTBEAT
    assert "batch_size" in error_text(error)
    assert conn.stream.status() == before[2]
    assert conn.flush_heartbeat() == []


def test_eir_training_loop_gets_one_reply_per_fetch() -> None:
    # The unread heartbeat, then heartbeat + getData per batch.
    conn = ready(10)
    outputs = send(conn, {"type": "heartbeat"})
    for _ in range(4):
        outputs += send(conn, {"type": "heartbeat"})
        outputs += send(conn, get_data(3))
    assert outputs == [
        HEARTBEAT,  # the first, unread heartbeat, answered in order
        SendSamples([0, 1, 2]),
        SendSamples([3, 4, 5]),
        SendSamples([6, 7, 8]),
        SendSamples([9]),
    ]


def test_a_held_heartbeat_is_dropped_when_the_connection_is_lost() -> None:
    conn = ready(10)
    send(conn, {"type": "heartbeat"})
    conn.connection_lost()
    assert conn.flush_heartbeat() == []


# -- connection lost -----------------------------------------------------------
def test_connection_lost_leaves_the_stream_and_keeps_its_position() -> None:
    stream = SampleStream(100)
    first = Connection(1, stream, INFO)
    second = Connection(2, stream, INFO)
    for conn in (first, second):
        send(conn, CLIENT_MESSAGES["handshake"])
    assert stream.status()["open_connections"] == 2
    send(first, get_data(30))
    first.connection_lost()
    status = stream.status()
    assert first.phase == CLOSED
    assert status["open_connections"] == 1
    assert status["current_position"] == 30
    assert status["rewinds"] == 0
    assert send(first, get_data(1)) == []
    first.connection_lost()  # twice is harmless
    assert stream.status()["open_connections"] == 1
    assert send(second, get_data(2)) == [SendSamples([30, 31])]


def test_connection_lost_before_the_handshake_is_closed_and_ignores_messages() -> None:
    conn = make()
    conn.connection_lost()
    assert conn.phase == CLOSED
    assert conn.stream.status()["open_connections"] == 0
    assert send(conn, CLIENT_MESSAGES["handshake"]) == []


# -- rejected requests change nothing ------------------------------------------
REJECTED: list[tuple[dict[str, Any], str]] = [
    ({"type": "getData"}, "batch_size"),
    ({"type": "getData", "payload": {}}, "batch_size"),
    ({"type": "getData", "payload": {"size": 4}}, "batch_size"),
    (get_data(0), "batch_size"),
    (get_data(-3), "batch_size"),
    (get_data("4"), "batch_size"),
    (get_data(4.0), "batch_size"),
    (get_data(True), "batch_size"),
    (get_data(None), "batch_size"),
    (get_data([4]), "batch_size"),
    ({"type": "getData", "payload": [4]}, "payload"),
    ({"type": "getData", "payload": 4}, "payload"),
    ({"type": "reset", "payload": "now"}, "payload"),
    ({"type": "status", "payload": [1]}, "payload"),
    ({"type": "setValidationIds"}, "validation_ids"),
    ({"type": "setValidationIds", "payload": {}}, "validation_ids"),
    ({"type": "setValidationIds", "payload": {"validation_ids": "sample_1"}}, "list"),
    ({"type": "setValidationIds", "payload": {"validation_ids": None}}, "list"),
    (
        {"type": "setValidationIds", "payload": {"validation_ids": ["sample_1", 2]}},
        "validation_ids[1]",
    ),
    ({"type": "handshake", "version": "1.0"}, "handshake"),
]


@pytest.mark.parametrize(
    ("message", "named"), REJECTED, ids=[json.dumps(m) for m, _ in REJECTED]
)
def test_rejected_request_gets_an_error_and_changes_nothing(
    message: dict[str, Any], named: str
) -> None:
    conn = ready(20)
    send(conn, CLIENT_MESSAGES["setValidationIds"])  # state worth keeping
    send(conn, get_data(4))
    before = snapshot(conn)
    (output,) = send(conn, message)
    assert named in error_text(output)
    assert snapshot(conn) == before
    assert conn.phase == READY
    # The stream goes on exactly where it was, still skipping sample_5.
    assert send(conn, get_data(3)) == [SendSamples([6, 7, 8])]
