"""One stream, many clients, over real sockets.

Clients talk like EIR (tests/eir_like_client.py): the validation probe at the
start of every connection (getData 1, reset), then heartbeat + getData pairs.
What is checked is what the clients *received*: across all of them, every
index that is not a validation id exactly once per pass, never a validation
id, nothing a client did not ask for, and no rewind under anyone's feet.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import websocket
from support.eir_like_client import EirLikeClient
from support.servers import ServerThread, running_server
from support.waiting import HANG, wait_until

from data_simulator import SimulatedHealthData
from eirstream.cli import parse_args

STREAM = 3000
CLIENTS = 8
BATCH = 32
VALIDATION = set(range(5, STREAM, 6))  # 500 ids spread over the whole stream
assert len(VALIDATION) == 500


def index(sample: dict) -> int:
    return int(sample["sample_id"].removeprefix("sample_"))


def indices(samples: list[dict]) -> list[int]:
    return [index(s) for s in samples]


def get(client: EirLikeClient, batch_size: int) -> list[dict] | None:
    """One getData, answered by exactly one reply; None for terminate."""
    reply = client.request({"type": "getData", "payload": {"batch_size": batch_size}})
    assert reply[0]["type"] == "data", reply
    payload = reply[0]["payload"]
    return None if payload == ["terminate"] else payload


def drain(client: EirLikeClient, batch_size: int = 50) -> list[int]:
    out: list[int] = []
    while (batch := get(client, batch_size)) is not None:
        out += indices(batch)
    return out


def drain_together(clients: dict[str, EirLikeClient]) -> dict[str, list[int]]:
    """Clients take turns, one batch each (sizes differ), until all are told
    terminate."""
    got: dict[str, list[int]] = {name: [] for name in clients}
    active = dict(clients)
    for turn in range(10**4):
        if not active:
            return got
        name = list(active)[turn % len(active)]
        batch = get(active[name], 5 + turn % 7)
        if batch is None:
            del active[name]
        else:
            got[name] += indices(batch)
    raise AssertionError("the stream never ended")


def reset(client: EirLikeClient) -> str:
    """A reset: its confirmation, then its notice; returns the message."""
    confirmation, notice = client.request({"type": "reset"}, replies=2)
    assert confirmation["type"] == "resetConfirmation", confirmation
    assert notice["type"] == "reset", notice
    return confirmation["payload"]["message"]


def set_validation_ids(url: str, chosen: set[int]) -> str:
    """What EIR's setup connection 5 does: send the ids, read the confirmation."""
    client = EirLikeClient(url)
    message = {
        "type": "setValidationIds",
        "payload": {"validation_ids": [f"sample_{i}" for i in sorted(chosen)]},
    }
    [reply] = client.request(message)
    client.close()
    assert reply["type"] == "validationIdsConfirmation", reply
    return reply["payload"]["message"]


def assert_silent(client: EirLikeClient, seconds: float = 0.3) -> None:
    """Nothing is waiting for this client that it did not ask for."""
    client.ws.settimeout(seconds)
    with pytest.raises(websocket.WebSocketTimeoutException):
        message = client.ws.recv()
        pytest.fail(f"unsolicited message: {message[:200]}")


@dataclass
class WorkerResult:
    probe_index: int
    training: list[int]


def eir_training_connection(
    url: str,
    all_started: threading.Barrier,
    start_together: threading.Barrier | None,
    delay: float = 0.0,
) -> WorkerResult:
    """EIR's training connection: probe, unread heartbeat, batches to the end.

    After its first batch every client waits until all have got theirs, so
    that no client can finish the whole pass before the last one has even
    connected (one arriving after the pass is over would rightly start a new
    pass and read everything again). The probes and resets themselves race.
    """
    if start_together is not None:
        start_together.wait(timeout=HANG)
    time.sleep(delay)
    client = EirLikeClient(url)
    try:
        probe = client.validation_probe()
        client.send({"type": "heartbeat"})  # EIR never reads this reply
        first = client.fetch_batch(BATCH)
        assert first is not None, "the stream ended before every client started"
        all_started.wait(timeout=HANG)
        training = indices(first)
        while (batch := client.fetch_batch(BATCH)) is not None:
            training += indices(batch)
        return WorkerResult(index(probe["data"]["payload"][0]), training)
    except BaseException:
        all_started.abort()  # let the other clients fail fast instead of hanging
        raise
    finally:
        client.close()


