"""The real EIR client against our server: configs/ shrunk, a bounded stream.

Runs `eirtrain` (eir-dl 0.25.0) to its end and checks both sides: the run exits
0 and writes generated HR traces; the server saw EIR's connection sequence of
PROTOCOL.md, served every non-validation sample exactly once for training,
never a validation one, and ended the pass with `terminate`.

The validation ids are chosen here and handed to EIR with its
`manual_valid_ids_file` setting, so what the server must skip is known
independently of what the server says it skipped.
"""

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from eirtrain_support import (
    CONFIGS,
    SMOKE_SHRINK,
    EirtrainRun,
    StreamLog,
    deep_merge,
    generated_samples,
    last_logged_iteration,
    parse_stream_log,
    requires_eirtrain,
    run_eirtrain,
    server_process,
    streamer_command,
    write_shrunk_configs,
)

pytestmark = [pytest.mark.eirtrain, requires_eirtrain]

MAX_ITERATIONS = 1200
BATCH_SIZE = SMOKE_SHRINK["global"]["basic_experiment"]["batch_size"]
VALID_SIZE = SMOKE_SHRINK["global"]["basic_experiment"]["valid_size"]
SETUP_SAMPLES = SMOKE_SHRINK["global"]["data_preparation"]["streaming_setup_samples"]
PROBE = ["getInfo", "getData", "heartbeat", "reset"]
# About 30 s on an idle 2-core machine; the margin is for a busy one.
EIRTRAIN_TIMEOUT = 300


# Sample 0 is the one every validation probe asks for first.
VALIDATION = {0, *random.Random(4).sample(range(1, SETUP_SAMPLES), VALID_SIZE - 1)}


def run_against_our_server(
    tmp_path: Path, dataloader_workers: int
) -> tuple[EirtrainRun, dict[str, Any], StreamLog]:
    ids_file = tmp_path / "validation_ids.txt"
    ids_file.write_text("".join(f"sample_{i}\n" for i in sorted(VALIDATION)))
    basic = {
        "dataloader_workers": dataloader_workers,
        "manual_valid_ids_file": str(ids_file),
    }
    shrink = deep_merge(SMOKE_SHRINK, {"global": {"basic_experiment": basic}})
    command = streamer_command(
        "--port", "0", "--max-iterations", str(MAX_ITERATIONS), "--workers", "1"
    )
    output_folder = tmp_path / "run"
    with server_process(command, tmp_path / "server.log") as server:
        configs = write_shrunk_configs(
            CONFIGS, tmp_path / "configs", server.url, output_folder, shrink
        )
        run = run_eirtrain(
            configs, output_folder, tmp_path / "eirtrain.log", EIRTRAIN_TIMEOUT
        )
        status = server.status()
        log = parse_stream_log(server.log_text())
    assert not run.timed_out, f"eirtrain ran over {EIRTRAIN_TIMEOUT} s:\n{run.tail()}"
    assert run.returncode == 0, f"eirtrain exited {run.returncode}:\n{run.tail()}"
    return run, status, log


def assert_training_pass_exact(status: dict[str, Any], log: StreamLog) -> list[int]:
    """Every non-validation index served once for training, no validation one."""
    assert log.validation_indices == VALIDATION, "server skips other indices"
    delivered = log.training_deliveries()
    duplicates = [i for i, n in Counter(delivered).items() if n > 1]
    assert not duplicates, f"served twice in the training pass: {duplicates[:20]}"
    leaked = sorted(VALIDATION & set(delivered))
    assert not leaked, f"validation samples served for training: {leaked[:20]}"
    assert set(delivered) == set(range(MAX_ITERATIONS)) - VALIDATION
    assert status["samples_served_in_pass"] == MAX_ITERATIONS - VALID_SIZE
    assert status["validation_ids"] == VALID_SIZE
    assert status["validation_ids_received"] == VALID_SIZE
    assert status["current_position"] == MAX_ITERATIONS
    assert status["remaining_iterations"] == 0
    assert status["connections_in_pass"] == 0
    assert status["returned_to_front"] == 0
    every_batch = [len(b) for c in log.ordered() for b in c.batches]
    assert status["samples_served_total"] == sum(every_batch)
    return delivered


def test_eirtrain_runs_the_configs_to_the_end_of_a_bounded_stream(tmp_path):
    run, status, log = run_against_our_server(tmp_path, dataloader_workers=0)

    samples = generated_samples(run.output_folder)
    assert samples, f"no generated samples under {run.output_folder}/results"
    assert all(path.read_text().split() for path in samples)
    assert "Received termination signal" in run.output()

    # PROTOCOL.md's order of a real run, one connection each.
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


def test_eirtrain_with_dataloader_workers_gets_each_sample_once(tmp_path):
    """Two DataLoader workers: two training connections share one pass."""
    run, status, log = run_against_our_server(tmp_path, dataloader_workers=2)

    assert generated_samples(run.output_folder)
    trainers = log.training_connections()
    assert len(trainers) == 2, [c.id for c in trainers]
    for trainer in trainers:
        assert trainer.requests[:5] == [*PROBE, "heartbeat"]
        assert trainer.terminated, f"conn#{trainer.id} never got terminate"
        assert trainer.after_reset, f"conn#{trainer.id} got no training data"

    # The second worker's probe reset either rewound (the first had not
    # fetched yet) or joined the pass in progress; never anything else.
    resets = sum(c.requests.count("reset") for c in log.ordered())
    assert resets == 4
    assert status["rewinds"] in (resets - 1, resets)

    assert_training_pass_exact(status, log)
    iterations = sum(len(c.after_reset) // BATCH_SIZE for c in trainers)
    buffer = SMOKE_SHRINK["global"]["evaluation_checkpoint"]["sample_interval"] // 2
    assert iterations - buffer < last_logged_iteration(run.output_folder) <= iterations
