"""Fuzzing: arbitrary message sequences against the protocol core and a socket.

The property-based test drives `Connection` (no I/O) with valid requests,
invalid ones and plain junk, over several connections sharing one stream,
and checks the protocol's invariants after every step. The socket test
sends a few thousand random frames to a real server and then checks that a
well-behaved client still gets exactly the right data.
"""

import json
import logging
import random
import threading
import time

import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.eir_like_client import EirLikeClient
from support.servers import running_server
from support.waiting import HANG, wait_until
from websocket import ABNF

from data_simulator import SimulatedHealthData
from eirstream.protocol import (
    AWAITING_HANDSHAKE,
    CLOSED,
    HEARTBEAT,
    READY,
    REQUESTS,
    Close,
    Connection,
    Reply,
    SendSamples,
)
from eirstream.stream import SampleStream

MAX_BATCH = 10
MAX_ERROR_LENGTH = 400
HANDSHAKE = {"type": "handshake", "version": "1.0", "worker_id": 0}
REPLY_TYPES = {
    "handshake",
    "info",
    "data",
    "heartbeat",
    "status",
    "resetConfirmation",
    "reset",
    "validationIdsConfirmation",
    "error",
}
# The reply shape each valid request gets (heartbeat: held, see the checks).
SHAPE_OF = {
    "getData": "data",
    "getInfo": "info",
    "status": "status",
    "reset": "reset",
    "setValidationIds": "validationIds",
}

# -- strategies ------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
not_an_object = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(scalars, max_size=3),
)
extra_fields = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k not in ("type", "payload", "version")),
    scalars,
    max_size=2,
)
validation_ids = st.lists(
    st.one_of(st.integers(0, 70).map(lambda i: f"sample_{i}"), st.text(max_size=10)),
    max_size=12,
)


def with_extras(kind: str, message: dict) -> st.SearchStrategy:
    """A valid request, with unknown extra top-level fields that must not matter."""
    return extra_fields.map(lambda extra: ("valid:" + kind, {**extra, **message}))


valid_requests = st.one_of(
    st.integers(1, 25).flatmap(
        lambda n: with_extras(
            "getData", {"type": "getData", "payload": {"batch_size": n}}
        )
    ),
    with_extras("heartbeat", {"type": "heartbeat"}),
    with_extras("getInfo", {"type": "getInfo"}),
    with_extras("reset", {"type": "reset"}),
    with_extras("reset", {"type": "reset", "payload": {}}),
    with_extras("status", {"type": "status", "payload": {}}),
    validation_ids.flatmap(
        lambda ids: with_extras(
            "setValidationIds",
            {"type": "setValidationIds", "payload": {"validation_ids": ids}},
        )
    ),
)
bad_batch_sizes = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
invalid_requests = st.one_of(
    bad_batch_sizes.map(lambda b: {"type": "getData", "payload": {"batch_size": b}}),
    st.sampled_from([{"type": "getData"}, {"type": "getData", "payload": {}}]),
    st.tuples(st.sampled_from(sorted(REQUESTS)), not_an_object).map(
        lambda t: {"type": t[0], "payload": t[1]}
    ),
    st.text(max_size=12).filter(lambda t: t not in REQUESTS).map(lambda t: {"type": t}),
    st.one_of(
        st.integers(), st.none(), st.booleans(), st.lists(scalars, max_size=2)
    ).map(lambda t: {"type": t, "payload": {}}),
    json_values.filter(lambda v: not isinstance(v, list)).map(
        lambda v: {"type": "setValidationIds", "payload": {"validation_ids": v}}
    ),
    st.lists(st.one_of(st.integers(), st.none(), st.booleans()), min_size=1).map(
        lambda bad: {
            "type": "setValidationIds",
            "payload": {"validation_ids": ["sample_1", *bad]},
        }
    ),
    st.just(HANDSHAKE),  # a second handshake
    json_values.filter(lambda v: not isinstance(v, dict)),  # not an object
    json_values.filter(lambda v: isinstance(v, dict) and "type" not in v),
)
# Numbers with more digits than Python converts (4300) are still JSON text.
huge_numbers = st.tuples(st.integers(4301, 6000), st.sampled_from("19")).map(
    lambda t: '{"type": "getData", "payload": {"batch_size": ' + t[1] * t[0] + "}}"
)
frames = st.one_of(
    valid_requests.map(lambda t: (t[0], json.dumps(t[1]))),
    invalid_requests.map(lambda m: ("invalid", json.dumps(m))),
    huge_numbers.map(lambda text: ("invalid", text)),
    st.binary(max_size=40).map(lambda b: ("invalid", b)),
    st.text(max_size=40).map(lambda t: ("any", t)),
    json_values.map(lambda v: ("any", json.dumps(v))),
)
first_frames = st.one_of(
    st.just(json.dumps(HANDSHAKE)),
    st.sampled_from(["2.0", 1.0, None, "1.0 ", ["1.0"]]).map(
        lambda v: json.dumps({"type": "handshake", "version": v})
    ),
    frames.map(lambda f: f[1]),
)


