"""The real EIR client against our server: configs/ shrunk, a bounded stream.

Runs `eirtrain` (eir-dl 0.25.0) to its end and checks both sides: the run exits
0 and writes generated HR traces; the server saw EIR's connection sequence of
docs/protocol.md, served every non-validation sample at most once for training
(all of them to a single connection; with several, all but fewer than one
more batch for each, which end level), never a validation one, and ended the
pass with `terminate`; the server's `?token=` in the configs' URLs reaches it
on every connection. Two ranks under DDP (on CPU): every rank ends at the
same step and the run exits cleanly.

The validation ids are chosen here and handed to EIR with its
`manual_valid_ids_file` setting, so what the server must skip is known
independently of what the server says it skipped.
"""

import random
import re
from collections import Counter
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
    generated_samples,
    last_logged_iteration,
    parse_stream_log,
    run_eirtrain,
    write_shrunk_configs,
)
from support.server_process import ServerProcess, request_status

MAX_ITERATIONS = 1200
BATCH_SIZE = SMOKE_SHRINK["global"]["basic_experiment"]["batch_size"]
VALID_SIZE = SMOKE_SHRINK["global"]["basic_experiment"]["valid_size"]
SETUP_SAMPLES = SMOKE_SHRINK["global"]["data_preparation"]["streaming_setup_samples"]
PROBE = ["getInfo", "getData", "heartbeat", "reset"]
# About 30 s on an idle 2-core machine; the margin is for a busy one.
EIRTRAIN_TIMEOUT = 300


# Sample 0 is the one every validation probe asks for first.
VALIDATION = {0, *random.Random(4).sample(range(1, SETUP_SAMPLES), VALID_SIZE - 1)}


@dataclass
class Trained:
    """What one eirtrain run against our server left: the run, the server's
    last status, its log parsed and as text."""

    run: EirtrainRun
    status: dict[str, Any]
    log: StreamLog
    server_log: str


def train_against_our_server(
    folder: Path, shrink: dict[str, Any], max_iterations: int, token: str = ""
) -> Trained:
    """eirtrain with the configs shrunk by `shrink` against our server bounded
    to `max_iterations` (with `token`: the server's EIR_STREAM_TOKEN, in the
    configs' URLs): it must exit 0 in time."""
    args = ["--port", "0", "--max-iterations", str(max_iterations), "--workers", "1"]
    env = {"EIR_STREAM_TOKEN": token} if token else None
    output_folder = folder / "run"
    log_path = folder / "server.log"
    with ServerProcess(*args, env=env, log_path=log_path, debug_log=True) as server:
        url = f"{server.url}?token={token}" if token else server.url
        configs = write_shrunk_configs(
            CONFIGS, folder / "configs", url, output_folder, shrink
        )
        run = run_eirtrain(
            configs, output_folder, folder / "eirtrain.log", EIRTRAIN_TIMEOUT
        )
        status = request_status(url)
        server.stop()
    assert not run.timed_out, f"eirtrain ran over {EIRTRAIN_TIMEOUT} s:\n{run.tail()}"
    assert run.returncode == 0, f"eirtrain exited {run.returncode}:\n{run.tail()}"
    return Trained(run, status, parse_stream_log(server.log), server.log)


# The token of the smoke run's server: eirtrain must pass it through unchanged.
TOKEN = "eir-run-5e1f0c"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The smoke run, read by two tests: configs/ shrunk, no DataLoader
    workers, the validation ids chosen here, the server's token in the URLs."""
    folder = tmp_path_factory.mktemp("smoke")
    ids_file = folder / "validation_ids.txt"
    ids_file.write_text("".join(f"sample_{i}\n" for i in sorted(VALIDATION)))
    basic = {"dataloader_workers": 0, "manual_valid_ids_file": str(ids_file)}
    shrink = deep_merge(SMOKE_SHRINK, {"global": {"basic_experiment": basic}})
    return train_against_our_server(folder, shrink, MAX_ITERATIONS, TOKEN)


