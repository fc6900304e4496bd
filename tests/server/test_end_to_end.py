"""A whole EIR run, message for message, against a real server on loopback.

"What happens in a run, in order" (docs/protocol.md), replayed with
`EirLikeClient` (websocket-client, as EIR uses): five setup connections, then
a training connection, on a bounded stream. Run once with samples made in the server
process and once with worker processes, which must not change a byte.
"""

from typing import Any

import pytest
from support.eir_like_client import EirLikeClient
from support.servers import ServerThread, running_server
from support.waiting import wait_until

from data_simulator import SimulatedHealthData

NUM_SAMPLES = 300
SETUP_SAMPLES = 100  # EIR's streaming_setup_samples
BATCH = 32  # EIR's streaming batch size
# EIR keeps some of the setup samples for validation: every fifth of them.
VALIDATION_IDS = [f"sample_{k}" for k in range(0, SETUP_SAMPLES, 5)]


def wait_for(server: ServerThread, key: str, value: Any) -> None:
    """Wait until the server's stream status shows `key` == `value`."""
    wait_until(lambda: server.status()[key] == value, f"status {key} == {value!r}")


def status_over(client: EirLikeClient) -> dict[str, Any]:
    (reply,) = client.request({"type": "status", "payload": {}})
    assert reply["type"] == "status", reply
    return reply["payload"]


def assert_probe(probe: dict[str, Any], first_id: str, info: dict[str, Any]) -> None:
    assert probe["info"] == {"type": "info", "payload": info}
    (sample,) = probe["data"]["payload"]
    assert sample["sample_id"] == first_id
    # Both reset replies came within the 5 s for which the probe, as EIR's,
    # waits for each (a reply later than that is a read timeout there).
    for reply in probe["reset_replies"]:
        assert isinstance(reply["payload"]["message"], str)


def replay_a_real_run(server: ServerThread, workers: int) -> None:
    source = SimulatedHealthData(seed=0, max_iterations=NUM_SAMPLES)
    info = source.dataset_info()
    rewinds = 0

    # 1a. connection 1: status, close.
    client = EirLikeClient(server.url)
    status = status_over(client)
    assert status["current_position"] == 0
    assert status["max_iterations"] == NUM_SAMPLES
    assert status["remaining_iterations"] == NUM_SAMPLES
    making = status["making"]  # samples made where this test says
    assert making["engine"] == ("processes" if workers else "thread")
    assert making["workers"] == (workers or 1)
    client.close()

    # 1b. connection 2: the probe, getInfo, getData until the setup samples.
    client = EirLikeClient(server.url)
    assert_probe(client.validation_probe(), "sample_0", info)
    rewinds += 1
    assert client.request({"type": "getInfo"}) == [{"type": "info", "payload": info}]
    setup: list[dict[str, Any]] = []
    while len(setup) < SETUP_SAMPLES:
        (reply,) = client.request({"type": "getData", "payload": {"batch_size": BATCH}})
        assert reply["type"] == "data", reply
        assert len(reply["payload"]) == BATCH
        setup += reply["payload"]
    fetched = len(setup)  # whole batches: 128
    setup = setup[:SETUP_SAMPLES]  # EIR keeps what it asked for
    assert [s["sample_id"] for s in setup] == [
        f"sample_{k}" for k in range(SETUP_SAMPLES)
    ]
    assert setup == source.samples(range(SETUP_SAMPLES))
    client.close()
    wait_for(server, "open_connections", 0)
    assert server.status()["current_position"] == fetched  # closing did not rewind

    # 1c. connection 3: reset, then two replies.
    client = EirLikeClient(server.url)
    client.send({"type": "reset", "payload": {}})
    first, second = client.recv(), client.recv()
    rewinds += 1
    assert first["type"] == "resetConfirmation", first
    assert second["type"] == "reset", second
    client.close()

    # 1d. connection 4: status, close.
    client = EirLikeClient(server.url)
    status = status_over(client)
    assert status["current_position"] == 0
    assert status["remaining_iterations"] == NUM_SAMPLES
    assert status["rewinds"] == rewinds
    client.close()

    # 1e. connection 5: setValidationIds, close.
    client = EirLikeClient(server.url)
    (reply,) = client.request(
        {"type": "setValidationIds", "payload": {"validation_ids": VALIDATION_IDS}}
    )
    assert reply["type"] == "validationIdsConfirmation", reply
    assert str(len(VALIDATION_IDS)) in reply["payload"]["message"]
    client.close()
    wait_for(server, "open_connections", 0)
    status = server.status()
    assert status["validation_ids"] == len(VALIDATION_IDS)
    assert status["remaining_iterations"] == NUM_SAMPLES - len(VALIDATION_IDS)

    # 2. training: the probe (its one sample is the first training sample,
    # sample_0 being a validation id), the unread heartbeat, then heartbeat +
    # getData per batch until terminate.
    client = EirLikeClient(server.url)
    assert_probe(client.validation_probe(), "sample_1", info)
    rewinds += 1
    training = client.training_pass(BATCH)
    skipped = set(VALIDATION_IDS)
    expected_ids = [
        f"sample_{k}" for k in range(NUM_SAMPLES) if f"sample_{k}" not in skipped
    ]
    assert [s["sample_id"] for s in training] == expected_ids  # in order, once
    by_id = {s["sample_id"]: s for s in setup}
    for sample in training:
        if sample["sample_id"] in by_id:  # seen in the setup pass: same content
            assert sample == by_id[sample["sample_id"]]
    assert training == source.samples(
        [k for k in range(NUM_SAMPLES) if f"sample_{k}" not in skipped]
    )

    # After terminate the connection stays open: another getData gets
    # terminate again (behind any replies still queued for the client).
    client.send({"type": "getData", "payload": {"batch_size": BATCH}})
    client.send({"type": "status", "payload": {}})
    after: list[dict[str, Any]] = []
    while (message := client.recv())["type"] != "status":
        after.append(message)
    terminates = [m for m in after if m["type"] == "data"]
    assert terminates and all(m["payload"] == ["terminate"] for m in terminates)
    assert {m["type"] for m in after} <= {"data", "heartbeat"}
    assert message["payload"]["remaining_iterations"] == 0
    client.close()

    # No close ever rewound the stream: only the three resets did.
    wait_for(server, "open_connections", 0)
    status = server.status()
    assert status["rewinds"] == rewinds == 3
    assert status["current_position"] == NUM_SAMPLES
    assert status["samples_served_total"] == 1 + fetched + 1 + len(expected_ids)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_a_whole_run_in_eirs_order_gets_the_replies_protocol_md_describes(
    workers: int,
) -> None:
    with running_server(max_iterations=NUM_SAMPLES, workers=workers) as server:
        replay_a_real_run(server, workers)


def test_a_second_training_connection_after_the_first_replays_the_pass(
    server: ServerThread,
) -> None:
    # EIR opens a new training connection per epoch (or DataLoader worker):
    # its probe's reset starts a new pass from the beginning.
    passes = []
    for _ in range(2):
        client = EirLikeClient(server.url)
        client.validation_probe()
        passes.append(client.training_pass(BATCH))
        client.close()
        wait_for(server, "open_connections", 0)
    assert [s["sample_id"] for s in passes[0]] == [
        f"sample_{k}" for k in range(NUM_SAMPLES)
    ]
    assert passes[0] == passes[1]
