"""Named streams over real sockets: the URL path names the stream
(`/ws` is 'default', `/ws/<name>` another), and streams never touch each
other's cursor, validation ids or pass.

Clients talk like EIR (support/eir_like_client.py); a training run is EIR's
setup connection that sends the validation ids, then one training connection
per GPU rank (DDP), each with its validation probe.
"""

import json
import re
import threading
from collections import Counter

import pytest
import websocket
from support.eir_like_client import EirLikeClient
from support.exact_pass import send_validation_ids
from support.http import http_get
from support.server_process import ServerProcess
from support.servers import running_server
from support.waiting import HANG, wait_until

from eirstream.streams import NAME_RULE

STREAM = 600  # samples per epoch (--max-iterations)
BATCH = 16
RANKS = 2


def number(sample_id: str) -> int:
    return int(sample_id.removeprefix("sample_"))


def health(port: int) -> dict:
    reply = http_get(port, "/healthz")
    assert reply.status == 200, reply
    return json.loads(reply.body)


def rank_pass(
    url: str, out: dict[int, list[int]], rank: int, ready: threading.Barrier
) -> None:
    """One rank's training connection: probe, wait for the other ranks (as
    DDP's start does), then batches to the end."""
    client = EirLikeClient(url, worker_id=0)
    try:
        client.validation_probe()
        ready.wait(HANG)
        samples = client.training_pass(BATCH)
        out[rank] = [number(s["sample_id"]) for s in samples]
    finally:
        client.close()


def ddp_run(url: str, validation: set[int]) -> dict[int, list[int]]:
    """A training run on the stream at `url`: setup sends `validation`,
    then RANKS training connections at once. What each rank received."""
    send_validation_ids(url, [f"sample_{k}" for k in sorted(validation)])
    out: dict[int, list[int]] = {}
    ready = threading.Barrier(RANKS)
    ranks = [
        threading.Thread(target=rank_pass, args=(url, out, rank, ready))
        for rank in range(RANKS)
    ]
    for thread in ranks:
        thread.start()
    for thread in ranks:
        thread.join(HANG)
    assert sorted(out) == list(range(RANKS)), "a rank failed"
    return out


def test_two_runs_on_two_streams_each_get_their_own_pass() -> None:
    validation = {
        "run-a": {k for k in range(STREAM) if k % 5 == 0},
        "run-b": {k for k in range(STREAM) if k % 7 == 3},
    }
    with running_server(max_iterations=STREAM) as server:
        base = server.url
        got: dict[str, dict[int, list[int]]] = {}
        runs = [
            threading.Thread(
                target=lambda name=name: got.__setitem__(
                    name, ddp_run(f"{base}/{name}", validation[name])
                )
            )
            for name in validation
        ]
        for run in runs:
            run.start()
        for run in runs:
            run.join(HANG)
        assert sorted(got) == sorted(validation)
        streams = health(server.server.port)["streams"]
    for name, ranks in got.items():
        served = [k for rank in ranks.values() for k in rank]
        doubled = [k for k, n in Counter(served).items() if n > 1]
        assert not doubled, (name, doubled)  # each sample at most once a pass
        assert not set(served) & validation[name], name  # never its own ids
        training = set(range(STREAM)) - validation[name]
        # A level end leaves fewer than one batch per rank unserved.
        assert len(training - set(served)) < RANKS * BATCH, name
        assert len(ranks[0]) == len(ranks[1]), name  # the ranks end level
        assert len(ranks[0]) % BATCH == 0, name  # in full batches
        other = validation["run-b" if name == "run-a" else "run-a"]
        served_of_other = other & set(served)
        # The other run's ids are this run's training samples.
        assert len(other - validation[name] - served_of_other) < RANKS * BATCH, name
        # The probes' samples went back to the stream: served counts them.
        assert streams[name]["samples_served_total"] >= len(served)
        assert streams[name]["phase"] == "training"
    assert streams["default"]["samples_served_total"] == 0


def validation_ids_mid_pass(url: str, ids: list[int]) -> EirLikeClient:
    """Setup sends `ids` on the stream at `url`, then a rank probes and
    takes a batch, and stays open: mid-pass."""
    send_validation_ids(url, [f"sample_{k}" for k in ids])
    rank = EirLikeClient(url)
    rank.validation_probe()
    assert len(rank.fetch_batch(BATCH)) == BATCH
    return rank