def assert_training_pass_exact(status: dict[str, Any], log: StreamLog) -> list[int]:
    """No index served twice for training, no validation one, and every other
    one served except fewer than one more batch for every training connection
    (none with a single connection: it gets the last few as a short batch)."""
    assert log.validation_indices == VALIDATION, "server skips other indices"
    delivered = log.training_deliveries()
    duplicates = [i for i, n in Counter(delivered).items() if n > 1]
    assert not duplicates, f"served twice in the training pass: {duplicates[:20]}"
    leaked = sorted(VALIDATION & set(delivered))
    assert not leaked, f"validation samples served for training: {leaked[:20]}"
    trainers = len(log.training_connections())
    left = status["remaining_iterations"]
    assert left < BATCH_SIZE * trainers if trainers > 1 else left == 0
    assert len(delivered) + left == MAX_ITERATIONS - VALID_SIZE
    assert status["samples_served_in_pass"] == MAX_ITERATIONS - VALID_SIZE - left
    assert status["validation_ids"] == VALID_SIZE
    assert status["validation_ids_received"] == VALID_SIZE
    assert status["connections_in_pass"] == 0
    assert status["returned_to_front"] == 0
    every_batch = [len(b) for c in log.ordered() for b in c.batches]
    assert status["samples_served_total"] == sum(every_batch)
    return delivered


def test_eirtrain_runs_the_configs_to_the_end_of_a_bounded_stream(
    smoke_run: Trained,
) -> None:
    run, status, log = smoke_run.run, smoke_run.status, smoke_run.log

    samples = generated_samples(run.output_folder)
    assert samples, f"no generated samples under {run.output_folder}/results"
    assert all(path.read_text().split() for path in samples)
    assert "Received termination signal" in run.output()

    # docs/protocol.md, "What happens in a run, in order": one connection each.
    status_1, setup, reset, status_2, validation_ids, *training = log.ordered()
    assert status_1.requests == ["status"]
    assert setup.requests[:4] == PROBE
    assert setup.requests[4] == "getInfo"
    assert set(setup.requests[5:]) == {"getData"}
    assert len(setup.after_reset) >= SETUP_SAMPLES
    assert reset.requests == ["reset"]
    assert status_2.requests == ["status"]
    assert validation_ids.requests == ["setValidationIds"]
    assert log.validation_connection == validation_ids.id
    # one training connection (no DataLoader workers), plus our status request
    assert [c.id for c in log.training_connections()] == [training[0].id]
    trainer = training[0]
    assert trainer.requests[:5] == [*PROBE, "heartbeat"]
    assert trainer.terminated, "training did not end with terminate"
    assert trainer.closed is not None and "1000" in trainer.closed

    # Every reset was made with nobody else mid-pass, so each one rewound.
    resets = sum(c.requests.count("reset") for c in log.ordered())
    assert resets == 3
    assert status["rewinds"] == resets

    delivered = assert_training_pass_exact(status, log)
    # EIR drops the last partial batch (drop_last); its train history is
    # written every sample_interval // 2 iterations, so it may lag the end.
    iterations = len(delivered) // BATCH_SIZE
    buffer = SMOKE_SHRINK["global"]["evaluation_checkpoint"]["sample_interval"] // 2
    assert iterations - buffer < last_logged_iteration(run.output_folder) <= iterations


def test_eirtrain_passes_the_token_in_its_urls_through(smoke_run: Trained) -> None:
    """eirtrain passes `?token=` through to the server unchanged.

    (Not over wss://: eir-dl 0.25.0's config validation takes only sources that
    start with "ws://" for WebSocket URLs and rejects a wss:// one as a missing
    file, although its streaming code would accept it.)"""
    assert "Received termination signal" in smoke_run.run.output()
    server_log = smoke_run.server_log
    assert " 401" not in server_log  # every connection carried the token
    opened = [
        line
        for line in server_log.splitlines()
        if line.endswith(": opened on stream 'default'")
    ]
    assert len(opened) >= 6  # status, setup, reset, status, ids, training
    assert TOKEN not in server_log


# -- several GPU ranks (DDP), on CPU with gloo ----------------------------------
# Every rank must run the same number of steps: each step ends in collective
# operations across the ranks, and a rank left waiting in one dies ("Connection
# closed by peer" from gloo) or hangs (NCCL). The server ends the pass with the
# same number of full batches for every training connection (SampleStream
# rule 7). Shrunk further than the smoke run: two ranks share two cores.
DDP_MAX_ITERATIONS = 800
DDP_SETUP = 400
DDP_VALID = 50
DDP_SHRINK = deep_merge(
    SMOKE_SHRINK,
    {
        "global": {
            "basic_experiment": {"valid_size": DDP_VALID},
            "data_preparation": {"streaming_setup_samples": DDP_SETUP},
            "accelerator": {"hardware": "cpu", "strategy": "ddp", "devices": 2},
        }
    },
)
DDP_VALIDATION = {0, *random.Random(5).sample(range(1, DDP_SETUP), DDP_VALID - 1)}
PASS_OVER = re.compile(
    r"pass over at (\d+) full batch\(es\) per connection for the (\d+) "
    r"connection\(s\) in it: (\d+) sample\(s\) left unserved"
)


