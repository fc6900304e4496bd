"""Two real eirtrain runs at the same time on one server, on two named
streams, and a real Prometheus scraping that server while they train.

Run A reads ws://…/ws/run-a without DataLoader workers, run B reads
ws://…/ws/run-b with two (two training connections). The server is bounded
(every stream's pass is MAX_ITERATIONS samples). Both runs must exit 0, and
on each stream, read from the server's DEBUG log: every sample served for
training at most once, none of that stream's validation ids, and those
validation ids are the ones its own run sent. Each run's validation ids are
chosen here and handed to EIR with `manual_valid_ids_file`, a different set
per run, so a stream that took the other run's ids, or skipped both, fails.

Prometheus (Debian's `prometheus` package) scrapes /metrics every second
during the runs; afterwards its HTTP API answers the samples each stream
served, equal to what that stream's `status` says, and `promtool check
metrics` passes on the server's /metrics body. Without Prometheus that test
skips, or fails where EIR_REQUIRE_PROMETHEUS=1 (CI).
"""

from __future__ import annotations

import contextlib
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.eirtrain_support import (
    CONFIGS,
    SMOKE_SHRINK,
    EirtrainRun,
    StreamLog,
    deep_merge,
    parse_stream_log,
    run_eirtrain,
    write_shrunk_configs,
)
from support.prometheus import JOB, Prometheus, check_metrics, find_prometheus
from support.required import needs_prometheus
from support.server_process import ServerProcess, request_status
from support.waiting import HANG, wait_until

MAX_ITERATIONS = 1200
BATCH_SIZE = SMOKE_SHRINK["global"]["basic_experiment"]["batch_size"]
VALID_SIZE = SMOKE_SHRINK["global"]["basic_experiment"]["valid_size"]
SETUP_SAMPLES = SMOKE_SHRINK["global"]["data_preparation"]["streaming_setup_samples"]
# Two runs share two cores here, each about twice as slow as alone; the
# margin is for a busy machine.
EIRTRAIN_TIMEOUT = 400


def chosen_validation(seed: int) -> frozenset[int]:
    """VALID_SIZE indices of the setup samples, sample 0 among them (every
    validation probe asks for it first)."""
    rest = random.Random(seed).sample(range(1, SETUP_SAMPLES), VALID_SIZE - 1)
    return frozenset({0, *rest})


@dataclass(frozen=True)
class Plan:
    """One eirtrain run: the stream it names, its DataLoader workers and the
    validation ids it sends."""

    stream: str
    dataloader_workers: int
    validation: frozenset[int]


PLANS = (
    Plan("run-a", 0, chosen_validation(4)),
    Plan("run-b", 2, chosen_validation(6)),
)
# With DataLoader workers, each validation starts new worker processes
# (seconds each on a loaded 2-core machine): run B validates only at an
# interval past its last step.
NO_VALIDATION_STEPS = {"sample_interval": 1000, "checkpoint_interval": 1000}


@dataclass
class TwoRuns:
    """The server after both runs, still serving, and what they left."""

    server: ServerProcess
    prometheus: Prometheus | None  # None without Debian's prometheus
    runs: dict[str, EirtrainRun]  # by stream
    statuses: dict[str, dict[str, Any]]  # each stream's status after the runs
    ended: float  # Unix time once both runs and those statuses were done
    seconds: float  # wall time of the two runs together


def train(url: str, plan: Plan, folder: Path) -> EirtrainRun:
    """eirtrain with the smoke run's shrunk configs against `url`, as
    `plan` says."""
    folder.mkdir()
    ids_file = folder / "validation_ids.txt"
    ids_file.write_text("".join(f"sample_{i}\n" for i in sorted(plan.validation)))
    basic = {
        "dataloader_workers": plan.dataloader_workers,
        "manual_valid_ids_file": str(ids_file),
    }
    overrides: dict[str, Any] = {"basic_experiment": basic}
    if plan.dataloader_workers:
        overrides["evaluation_checkpoint"] = NO_VALIDATION_STEPS
    shrink = deep_merge(SMOKE_SHRINK, {"global": overrides})
    output_folder = folder / "run"
    configs = write_shrunk_configs(
        CONFIGS, folder / "configs", url, output_folder, shrink
    )
    return run_eirtrain(
        configs, output_folder, folder / "eirtrain.log", EIRTRAIN_TIMEOUT
    )


def all_closed(server: ServerProcess) -> bool:
    """Whether the server logged the close of every connection it opened."""
    connections = parse_stream_log(server.log).connections.values()
    return all(conn.closed is not None for conn in connections)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRuns]:
    """One bounded server (DEBUG log), Prometheus scraping it when installed,
    and both runs started together; the server keeps serving until the
    module's tests are done."""
    folder = tmp_path_factory.mktemp("named-streams")
    args = ["--port", "0", "--max-iterations", str(MAX_ITERATIONS), "--workers", "1"]
    log_path = folder / "server.log"
    with (
        ServerProcess(*args, log_path=log_path, debug_log=True) as server,
        contextlib.ExitStack() as stack,
    ):
        tools = find_prometheus()
        prometheus = None
        if tools is not None:
            target = f"127.0.0.1:{server.port}"
            prometheus = Prometheus(tools, target, folder / "prometheus")
            stack.enter_context(prometheus)
        started = time.monotonic()
        with ThreadPoolExecutor(len(PLANS)) as pool:
            futures = {
                plan.stream: pool.submit(
                    train, f"{server.url}/{plan.stream}", plan, folder / plan.stream
                )
                for plan in PLANS
            }
        runs = {stream: future.result() for stream, future in futures.items()}
        seconds = time.monotonic() - started
        statuses = {stream: request_status(f"{server.url}/{stream}") for stream in runs}
        ended = time.time()
        wait_until(lambda: all_closed(server), "the server to log every close")
        yield TwoRuns(server, prometheus, runs, statuses, ended, seconds)


