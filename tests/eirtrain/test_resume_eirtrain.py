"""--state with the real EIR client: a stopped server, and the run it fed,
go on where they were (issue 26, point 4).

A bounded, shuffled dataset stream (a CSV of ROWS rows made here,
`--shuffle --epochs 1`, on the named stream `people`), its server keeping
its state in a file. Run 1 is a real eirtrain with 2 DataLoader workers and
a checkpoint every few iterations. Once the server has sent half of the
epoch's training samples and run 1 has saved a checkpoint, the server is
stopped, with SIGKILL in one test and SIGTERM in the other, and eirtrain
exits on its own (the client's behaviour: it reconnects once, finds nothing
listening and fails). A new server starts with the same `--state`, then
run 2, a new eirtrain run from run 1's last checkpoint
(`model.pretrained_checkpoint`), trains to the end of the epoch: it must
exit 0.

Read from the two servers' DEBUG logs: run 2's setup reads the samples run
1's setup read, so it sends the same validation ids; no validation sample
is sent for training in either run; every other sample of the epoch is
sent for training exactly once across the two runs, but the balanced end's
remainder (fewer than one more batch per connection: status
`remaining_iterations`) and, after SIGKILL only, the replies the server
recorded in its state file whose log line the kill cut off (at most one
batch per connection; counted from the restarted server's "resumed from"
line, which says how many samples the file names as sent).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.datasets import write_people
from support.eirtrain_support import (
    EirtrainRun,
    StreamLog,
    last_checkpoint,
    parse_stream_log,
    run_eirtrain,
    write_shrunk_configs,
)
from support.server_process import ServerProcess, request_status
from support.waiting import wait_until

# the server's index cache in tmp_path (the server inherits $EIR_STREAM_CACHE)
pytestmark = pytest.mark.usefixtures("index_cache")

ROWS = 1200
BATCH_SIZE = 32
VALID_SIZE = 100
SETUP_SAMPLES = 600
WORKERS = 2  # DataLoader workers: two training connections
TRAINING = ROWS - VALID_SIZE  # the epoch's training samples
# Run 1 validates and saves a checkpoint every CHECKPOINT_EVERY iterations
# (EIR checkpoints only at a validation step), and keeps every checkpoint.
CHECKPOINT_EVERY = 4
STREAM = "people"
# Guards a hung run; each run takes a fraction of it.
EIRTRAIN_TIMEOUT = 300
RESUMED = re.compile(
    rf"stream '{STREAM}' resumed from \S+: epoch 0, ([\d,]+) of ([\d,]+) "
    r"samples served; ([\d,]+) validation ids kept out of training"
)


def write_configs(folder: Path) -> Path:
    """EIR configs (JSON is YAML) for the CSV, named by kind for
    write_shrunk_configs, which sets each run's URL and output folder."""
    url = "ws://localhost:8000/ws"
    configs: dict[str, dict[str, Any]] = {
        "globals": {
            "basic_experiment": {
                "output_folder": "runs/x",
                "n_epochs": 1,
                "batch_size": BATCH_SIZE,
                "valid_size": VALID_SIZE,
                "dataloader_workers": WORKERS,
            },
            "data_preparation": {"streaming_setup_samples": SETUP_SAMPLES},
            "evaluation_checkpoint": {
                "sample_interval": CHECKPOINT_EVERY,
                "checkpoint_interval": CHECKPOINT_EVERY,
                "n_saved_models": 1000,
            },
            "accelerator": {"hardware": "cpu"},
            "visualization_logging": {"no_pbar": True},
        },
        "input_clinical": {
            "input_info": {
                "input_source": url,
                "input_name": "clinical",
                "input_type": "tabular",
            },
            "input_type_info": {
                "input_cat_columns": ["sex"],
                "input_con_columns": ["age", "bmi"],
            },
            "model_config": {"model_type": "tabular"},
        },
        "fusion": {"model_type": "mlp-residual"},
        "output_outcome": {
            "output_info": {
                "output_source": url,
                "output_name": "outcome",
                "output_type": "tabular",
            },
            "output_type_info": {"target_cat_columns": ["outcome"]},
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        (folder / f"{name}.yaml").write_text(json.dumps(config, indent=2))
    return folder


def serve(spec: Path, state: Path, log_path: Path) -> ServerProcess:
    """The bounded, shuffled dataset server keeping its state in `state`."""
    args = [
        "--port", "0", "--dataset", str(spec), "--workers", "1",
        "--shuffle", "--epochs", "1", "--state", str(state),
    ]  # fmt: skip
    return ServerProcess(*args, log_path=log_path, debug_log=True)


def start_eirtrain(
    pool: ThreadPoolExecutor,
    given: Path,
    folder: Path,
    url: str,
    overrides: dict[str, Any] | None = None,
) -> Future[EirtrainRun]:
    """eirtrain on `given`'s configs against `url` (with `overrides` merged
    into the global config), in the background."""
    output_folder = folder / "run"
    configs = write_shrunk_configs(
        given, folder / "configs", url, output_folder, {"global": overrides or {}}
    )
    return pool.submit(
        run_eirtrain, configs, output_folder, folder / "eirtrain.log", EIRTRAIN_TIMEOUT
    )


@dataclass
class Run:
    """One eirtrain run and its server's story of STREAM, after both ended."""

    eirtrain: EirtrainRun
    log: StreamLog


def run_and_stop(
    spec: Path, state: Path, given: Path, folder: Path, stop: signal.Signals
) -> Run:
    """Run 1: the server stopped with `stop` once it has sent half of the
    epoch's training samples and the run has saved a checkpoint; then the
    run's own exit."""
    # On leaving, the server stops first: a run still going then ends too.
    with (
        ThreadPoolExecutor(1) as pool,
        serve(spec, state, folder / "server.log") as server,
    ):
        run = start_eirtrain(pool, given, folder, f"{server.url}/{STREAM}")

        def half_sent_with_a_checkpoint() -> bool:
            if run.done():
                raise AssertionError(f"run 1 ended unstopped:\n{run.result().tail()}")
            sent = parse_stream_log(server.log, STREAM).training_deliveries()
            return len(sent) >= TRAINING // 2 and bool(last_checkpoint(folder / "run"))

        wait_until(
            half_sent_with_a_checkpoint,
            "half of the epoch sent and a checkpoint saved",
            timeout=EIRTRAIN_TIMEOUT,
            interval=0.05,
        )
        stopped = time.monotonic()
        server.process.send_signal(stop)
        exit_status = server.wait(EIRTRAIN_TIMEOUT)
        eirtrain = run.result()
    assert not eirtrain.timed_out, f"run 1 did not end:\n{eirtrain.tail()}"
    print(
        f"{stop.name}: server exit {exit_status}; run 1 exited "
        f"{eirtrain.returncode}, {time.monotonic() - stopped:.0f} s after the stop"
    )
    return Run(eirtrain, parse_stream_log(server.log, STREAM))


def resume_and_run(
    spec: Path, state: Path, given: Path, folder: Path, checkpoint: Path
) -> tuple[Run, dict[str, Any], re.Match[str]]:
    """Run 2 from `checkpoint` on a new server with the same --state: the
    run, the stream's status afterwards and the server's "resumed" line."""
    # On leaving, the server stops first: a run still going then ends too.
    with (
        ThreadPoolExecutor(1) as pool,
        serve(spec, state, folder / "server.log") as server,
    ):
        line = server.wait_for(f"stream '{STREAM}' resumed from")
        resumed = RESUMED.search(line)
        assert resumed is not None, line
        # No checkpoints, so no validation: with DataLoader workers, the
        # first one starts two more worker processes.
        overrides = {
            "model": {"pretrained_checkpoint": str(checkpoint)},
            "evaluation_checkpoint": {
                "sample_interval": 1000,
                "checkpoint_interval": 1000,
            },
        }
        url = f"{server.url}/{STREAM}"
        eirtrain = start_eirtrain(pool, given, folder, url, overrides).result()
        status = request_status(url)
    assert not eirtrain.timed_out, f"run 2 ran over {EIRTRAIN_TIMEOUT} s"
    assert eirtrain.returncode == 0, f"run 2 exited {eirtrain.returncode}:\n" + (
        eirtrain.tail()
    )
    assert "Loading pretrained checkpoint" in eirtrain.output()
    return Run(eirtrain, parse_stream_log(server.log, STREAM)), status, resumed


def stop_and_resume(tmp_path: Path, stop: signal.Signals) -> None:
    """Run 1, its server stopped by `stop` half-way, run 2 from run 1's last
    checkpoint on a new server with the same --state; the module's checks."""
    spec = write_people(tmp_path / "data", ROWS)
    given = write_configs(tmp_path / "given")
    state = tmp_path / "state" / "eirstream.state"
    state.parent.mkdir()
    folders = tmp_path / "run1", tmp_path / "run2"
    for folder in folders:
        folder.mkdir()
    one = run_and_stop(spec, state, given, folders[0], stop)
    checkpoint = last_checkpoint(one.eirtrain.output_folder)
    assert checkpoint is not None
    two, status, resumed = resume_and_run(spec, state, given, folders[1], checkpoint)
    check_validation(one, two, status)
    check_exactly_once(one, two, status, resumed, stop)


def check_validation(one: Run, two: Run, status: dict[str, Any]) -> None:
    """Run 2's setup read what run 1's read, so it chose the same validation
    ids: the stream skips run 1's set, and run 2 sent as many ids."""
    setup = one.log.setup_deliveries()
    assert len(setup) >= SETUP_SAMPLES
    assert two.log.setup_deliveries() == setup, "run 2's setup read other samples"
    validation = one.log.validation_indices
    assert validation is not None and len(validation) == VALID_SIZE
    assert two.log.validation_indices == validation
    assert status["validation_ids_received"] == VALID_SIZE
    assert status["validation_ids"] == VALID_SIZE


def check_exactly_once(
    one: Run,
    two: Run,
    status: dict[str, Any],
    resumed: re.Match[str],
    stop: signal.Signals,
) -> None:
    """Every training sample of the epoch sent once across the two runs, but
    the balanced end's remainder and the replies a SIGKILL left unlogged."""
    validation = one.log.validation_indices or set()
    sent1, sent2 = one.log.training_deliveries(), two.log.training_deliveries()
    for sent in (sent1, sent2):
        twice = [i for i, n in Counter(sent).items() if n > 1]
        assert not twice, f"served twice in one run: {twice[:20]}"
    assert sent2, "run 2 was sent nothing for training"
    again = sorted(set(sent1) & set(sent2))
    assert not again, f"run 2 was sent {len(again)} of run 1's samples: {again[:20]}"
    leaked = sorted(validation & {*sent1, *sent2})
    assert not leaked, f"validation samples sent for training: {leaked[:20]}"

    served, per_epoch, kept = (int(g.replace(",", "")) for g in resumed.groups())
    assert (per_epoch, kept) == (TRAINING, VALID_SIZE)
    where = {key: status["resumed"][key] for key in ("epoch", "served", "per_epoch")}
    assert where == {"epoch": 0, "served": served, "per_epoch": TRAINING}
    # Samples the state file names as sent that server 1's log does not: a
    # reply on file whose log line a SIGKILL cut off (one per connection at
    # most). After SIGTERM there must be none.
    unlogged = served - len(sent1)
    trainers1 = len(one.log.training_connections())
    limit = 0 if stop == signal.SIGTERM else trainers1 * BATCH_SIZE
    assert 0 <= unlogged <= limit, (
        f"server 2 resumed after {served} samples, server 1 logged {len(sent1)} "
        f"sent for training: {unlogged} recorded as sent that never left"
    )

    trainers2 = len(two.log.training_connections())
    assert trainers2 == WORKERS
    left = status["remaining_iterations"]
    assert left < trainers2 * BATCH_SIZE  # the balanced end's remainder
    missing = set(range(ROWS)) - validation - set(sent1) - set(sent2)
    assert len(missing) == left + unlogged, f"never sent: {sorted(missing)[:40]}"
    print(
        f"{stop.name}: run 1 {one.eirtrain.seconds:.0f} s, {len(sent1)} samples "
        f"sent (exit {one.eirtrain.returncode}); run 2 "
        f"{two.eirtrain.seconds:.0f} s, {len(sent2)} samples sent (exit 0); "
        f"exactly once: {len(sent1) + len(sent2)} of {TRAINING} training samples, "
        f"{left} left as the balanced end's remainder, {unlogged} on file unlogged"
    )


def test_a_run_resumes_after_its_server_is_killed(tmp_path: Path) -> None:
    stop_and_resume(tmp_path, signal.SIGKILL)


def test_a_run_resumes_after_its_server_is_stopped(tmp_path: Path) -> None:
    stop_and_resume(tmp_path, signal.SIGTERM)