# eir-dl validates on rank 0 only, and its validation runs collectives: a run
# whose last step is a validation step dies at the end (README, Several GPUs).
# Steps per rank here: 11 with no workers, 10 with two. With workers, each
# validation also starts new worker processes (tens of seconds on a loaded
# 2-core machine), so that run does not validate.
@pytest.mark.parametrize(("dataloader_workers", "sample_interval"), [(0, 8), (2, 1000)])
def test_eirtrain_on_two_ranks_ends_every_rank_at_the_same_step(
    tmp_path, dataloader_workers, sample_interval
):
    """Two ranks, each with max(1, dataloader_workers) training connections
    sharing one bounded pass (with 2 workers this is also the test that
    DataLoader workers share a pass: each sample at most once)."""
    ids_file = tmp_path / "validation_ids.txt"
    ids_file.write_text("".join(f"sample_{i}\n" for i in sorted(DDP_VALIDATION)))
    basic = {
        "dataloader_workers": dataloader_workers,
        "manual_valid_ids_file": str(ids_file),
    }
    interval = {"sample_interval": sample_interval}
    interval["checkpoint_interval"] = sample_interval
    shrink = deep_merge(
        DDP_SHRINK,
        {"global": {"basic_experiment": basic, "evaluation_checkpoint": interval}},
    )
    trained = train_against_our_server(tmp_path, shrink, DDP_MAX_ITERATIONS)
    run, status, log = trained.run, trained.status, trained.log
    assert "Traceback" not in run.output(), run.tail(80)

    # Both ranks sent the same validation ids; neither rewound the pass.
    assert len(log.validation_connections) == 2, log.validation_connections
    assert log.validation_indices == DDP_VALIDATION
    assert status["validation_ids"] == DDP_VALID

    # ranks x workers training connections, each: the probe, then full
    # batches, as many as every other one, then terminate.
    trainers = log.training_connections()
    assert len(trainers) == 2 * max(1, dataloader_workers), [c.id for c in trainers]
    for trainer in trainers:
        assert trainer.requests[:5] == [*PROBE, "heartbeat"]
        assert trainer.terminated, f"conn#{trainer.id} never got terminate"
        sizes = {len(b) for b in trainer.batches_after_reset}
        assert sizes == {BATCH_SIZE}, f"conn#{trainer.id}: batch sizes {sizes}"
    full_batches = {c.id: len(c.batches_after_reset) for c in trainers}
    levels = set(full_batches.values())
    assert len(levels) == 1, f"unequal full batches per connection: {full_batches}"
    [level] = levels
    assert level > 0, "no training data"
    # Setup's probe and setup's reset rewind; each training connection's
    # probe reset joins the pass, or rewinds it if nobody is in it yet (then
    # nothing has been served since the setup's rewind).
    resets = sum(c.requests.count("reset") for c in log.ordered())
    assert resets == 2 + len(trainers)
    assert 2 <= status["rewinds"] <= resets

    delivered = log.training_deliveries()
    duplicates = [i for i, n in Counter(delivered).items() if n > 1]
    assert not duplicates, f"served twice in the training pass: {duplicates[:20]}"
    assert not DDP_VALIDATION & set(delivered), "validation samples were trained on"
    left = status["remaining_iterations"]
    assert len(delivered) + left == DDP_MAX_ITERATIONS - DDP_VALID  # none lost
    assert left < len(trainers) * BATCH_SIZE  # less than one more round
    passes = [m.groups() for line in log.stream_lines if (m := PASS_OVER.search(line))]
    assert passes[-1] == (str(level), str(len(trainers)), str(left)), passes

    # Every rank ran (workers x level) steps; rank 0 logs its own every
    # sample_interval // 2 iterations.
    steps = max(1, dataloader_workers) * level
    logged_every = sample_interval // 2
    assert steps - logged_every < last_logged_iteration(run.output_folder) <= steps
    print(
        f"ddp workers={dataloader_workers}: {run.seconds:.0f} s, {steps} steps per "
        f"rank, {level} batches of {BATCH_SIZE} per connection "
        f"({len(trainers)} connections), {left} samples left unserved"
    )
