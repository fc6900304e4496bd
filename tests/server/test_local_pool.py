"""The local engines for real: --workers 0 (a thread), 1 and 2 (spawned processes).

Every test runs the server as a subprocess and reads a whole bounded pass as
EIR's training connection does (tests/exact_pass.py), keeping each sample's
JSON text as sent. Nothing is mocked: the worker that is killed is a real
process of the server's pool, killed with SIGKILL in the middle of the pass,
and the failing sources are real source files loaded with --source.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.eir_like_client import EirLikeClient
from support.exact_pass import (
    bench_source,
    check_exactly_once,
    check_remade_pass,
    longest_stall_after,
    pass_killing_a_worker,
    training_pass,
    validated_pass,
    write_source,
)
from support.server_process import ServerProcess
from support.servers import running_server

from eirstream.readahead import SampleProducer

NUM_SAMPLES = 3000
VALIDATION = [k for k in range(NUM_SAMPLES) if k % 7 == 3]  # 429 ids
EXPECTED = [k for k in range(NUM_SAMPLES) if k % 7 != 3]

posix_only = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only"
)


def making(server) -> dict:
    """The "making" object of the server's status reply: the engine and the
    read-ahead's counters."""
    return server.status()["making"]


def test_every_worker_count_serves_the_same_bytes(tmp_path: Path) -> None:
    """--workers 0, 1 and 2: the same pass, sample for sample, byte for byte."""
    passes = {}
    for workers in (0, 1, 2):
        args = ["--workers", str(workers), "--seed", "5"]
        got, status = validated_pass(
            *args, "--max-iterations", str(NUM_SAMPLES),
            validation=VALIDATION, log_path=tmp_path / f"server-{workers}.log",
        )  # fmt: skip
        check_exactly_once(got, EXPECTED)
        assert status["engine"] == ("thread" if workers == 0 else "processes"), status
        assert status["samples_failed"] == 0, status
        passes[workers] = got.by_id()
    for workers in (1, 2):
        differing = [k for k, raw in passes[workers].items() if passes[0][k] != raw]
        assert not differing, f"--workers {workers} differs at {differing[:5]}"


# A near-free source with unique ids: its samples are made once, when it is
# loaded, and then only looked up, far cheaper than receiving them from a
# worker process.
CHEAP_SOURCE = """
from data_simulator import SimulatedHealthData

TEXTS = [
    '{"sample_id":"sample_%d","filler":"%s"}' % (i, "x" * 800) for i in range(20_000)
]


class Cheap(SimulatedHealthData):
    def samples_json(self, indices):
        return [TEXTS[i] for i in indices]


def make(**settings):
    return Cheap(**settings)
"""


def test_the_default_workers_hand_near_free_samples_to_a_thread(
    tmp_path: Path,
) -> None:
    """Without --workers, samples that cost less to make than to receive are
    made in the server's thread once measured: the tasks already at the
    processes are still served, so the pass loses nothing across the change."""
    source, module = write_source(tmp_path, "cheap", CHEAP_SOURCE)
    log = tmp_path / "server.log"
    num = 20_000
    with ServerProcess(
        "--port", "0", "--source", source, "--max-iterations", str(num), log_path=log
    ) as server:
        got = training_pass(server.url, batch_size=64)
        status = making(server)
    check_exactly_once(got, range(num))
    reference = module.make().samples_json(range(num))
    assert got.by_id() == {f"sample_{k}": text for k, text in enumerate(reference)}
    assert status["engine"] == "thread" and status["workers"] == 1, status
    text = log.read_text()
    assert "making samples in a thread of the server from now on" in text, text
    assert "died" not in text and status["tasks_remade"] == 0, text


def test_the_default_workers_keep_samples_that_cost_more_than_shipping(
    tmp_path: Path,
) -> None:
    """The simulated samples (~0.1 ms of CPU each) stay in the processes; so
    does any source with --workers N, however cheap."""
    log = tmp_path / "server.log"
    with ServerProcess(
        "--port", "0", "--max-iterations", str(NUM_SAMPLES), log_path=log
    ) as server:
        got = training_pass(server.url, batch_size=64)
        status = making(server)
    check_exactly_once(got, range(NUM_SAMPLES))
    assert status["engine"] == "processes", status
    assert len(status["worker_pids"]) == (os.cpu_count() or 1), status
    source, _ = write_source(tmp_path, "cheap", CHEAP_SOURCE)
    args = ["--workers", "1", "--source", source, "--max-iterations", "20000"]
    with ServerProcess(
        "--port", "0", *args, log_path=tmp_path / "server-1.log"
    ) as server:
        training_pass(server.url, batch_size=256)
        assert making(server)["engine"] == "processes"
    for path in (log, tmp_path / "server-1.log"):
        assert "in a thread of the server" not in path.read_text()