def is_valid_handshake(raw: str | bytes) -> bool:
    """What the first message must be: an object, type handshake, version "1.0"."""
    try:
        message = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return False
    return (
        isinstance(message, dict)
        and message.get("type") == "handshake"
        and message.get("version") == "1.0"
    )


actions = st.lists(
    st.one_of(
        st.tuples(st.just("open"), first_frames),
        st.tuples(st.just("send"), st.integers(0, 3), frames),
        # EIR's pattern: a heartbeat directly followed by another message.
        st.tuples(st.just("pair"), st.integers(0, 3), frames),
        st.tuples(st.just("flush"), st.integers(0, 3)),
        st.tuples(st.just("lose"), st.integers(0, 3)),
    ),
    max_size=45,
)


# -- the checks ------------------------------------------------------------------
def check_output(output: object) -> None:
    assert isinstance(output, Reply | SendSamples | Close), output
    if isinstance(output, Reply):
        message = output.message
        json.dumps(message)  # always encodable
        assert message["type"] in REPLY_TYPES, message
        if message["type"] == "error":
            assert set(message) == {"type", "payload"}
            text = message["payload"]["message"]
            assert isinstance(text, str) and text.strip(), message
            assert len(text) <= MAX_ERROR_LENGTH, len(text)
    elif isinstance(output, SendSamples):
        assert 1 <= len(output.indices) <= MAX_BATCH, output
    else:
        assert output.code == 1008 and output.reason, output


def shape(body: list) -> str:
    """The kind of reply a request got."""
    if len(body) == 1 and isinstance(body[0], SendSamples):
        return "data"
    assert all(isinstance(b, Reply) for b in body), body
    types = [b.message["type"] for b in body]
    if types == ["data"]:
        assert body[0].message["payload"] == ["terminate"], body
        return "data"
    if types == ["resetConfirmation", "reset"]:
        return "reset"
    if types == ["validationIdsConfirmation"]:
        return "validationIds"
    assert len(types) == 1 and types[0] in ("error", "info", "status"), types
    return types[0]


class Model:
    """What the stream has served, to check that no index is served twice."""

    def __init__(self, source: SimulatedHealthData, stream: SampleStream) -> None:
        self.source, self.stream = source, stream
        self.served: set[int] = set()  # since the last rewind
        self.got: dict[int, set[int]] = {}  # per connection, since the last rewind
        self.repeatable: set[int] = set()  # given back by a reset that joined
        self.repeats_allowed = 0
        self.skip: set[int] = set()

    def served_to(self, conn: int, indices: list[int]) -> None:
        end = self.source.num_samples
        for index in indices:
            assert index >= 0 and (end is None or index < end), index
            assert index not in self.skip, f"validation index {index} served"
            if index in self.served:
                assert index in self.repeatable and self.repeats_allowed > 0, (
                    f"index {index} served twice without a rewind"
                )
                self.repeats_allowed -= 1
                self.repeatable.discard(index)
            self.served.add(index)
            self.got.setdefault(conn, set()).add(index)

    def after_reset(self, conn: int, before: dict, after: dict) -> None:
        if after["rewinds"] > before["rewinds"]:
            self.served.clear()
            self.got.clear()
            self.repeatable.clear()
            self.repeats_allowed = 0
        else:
            returned = after["returned_to_front"] - before["returned_to_front"]
            assert returned >= 0
            if returned:
                self.repeatable |= self.got.get(conn, set())
                self.repeats_allowed += returned

    def after_validation_ids(self, ids: list[str]) -> None:
        self.skip = {i for i in map(self.source.index_of, ids) if i is not None}


def step_ready(conn: Connection, model: Model, tag: str, raw: str | bytes) -> None:
    before = model.stream.status()
    served_before = conn.samples_served
    owed = conn.heartbeat_pending
    outputs = conn.receive(raw)
    for output in outputs:
        check_output(output)
    assert conn.phase == READY  # no message ends a connection after its handshake
    if conn.heartbeat_pending:  # this was a heartbeat: its reply is held
        assert tag in ("valid:heartbeat", "any"), (tag, raw)
        assert outputs == ([HEARTBEAT] if owed else [])
        assert model.stream.status() == before
        return
    assert tag != "valid:heartbeat"
    if owed and outputs and isinstance(outputs[0], SendSamples | Reply):
        if outputs[0] == HEARTBEAT:
            body = outputs[1:]
            assert shape(body) != "data", "a data reply must absorb the heartbeat"
        else:
            body = outputs
            assert shape(body) == "data", "only a data reply absorbs a heartbeat"
    else:
        body = outputs
    kind = shape(body)
    if tag.startswith("valid:"):
        assert kind == SHAPE_OF[tag.removeprefix("valid:")], (tag, raw, body)
    elif tag == "invalid":
        assert kind == "error", (raw, body)
    if kind == "error":  # a rejected request changes nothing
        assert model.stream.status() == before
        assert conn.samples_served == served_before
        return
    if kind == "data" and isinstance(body[0], SendSamples):
        model.served_to(conn.id, body[0].indices)
        assert conn.samples_served == served_before + len(body[0].indices)
    elif kind == "reset":
        model.after_reset(conn.id, before, model.stream.status())
    elif kind == "validationIds":
        model.after_validation_ids(json.loads(raw)["payload"]["validation_ids"])