def test_a_second_run_is_warned_of_on_its_own_stream_only() -> None:
    args = ("--port", "0", "--workers", "0", "--max-iterations", str(STREAM))
    with ServerProcess(*args) as server:
        first = validation_ids_mid_pass(f"{server.url}/run-a", [1, 2, 3])
        # Another run, other ids, on a stream of its own: no warning.
        second = validation_ids_mid_pass(f"{server.url}/run-b", [4, 5, 6])
        third = validation_ids_mid_pass(server.url, [7, 8])  # and the default
        # The same ids again on run-a (another rank's setup): no warning.
        send_validation_ids(f"{server.url}/run-a", ["sample_1", "sample_2", "sample_3"])
        # Other ids on run-a while its rank is mid-pass: a second run there.
        send_validation_ids(f"{server.url}/run-a", ["sample_9"])
        line = server.wait_for("second training run")
        for client in (first, second, third):
            client.close()
        server.wait_for(re.compile(r"conn#6 .*closed"))  # the last one open
        warnings = [line for line in server.lines if "second training run" in line]
    assert warnings == [line]
    assert "stream 'run-a'" in line and "/ws/<run-name>" in line


@pytest.mark.parametrize(
    "path",
    [
        "/ws/a%20b",
        "/ws/" + "n" * 65,
        "/ws/a/b",
        "/ws/",
        "/ws/%C3%A9",
        "/ws/run:1",
        "/ws/..%2F",
    ],
)
def test_a_bad_name_gets_400_naming_the_rule_before_the_upgrade(path: str) -> None:
    with running_server(max_iterations=10) as server:
        port = server.server.port
        before = health(port)["streams"]
        reply = http_get(port, path)
        assert reply.status == 400, reply
        assert NAME_RULE in reply.body.decode(), reply
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=HANG)
        assert refused.value.status_code == 400
        assert NAME_RULE.encode() in refused.value.resp_body
        assert health(port)["streams"] == before  # no stream made
        assert list(before) == ["default"]
        assert server.call(lambda: server.server.connections_total) == 0
        # A good name still works.
        client = EirLikeClient(f"ws://127.0.0.1:{port}/ws/good-1")
        client.validation_probe()
        client.close()


def test_one_stream_more_than_max_streams_gets_503_and_names_are_reused() -> None:
    with running_server(max_iterations=50, max_streams=2) as server:
        port = server.server.port
        one = EirLikeClient(f"{server.url}/one")  # the default + one: 2
        assert len(one.fetch_batch(5)) == 5
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"{server.url}/two", timeout=HANG)
        assert refused.value.status_code == 503
        body = refused.value.resp_body.decode()
        assert "at most 2 streams" in body and "--max-streams" in body, body
        assert sorted(health(port)["streams"]) == ["default", "one"]
        one.close()
        # Both kept streams still take connections, also when none is open.
        wait_until(
            lambda: health(port)["open_connections"] == 0, "the connection to close"
        )
        again = EirLikeClient(f"{server.url}/one")
        batch = again.fetch_batch(5)
        assert [s["sample_id"] for s in batch] == [f"sample_{k}" for k in range(5, 10)]
        default = EirLikeClient(server.url)
        assert default.fetch_batch(3) is not None
        again.close()
        default.close()
        assert sorted(health(port)["streams"]) == ["default", "one"]


def fetch(base: str, name: str, batches: int, size: int) -> EirLikeClient:
    """A connection to the stream `name` under the URL `base` that took
    `batches` batches of `size` (no probe: the stream does not rewind)."""
    client = EirLikeClient(f"{base}/{name}")
    for _ in range(batches):
        assert len(client.fetch_batch(size)) == size
    return client