@posix_only
def test_a_worker_killed_mid_stream_costs_no_sample(tmp_path: Path) -> None:
    num = 1200
    log = tmp_path / "server.log"
    spec, heavy = bench_source("heavy_source")
    args = ["--workers", "2", "--source", spec, "--max-iterations"]
    with ServerProcess("--port", "0", *args, str(num), log_path=log) as server:

        def busy_worker() -> int | None:
            now = making(server)
            if now["tasks_in_flight"] and now["worker_pids"]:
                return now["worker_pids"][0]
            return None

        got, killed = pass_killing_a_worker(server, busy_worker)
        status = making(server)
    source = heavy.make_source(seed=0, sequence_length=64, max_iterations=num)
    check_remade_pass(got, num, source, log.read_text())
    assert status["pool_restarts"] >= 1, status
    assert status["tasks_remade"] >= 1, status
    assert killed.pid not in status["worker_pids"], status
    stall = longest_stall_after(got.arrivals, killed.at)
    print(
        f"\nlocal pool SIGKILL: pool_restarts {status['pool_restarts']}, "
        f"tasks_remade {status['tasks_remade']}, longest wait for a reply "
        f"after the kill {stall:.3f} s, pass of {num} samples"
    )


FAILING_SOURCE = """
from data_simulator import SimulatedHealthData

BAD = {bad}


class Failing(SimulatedHealthData):
    def simulate(self, index):
        if BAD is None or index == BAD:
            raise RuntimeError(f"the simulator broke on index {{index}}")
        return super().simulate(index)


def make(**settings):
    return Failing(**settings)
"""


def test_one_failing_index_costs_only_itself(tmp_path: Path) -> None:
    bad, num = 37, 300
    source, _ = write_source(tmp_path, "one_bad", FAILING_SOURCE.format(bad=bad))
    log = tmp_path / "server.log"
    args = ["--workers", "1", "--source", source, "--max-iterations", str(num)]
    with ServerProcess("--port", "0", *args, log_path=log) as server:
        got = training_pass(server.url, batch_size=16)
        status = making(server)
    check_exactly_once(got, [k for k in range(num) if k != bad])
    # The batch that held index 37 (the probe took sample 0 and gave it back,
    # so batches are 0-15, 16-31, 32-47, ...) came with its other 15 samples.
    assert got.batch_sizes[2] == 15, got.batch_sizes
    assert set(got.batch_sizes[:2] + got.batch_sizes[3:-1]) == {16}, got.batch_sizes
    assert status["samples_failed"] == 1, status
    text = log.read_text()
    assert text.count("the simulator broke on index 37") == 1, text
    assert "Traceback" not in text, text


def test_a_source_that_always_fails_gets_an_error_reply(tmp_path: Path) -> None:
    source, _ = write_source(tmp_path, "all_bad", FAILING_SOURCE.format(bad=None))
    log = tmp_path / "server.log"
    with ServerProcess(
        "--port", "0", "--workers", "1", "--source", source, log_path=log
    ) as server:
        client = EirLikeClient(server.url)
        try:
            first = client.request({"type": "getData", "payload": {"batch_size": 16}})
            status = server.status()  # another connection is still answered
            again = client.request({"type": "getData", "payload": {"batch_size": 16}})
            same_connection = client.request({"type": "status"})[0]
        finally:
            client.close()
        alive = server.process.poll() is None
    for reply in (first[0], again[0]):
        assert reply["type"] == "error", reply
        message = reply["payload"]["message"]
        assert "source" in message, message  # says whose fault it is
        assert "the simulator broke on index" in message, message  # and what
    assert same_connection["type"] == "status", same_connection
    assert status["making"]["samples_failed"] >= 1, status
    assert alive, log.read_text()


SLEEPY_SOURCE = """
import time

from data_simulator import SimulatedHealthData


class Sleepy(SimulatedHealthData):
    def simulate(self, index):
        time.sleep(0.05)
        return super().simulate(index)


def make(**settings):
    return Sleepy(**settings)
"""


def test_busy_workers_make_a_request_wait_and_the_log_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request for more than the one worker makes at once waits for it (no
    error reply); past SampleProducer.WAIT_WARNING the log says why."""
    spec, _ = write_source(tmp_path, "sleepy", SLEEPY_SOURCE)
    monkeypatch.setattr(SampleProducer, "WAIT_WARNING", 0.5)
    monkeypatch.setattr(SampleProducer, "HEAL_AFTER", 0.25)
    with running_server(max_iterations=500, workers=1, source=spec) as server:
        client = EirLikeClient(server.url)
        reply = client.request({"type": "getData", "payload": {"batch_size": 40}})[0]
        client.close()
    assert reply["type"] == "data", reply
    assert [s["sample_id"] for s in reply["payload"]] == [
        f"sample_{k}" for k in range(40)
    ]
    waits = [r.getMessage() for r in caplog.records if "has waited" in r.getMessage()]
    assert waits, "no log line about the wait"
    assert "all 1 local worker processes are busy" in waits[0]