@settings(
    max_examples=150,
    deadline=None,
    database=None,  # no example files in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(num_samples=st.sampled_from([None, 0, 1, 40]), script=actions)
def test_connection_keeps_its_invariants_under_arbitrary_input(
    num_samples: int | None, script: list[tuple]
) -> None:
    source = SimulatedHealthData(max_iterations=num_samples)
    stream = SampleStream.for_source(source)
    model = Model(source, stream)
    info = source.dataset_info()
    conns: list[Connection] = []

    def open_connection(first: str | bytes) -> None:
        conn = Connection(len(conns) + 1, stream, info, max_batch_size=MAX_BATCH)
        conns.append(conn)
        assert conn.phase == AWAITING_HANDSHAKE
        before = stream.status()
        outputs = conn.receive(first)
        for output in outputs:
            check_output(output)
        if is_valid_handshake(first):
            assert conn.phase == READY
            assert outputs == [Reply({"type": "handshake", "version": "1.0"})]
        else:
            assert conn.phase == CLOSED, first
            assert len(outputs) == 2, outputs
            assert outputs[0].message["type"] == "error"
            assert outputs[1] == Close(1008, outputs[1].reason)
            # Closing moved nothing; it only forgot the connection.
            after = stream.status()
            assert after["open_connections"] == before["open_connections"] - 1
            for key in ("current_position", "samples_served_total", "rewinds"):
                assert after[key] == before[key]

    open_connection(json.dumps(HANDSHAKE))
    for action in script:
        if action[0] == "open":
            if len(conns) < 4:
                open_connection(action[1])
            continue
        conn = conns[action[1] % len(conns)]
        if action[0] in ("send", "pair"):
            messages = [action[2]]
            if action[0] == "pair":
                messages.insert(
                    0, ("valid:heartbeat", json.dumps({"type": "heartbeat"}))
                )
            for tag, raw in messages:
                if conn.phase == CLOSED:
                    assert conn.receive(raw) == []
                else:
                    step_ready(conn, model, tag, raw)
        elif action[0] == "flush":
            pending = conn.heartbeat_pending
            assert conn.flush_heartbeat() == ([HEARTBEAT] if pending else [])
            assert not conn.heartbeat_pending
        else:
            before = stream.status()
            was_open = conn.phase != CLOSED
            conn.connection_lost()
            assert conn.phase == CLOSED and not conn.heartbeat_pending
            after = stream.status()
            assert after["open_connections"] == before["open_connections"] - was_open
            assert after["current_position"] == before["current_position"]
            assert after["rewinds"] == before["rewinds"]


# -- a real socket ---------------------------------------------------------------
def random_frame(rng: random.Random) -> str | bytes:
    """One frame of junk, a fragment, a near-miss or a valid request."""
    valid = [
        {"type": "getData", "payload": {"batch_size": rng.randint(1, 40)}},
        {"type": "heartbeat"},
        {"type": "getInfo"},
        {"type": "status", "payload": {}},
        {"type": "reset"},
        {
            "type": "setValidationIds",
            "payload": {"validation_ids": [f"sample_{rng.randint(0, 99)}"]},
        },
    ]
    near_miss = [
        {"type": "getData", "payload": {"batch_size": rng.choice([0, -1, 1.5, "7"])}},
        {"type": rng.choice(["getdata", "GETINFO", "", "data", "ping"])},
        {"type": "getData", "payload": rng.choice([[1], "x", 5, True])},
        {"type": rng.choice([1, None, [], {}])},
        {"type": "setValidationIds", "payload": {"validation_ids": [1, "sample_2"]}},
        {"payload": {"batch_size": 3}},
        HANDSHAKE,
    ]
    choice = rng.random()
    if choice < 0.2:
        return json.dumps(rng.choice(valid))
    if choice < 0.45:
        return json.dumps(rng.choice(near_miss))
    if choice < 0.6:  # a fragment of valid JSON
        text = json.dumps(rng.choice(valid + near_miss))
        return text[: rng.randint(0, len(text) - 1)]
    if choice < 0.75:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))
    if choice < 0.9:
        alphabet = '{}[]":,0123456789.-+eEtrufalsn \\/\x00\u00e9\u2603\U0001f600'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    return json.dumps(rng.choice([[], 0, "", None, True, 1e308, {"": {}}]))