def test_a_stream_keeps_its_position_while_no_connection_is_open() -> None:
    with running_server(max_iterations=1000) as server:
        port = server.server.port
        paused = EirLikeClient(f"{server.url}/paused")
        paused.validation_probe()  # alone: a rewind to 0
        for _ in range(3):
            paused.fetch_batch(10)
        paused.close()
        other = fetch(server.url, "other", 1, 5)
        wait_until(
            lambda: health(port)["streams"]["paused"]["open_connections"] == 0,
            "the paused stream's connection to close",
        )
        streams = health(port)["streams"]
        assert sorted(streams) == ["default", "other", "paused"]
        assert streams["paused"]["current_position"] == 30
        assert streams["paused"]["samples_served_total"] == 31  # with the probe's
        assert streams["other"]["current_position"] == 5
        assert streams["other"]["open_connections"] == 1
        assert streams["default"]["current_position"] == 0
        # The run comes back: its stream goes on where it stopped.
        back = EirLikeClient(f"{server.url}/paused")
        ids = [s["sample_id"] for s in back.fetch_batch(10)]
        assert ids == [f"sample_{k}" for k in range(30, 40)]
        status = back.request({"type": "status", "payload": {}})[0]["payload"]
        assert status["stream"] == "paused" and status["current_position"] == 40
        assert {n: s["current_position"] for n, s in status["streams"].items()} == {
            "default": 0,
            "other": 5,
            "paused": 40,
        }
        assert status["streams"]["other"]["open_connections"] == 1
        on_other = other.request({"type": "status", "payload": {}})[0]["payload"]
        assert on_other["stream"] == "other" and on_other["current_position"] == 5
        assert on_other["samples_served_total"] == 5
        on_default = EirLikeClient(server.url)
        status = on_default.request({"type": "status", "payload": {}})[0]["payload"]
        assert status["stream"] == "default" and status["current_position"] == 0
        assert status["max_streams"] == 64
        for client in (back, other, on_default):
            client.close()


def test_default_and_ws_default_are_one_stream() -> None:
    with running_server(max_iterations=100) as server:
        plain = fetch(server.url, "default", 1, 4)  # /ws/default
        ids = [s["sample_id"] for s in EirLikeClient(server.url).fetch_batch(4)]
        assert ids == [f"sample_{k}" for k in range(4, 8)]
        assert list(health(server.server.port)["streams"]) == ["default"]
        plain.close()


PROGRESS = re.compile(r"progress, stream (\S+): ")


def test_progress_lines_name_each_stream_that_serves() -> None:
    args = ("--port", "0", "--workers", "0", "--progress-interval", "0.1")
    with ServerProcess(*args) as server:  # endless: serves as long as asked
        clients = {name: fetch(server.url, name, 0, 1) for name in ("run-x", "run-y")}
        idle = EirLikeClient(f"{server.url}/idle")  # open, never served

        def both_reported() -> bool:
            for client in clients.values():
                assert client.fetch_batch(8) is not None
            named = {
                m.group(1) for line in server.lines if (m := PROGRESS.search(line))
            }
            return {"run-x", "run-y"} <= named

        wait_until(both_reported, "a progress line for each serving stream")
        for client in (*clients.values(), idle):
            client.close()
        lines = [line for line in server.lines if PROGRESS.search(line)]
    named = {PROGRESS.search(line).group(1) for line in lines}
    assert named == {"run-x", "run-y"}, lines  # not 'idle', not 'default'
    assert all(re.search(r"\d+ samples served in this pass", line) for line in lines)


@pytest.mark.parametrize("path", ["/", "/data/", "/a/b"])
def test_the_path_option_is_the_default_stream_and_names_go_under_it(
    path: str,
) -> None:
    with running_server(max_iterations=100, path=path) as server:
        port = server.server.port
        assert server.url.endswith(f":{port}{path}")
        default = EirLikeClient(server.url)  # the URL as the operator gave it
        assert len(default.fetch_batch(3)) == 3
        named = EirLikeClient(f"{server.url.rstrip('/')}/run-1")
        ids = [s["sample_id"] for s in named.fetch_batch(3)]
        assert ids == ["sample_0", "sample_1", "sample_2"]  # a stream of its own
        status = named.request({"type": "status", "payload": {}})[0]["payload"]
        assert status["stream"] == "run-1"
        assert {n: s["current_position"] for n, s in status["streams"].items()} == {
            "default": 3,
            "run-1": 3,
        }
        default.close()
        named.close()


def test_a_request_that_is_no_upgrade_makes_no_stream() -> None:
    with running_server(max_iterations=10, max_streams=2) as server:
        port = server.server.port
        reply = http_get(port, "/ws/not-a-client")  # no Upgrade header
        assert reply.status == 426, reply
        assert list(health(port)["streams"]) == ["default"]
        client = EirLikeClient(f"{server.url}/a-client")  # still room for one
        client.close()