def run_training(server: ServerThread, start_together: bool) -> list[WorkerResult]:
    all_started = threading.Barrier(CLIENTS)
    together = threading.Barrier(CLIENTS) if start_together else None
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [
            pool.submit(
                eir_training_connection,
                server.url,
                all_started,
                together,
                0 if start_together else 0.005 * k,  # else one after another
            )
            for k in range(CLIENTS)
        ]
        return [f.result(timeout=120) for f in futures]


def assert_one_clean_pass(results: list[WorkerResult]) -> None:
    received = [i for r in results for i in r.training]
    assert not VALIDATION & set(received), "validation ids were streamed"
    duplicates = len(received) - len(set(received))
    assert duplicates == 0, f"{duplicates} samples were served twice"
    # Every client ends with the same number of full batches (SampleStream
    # rule 7); fewer than one more batch for each is left unserved.
    assert {len(r.training) for r in results} == {len(results[0].training)}
    assert all(len(r.training) % BATCH == 0 for r in results)
    missing = set(range(STREAM)) - VALIDATION - set(received)
    assert len(missing) < len(results) * BATCH, f"{len(missing)} never served"
    assert all(r.probe_index not in VALIDATION for r in results)
    assert all(r.training for r in results), "a client got no training data"


@pytest.mark.parametrize(
    ("start_together", "workers"),
    [(False, 0), (True, 0), (True, 2)],
    ids=["staggered", "barrier", "barrier-worker-processes"],
)
def test_eight_eir_clients_share_one_pass(start_together: bool, workers: int) -> None:
    with running_server(max_iterations=STREAM, workers=workers) as server:
        confirmation = set_validation_ids(server.url, VALIDATION)
        assert "Received 500 validation ids, 500 of them" in confirmation
        results = run_training(server, start_together)
        assert_one_clean_pass(results)
        wait_until(
            lambda: server.status()["open_connections"] == 0,
            "the server to see every training connection close",
        )
        status = server.status()
        assert status["phase"] == "training"
        assert status["validation_ids"] == 500
        left = status["remaining_iterations"]
        assert left < CLIENTS * BATCH
        assert status["samples_served_in_pass"] == STREAM - 500 - left


def test_a_client_joining_mid_pass_does_not_rewind_the_others() -> None:
    with running_server(max_iterations=200) as server:
        a, b = EirLikeClient(server.url), EirLikeClient(server.url)
        a.validation_probe()
        b.validation_probe()
        got = {"a": indices(get(a, 10)), "b": indices(get(b, 10))}
        assert sorted(got["a"] + got["b"]) == list(range(20))
        rewinds = server.status()["rewinds"]

        c = EirLikeClient(server.url)
        probe = c.validation_probe()
        assert indices(probe["data"]["payload"]) == [20]
        message = probe["reset_replies"][0]["payload"]["message"]
        assert "joined the pass in progress" in message, message
        assert server.status()["rewinds"] == rewinds

        after = indices(get(a, 10))
        assert after == list(range(20, 30))  # the probe's sample 20 came back
        got["a"] += after
        rest = drain_together({"a": a, "b": b, "c": c})
        assert all(rest.values())  # all three shared the rest of the pass
        everything = got["a"] + got["b"] + [i for r in rest.values() for i in r]
        assert len(everything) == len(set(everything)) and max(everything) < 200
        # at most one more batch (sizes up to 11) for each of the three is left
        assert 200 - len(everything) < 3 * 11
        assert server.status()["rewinds"] == rewinds
        for client in (a, b, c):
            client.close()