# A peer's last request: its error reply, which quotes it, says that the
# server has answered everything the peer sent before it.
LAST_REQUEST = {"type": "end-of-fuzz"}


def drain(ws: websocket.WebSocket, out: dict) -> None:
    """Read everything the server sends until the close, checking each message;
    out["answered"] is set once the reply to LAST_REQUEST has come."""
    counts: dict[str, int] = {}
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == ABNF.OPCODE_CLOSE:
                out["close"] = int.from_bytes(data[:2], "big")
                break
            assert opcode == ABNF.OPCODE_TEXT, opcode
            message = json.loads(data)
            assert message["type"] in REPLY_TYPES, message
            if message["type"] == "error":
                text = message["payload"]["message"]
                assert isinstance(text, str) and 0 < len(text) <= MAX_ERROR_LENGTH
                if LAST_REQUEST["type"] in text:
                    out["answered"] = True
            counts[message["type"]] = counts.get(message["type"], 0) + 1
    except Exception as exc:
        out["exception"] = repr(exc)
    out["counts"] = counts


def test_thousands_of_random_frames_leave_the_server_serving_correct_data(
    caplog,
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(20240611)
    peers = 3
    frames_each = 1000
    source = SimulatedHealthData(max_iterations=300)
    with running_server(max_iterations=300, max_batch_size=64) as server:
        sockets, results, readers = [], [], []
        for _ in range(peers):
            ws = websocket.create_connection(
                server.url, skip_utf8_validation=True, timeout=HANG
            )
            ws.send(json.dumps(HANDSHAKE))
            result: dict = {}
            reader = threading.Thread(target=drain, args=(ws, result))
            reader.start()
            sockets.append(ws)
            results.append(result)
            readers.append(reader)
        started = time.monotonic()
        for _ in range(frames_each):
            for ws in sockets:
                frame = random_frame(rng)
                if isinstance(frame, bytes):
                    ws.send_binary(frame)
                else:
                    ws.send(frame)
        # Every fuzzing peer is still connected: nothing it sent made the
        # server drop it. Once the server has answered all they sent (a close
        # sent earlier would end the replies to frames still queued), they
        # leave normally.
        for ws in sockets:
            ws.send('{"type": "status"}')
            ws.send(json.dumps(LAST_REQUEST))
        wait_until(
            lambda: all(result.get("answered") for result in results),
            "the server to answer every fuzzing peer's last request",
        )
        for ws in sockets:
            ws.send_close()  # the reader thread reads the server's close reply
        for reader in readers:
            reader.join(HANG)
        for ws in sockets:
            ws.shutdown()
        elapsed = time.monotonic() - started

        # Invalid UTF-8 in a text frame is a WebSocket protocol error (1007).
        broken = websocket.create_connection(server.url, timeout=HANG)
        broken.send(json.dumps(HANDSHAKE))
        broken.recv()
        broken.send_frame(ABNF.create_frame(b"\xff\xfe{", ABNF.OPCODE_TEXT))
        opcode, data = broken.recv_data(control_frame=True)
        assert opcode == ABNF.OPCODE_CLOSE and data[:2] == (1007).to_bytes(2, "big")
        broken.shutdown()

        wait_until(
            lambda: server.status()["open_connections"] == 0,
            "the server to see the fuzzing peers go",
        )

        # A well-behaved client: validation ids, probe, one full training pass.
        good = EirLikeClient(server.url)
        confirm = good.request(
            {
                "type": "setValidationIds",
                "payload": {"validation_ids": ["sample_3", "sample_299"]},
            }
        )[0]
        assert confirm["type"] == "validationIdsConfirmation"
        good.validation_probe()
        samples = good.training_pass(32)
        good.close()
        health = server.call(server.server.health)

    print(f"{peers * frames_each} random frames in {elapsed:.1f} s")
    for result in results:
        assert "exception" not in result, result
        assert result.get("close") == 1000, result
        counts = result["counts"]
        assert counts.get("error", 0) > 100 and counts.get("data", 0) > 0, counts
        assert counts.get("status", 0) >= 1  # the last request was answered
    expected = [i for i in range(300) if i not in (3, 299)]
    assert [s["sample_id"] for s in samples] == [f"sample_{i}" for i in expected]
    for sample in samples[::50]:
        index = int(sample["sample_id"].removeprefix("sample_"))
        assert sample == source.sample(index)
    assert health["status"] == "ok"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