def check_stream(plan: Plan, status: dict[str, Any], log: StreamLog) -> list[int]:
    """One stream's training pass: its own validation ids skipped, every
    other sample served at most once, none lost; the training deliveries."""
    assert status["stream"] == plan.stream
    assert {conn.stream for conn in log.connections.values()} == {plan.stream}
    assert log.validation_indices == plan.validation, "not this run's validation ids"
    assert len(log.validation_connections) == 1, log.validation_connections
    assert status["validation_ids"] == VALID_SIZE

    trainers = log.training_connections()
    assert len(trainers) == max(1, plan.dataloader_workers), [c.id for c in trainers]
    for trainer in trainers:
        assert trainer.terminated, f"conn#{trainer.id} never got terminate"
    delivered = log.training_deliveries()
    duplicates = [i for i, n in Counter(delivered).items() if n > 1]
    assert not duplicates, f"served twice in the training pass: {duplicates[:20]}"
    leaked = sorted(plan.validation & set(delivered))
    assert not leaked, f"validation samples served for training: {leaked[:20]}"
    left = status["remaining_iterations"]
    assert len(delivered) + left == MAX_ITERATIONS - VALID_SIZE  # none lost
    assert left < BATCH_SIZE * len(trainers) if len(trainers) > 1 else left == 0
    every_batch = [len(b) for c in log.ordered() for b in c.batches]
    assert status["samples_served_total"] == sum(every_batch)
    return delivered


def test_two_eirtrain_runs_at_once_on_two_named_streams(two_runs: TwoRuns) -> None:
    server_log = two_runs.server.log
    for plan in PLANS:
        run = two_runs.runs[plan.stream]
        assert not run.timed_out, f"{plan.stream}: over {EIRTRAIN_TIMEOUT} s"
        assert run.returncode == 0, f"{plan.stream} exited {run.returncode}:\n" + (
            run.tail()
        )
        assert "Received termination signal" in run.output()
    # Every connection named one of the two streams; none read the default.
    opened_on = {c.stream for c in parse_stream_log(server_log).connections.values()}
    assert opened_on == {plan.stream for plan in PLANS}

    summary = [f"two runs at once: {two_runs.seconds:.0f} s"]
    for plan in PLANS:
        status = two_runs.statuses[plan.stream]
        log = parse_stream_log(server_log, plan.stream)
        check_stream(plan, status, log)
        per_connection = ", ".join(
            f"conn#{c.id} {len(c.after_reset)}" for c in log.training_connections()
        )
        summary.append(
            f"{plan.stream} ({plan.dataloader_workers} DataLoader workers): "
            f"{two_runs.runs[plan.stream].seconds:.0f} s, training samples per "
            f"connection: {per_connection}; {status['remaining_iterations']} left "
            f"unserved; {status['samples_served_total']} served in all"
        )
    print("; ".join(summary))


def test_a_real_prometheus_scrapes_what_each_stream_served(two_runs: TwoRuns) -> None:
    tools = needs_prometheus()
    prometheus = two_runs.prometheus
    assert prometheus is not None  # the fixture starts one wherever it is found

    metrics_url = f"http://127.0.0.1:{two_runs.server.port}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=HANG) as reply:
        body, headers = reply.read().decode(), reply.headers.items()
    for plan in PLANS:
        line = f'eirstream_samples_served_total{{stream="{plan.stream}"}}'
        assert line in body, f"no {line} in /metrics ({headers}):\n{body}"
    checked = check_metrics(tools, body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    print(f"promtool check metrics: exit 0 on {len(body.splitlines())} lines")

    # The values of a scrape that began after both runs and their statuses.
    wait_until(
        lambda: prometheus.scraped_after(two_runs.ended),
        "Prometheus to scrape the server after the runs",
    )
    [up] = prometheus.query(f'up{{job="{JOB}"}}')
    assert up["value"][1] == "1", f"scrape failed: {prometheus.targets()}"
    for plan in PLANS:
        served = two_runs.statuses[plan.stream]["samples_served_total"]
        query = f'eirstream_samples_served_total{{stream="{plan.stream}"}}'
        [answer] = prometheus.query(query)
        print(f"Prometheus: {query} -> {answer['value'][1]}; status: {served}")
        assert float(answer["value"][1]) == served
        # Scraped during the run too: a value below the final one.
        [history] = prometheus.query(f"{query}[1h]")
        values = [float(value) for _, value in history["values"]]
        assert min(values) < served, f"no scrape during {plan.stream}: {values}"
        print(f"  {len(values)} scrapes of {plan.stream}, from {min(values):.0f}")
