"""Long runs never stall: EIR's fetch pattern keeps no growing backlog.

EIR sends `heartbeat` + `getData` for every batch and reads one message,
skipping heartbeats. Answered one for one, that leaves an unread data reply
per fetch, which piles up until the buffers fill and the run stalls. The
server answers a heartbeat directly followed by getData with the data reply
alone (HEARTBEAT_PAIRING); these tests check that the backlog stays at a
couple of messages and that the server serves what the client reads, not
twice as much. bench/long_run.py runs the same pattern for a million fetches.

A pair whose two messages reach the server more than HEARTBEAT_PAIRING apart
is answered one for one and leaves one extra reply (and one extra sample
served). On a loaded machine, with the server in the test's own process,
the scheduler does that now and then; the tests allow one such split per
SPLITS_PER_FETCH fetches. Without the pairing every fetch leaves one.
"""

import select
import threading
import time
from collections import deque

import pytest
import websocket
from support.eir_like_client import EirLikeClient
from support.servers import running_server
from support.waiting import HANG, wait_until

from eirstream.protocol import Connection, SendSamples
from eirstream.stream import SampleStream

FETCHES = 20_000
READ_TIMEOUT = HANG  # guards a stall: EIR itself gives up on a reply after 30 s
SPLITS_PER_FETCH = 1 / 100


def allowed_splits(fetches: int) -> int:
    return int(fetches * SPLITS_PER_FETCH)


def eir_training_connection(url: str) -> EirLikeClient:
    """Open a training connection as EIR does: probe, then the unread heartbeat."""
    client = EirLikeClient(url, timeout=READ_TIMEOUT)
    client.validation_probe()
    client.send({"type": "heartbeat"})
    return client


def fetch_many(client: EirLikeClient, fetches: int) -> tuple[list[str], float]:
    """`fetches` batches of one, as EIR fetches them; (sample ids, slowest s)."""
    seen: list[str] = []
    slowest = 0.0
    for _ in range(fetches):
        started = time.monotonic()
        batch = client.fetch_batch(1)
        slowest = max(slowest, time.monotonic() - started)
        assert batch is not None and len(batch) == 1, batch
        seen.append(batch[0]["sample_id"])
    return seen, slowest


def test_eir_fetch_pattern_keeps_no_backlog_over_many_fetches() -> None:
    with running_server(max_iterations=None) as server:
        client = eir_training_connection(server.url)
        started = time.monotonic()
        try:
            seen, slowest = fetch_many(client, FETCHES)
        except websocket.WebSocketTimeoutException:
            pytest.fail(f"read timeout ({READ_TIMEOUT} s): the stream stalled")
        elapsed = time.monotonic() - started
        assert seen == [f"sample_{i}" for i in range(FETCHES)]
        queued = client.count_queued()
        client.close()
        served = server.status()["samples_served_total"]
    print(
        f"{FETCHES} fetches in {elapsed:.1f} s ({FETCHES / elapsed:.0f}/s), "
        f"slowest {slowest * 1000:.1f} ms, queued at end {queued}, served {served}"
    )
    # A stall would have been a read timeout above; the backlog stays small.
    assert sum(queued.values()) <= 2 + allowed_splits(FETCHES), queued
    assert set(queued) <= {"data", "heartbeat"}, queued
    # The probe took one sample; EIR keeps at most one getData in flight.
    assert FETCHES + 1 <= served <= FETCHES + 1 + 2 + allowed_splits(FETCHES), served


def replies_left_unread(fetches: int, paired: bool) -> int:
    """EIR's fetch loop against the protocol core, with a list for a socket:
    send heartbeat + getData, read one reply, fetch again on a heartbeat
    reply. `paired`: the getData comes within the pairing window; otherwise
    the I/O layer flushes the held heartbeat first, as for a late getData."""
    stream = SampleStream(None)
    conn = Connection(1, stream, {"inputs": {}, "outputs": {}})
    conn.receive('{"type":"handshake","version":"1.0"}')
    socket: deque[str] = deque()
    for _ in range(fetches):
        for _ in range(1000):
            outputs = conn.receive('{"type":"heartbeat"}')
            if not paired:
                outputs += conn.flush_heartbeat()
            outputs += conn.receive('{"type":"getData","payload":{"batch_size":1}}')
            socket.extend(
                "data" if isinstance(o, SendSamples) else "beat" for o in outputs
            )
            if socket.popleft() == "data":
                break
    return len(socket)


def test_without_pairing_the_backlog_grows_one_reply_per_fetch() -> None:
    """The control: a heartbeat answered on its own, as the tutorial answers
    every heartbeat, leaves one unread reply per fetch; paired, none."""
    assert replies_left_unread(300, paired=False) >= 300
    assert replies_left_unread(300, paired=True) == 0


def test_concurrent_eir_workers_each_keep_no_backlog() -> None:
    """Two DataLoader workers streaming at once: no backlog, no sample twice."""
    fetches = 1_000
    results: dict[int, tuple] = {}

    def worker(number: int, url: str) -> None:
        client = eir_training_connection(url)
        seen, _ = fetch_many(client, fetches)
        results[number] = (seen, client.count_queued())
        client.close()

    with running_server(max_iterations=None) as server:
        # The first probe rewinds; start the second once the first streams, so
        # its probe joins the pass in progress instead of rewinding it.
        first = threading.Thread(target=worker, args=(1, server.url))
        first.start()
        wait_until(
            lambda: server.status()["samples_served_total"] >= 10,
            "the first worker to stream",
        )
        second = threading.Thread(target=worker, args=(2, server.url))
        second.start()
        first.join(HANG)
        second.join(HANG)
        served = server.status()["samples_served_total"]
    assert set(results) == {1, 2}
    everything = results[1][0] + results[2][0]
    assert len(set(everything)) == 2 * fetches  # no sample reached both
    for _, queued in results.values():
        assert sum(queued.values()) <= 2 + allowed_splits(fetches), queued
    assert served <= 2 * fetches + 2 * 3 + 2 * allowed_splits(fetches), served


def test_a_lone_heartbeat_is_answered_in_time_and_in_order() -> None:
    """Pairing never holds a heartbeat back for a getData that does not come:
    EIR's validation probe waits 5 s for that reply."""
    with running_server(max_iterations=None) as server:
        client = EirLikeClient(server.url)
        client.send({"type": "heartbeat"})
        assert client.recv() == {"type": "heartbeat"}
        # A getData that comes too late to pair: heartbeat reply first, then
        # data. (Sent once the heartbeat's reply has arrived, unread, so that
        # however slow the server's thread, it never finds both waiting.)
        client.send({"type": "heartbeat"})
        readable, _, _ = select.select([client.ws.sock], [], [], 5)
        assert readable, "no reply to a lone heartbeat within 5 s"
        client.send({"type": "getData", "payload": {"batch_size": 1}})
        assert client.recv() == {"type": "heartbeat"}
        reply = client.recv()
        assert reply["type"] == "data" and len(reply["payload"]) == 1, reply
        client.close()