@pytest.mark.parametrize("how", ["close-frame", "no-close-frame"])
def test_a_client_closing_mid_pass_does_not_rewind_the_others(how: str) -> None:
    with running_server(max_iterations=300) as server:
        clients = [EirLikeClient(server.url) for _ in range(3)]
        for client in clients:
            client.validation_probe()
        a, b, leaver = clients
        got = [*indices(get(a, 20)), *indices(get(leaver, 20)), *indices(get(b, 20))]
        got += indices(get(leaver, 20))
        rewinds = server.status()["rewinds"]
        if how == "close-frame":
            leaver.close()
        else:  # what DataLoader worker processes do: the socket just goes away
            leaver.ws.sock.close()
        wait_until(
            lambda: server.status()["open_connections"] == 2,
            "the server to see the leaver go",
        )
        rest = drain_together({"a": a, "b": b})
        assert all(rest.values())
        got += rest["a"] + rest["b"]
        assert len(got) == len(set(got)) and max(got) < 300  # none twice
        # at most one more batch (sizes up to 11) for each of the two is left,
        # and what the leaver had been owed
        assert 300 - len(got) < 2 * 11 + 40
        assert server.status()["rewinds"] == rewinds
        a.close()
        b.close()


def test_a_reset_with_nobody_streaming_replays_the_same_samples() -> None:
    with running_server(max_iterations=40) as server:
        first = EirLikeClient(server.url)
        first.validation_probe()
        before = get(first, 5)
        assert indices(before) == [0, 1, 2, 3, 4]
        drain(first)  # to "terminate": first's pass is over; it stays open

        second = EirLikeClient(server.url)
        assert reset(second) == "stream rewound to sample 0"
        assert get(second, 5) == before  # same ids, same content
        second.close()

        first.close()
        wait_until(
            lambda: server.status()["open_connections"] == 0,
            "the server to see the first client close",
        )
        third = EirLikeClient(server.url)
        assert reset(third) == "stream rewound to sample 0"
        again = get(third, 5)
        assert again == before
        assert again == SimulatedHealthData(seed=0).samples(range(5))
        third.close()


def test_clients_receive_only_replies_to_what_they_sent() -> None:
    with running_server(max_iterations=120) as server:
        observer = EirLikeClient(server.url)  # says nothing after its handshake
        streamer = EirLikeClient(server.url)
        streamer.validation_probe()  # rewinds
        get(streamer, 10)
        joiner = EirLikeClient(server.url)
        joiner.validation_probe()  # joins streamer's pass
        get(joiner, 10)
        for leave in ("close", "drop"):
            leaver = EirLikeClient(server.url)
            leaver.validation_probe()
            get(leaver, 3)
            if leave == "close":
                leaver.close()
            else:
                leaver.ws.sock.close()
        assert "joined" in reset(joiner)  # a second reset, mid-pass
        drain(streamer)
        drain(joiner)
        wait_until(
            lambda: server.status()["open_connections"] == 3,
            "the server to see both leavers go",
        )
        late = EirLikeClient(server.url)
        late.validation_probe()  # nobody in the pass now: rewinds
        get(late, 10)
        for client in (observer, streamer, joiner, late):
            assert_silent(client)
        [status] = observer.request({"type": "status"})
        assert status["type"] == "status", status
        assert status["payload"]["open_connections"] == 4
        assert_silent(observer)
        for client in (observer, streamer, joiner, late):
            client.close()


def test_half_a_million_validation_ids_in_one_message() -> None:
    validation = [f"sample_{i}" for i in range(0, 1_000_000, 2)]
    message = json.dumps(
        {"type": "setValidationIds", "payload": {"validation_ids": validation}}
    )
    assert len(message.encode()) < parse_args([]).max_message_size  # the default 16 MiB
    with running_server() as server:  # unbounded: every one of them is produced
        client = EirLikeClient(server.url)
        client.ws.send(message)
        reply = client.recv()
        assert reply["type"] == "validationIdsConfirmation", reply
        assert reply["payload"]["message"].startswith(
            "Received 500000 validation ids, 500000 of them produced by this stream"
        )
        assert indices(get(client, 5)) == [1, 3, 5, 7, 9]
        status = server.status()
        assert status["validation_ids"] == 500_000
        assert status["validation_ids_received"] == 500_000
        client.close()
