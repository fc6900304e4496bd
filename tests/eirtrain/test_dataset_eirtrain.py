"""--dataset against the real EIR client, on datasets made here (no download).

- A text corpus as EIR's FineWeb tutorial streams it: Parquet in two files of
  several row groups, documents of 5 to 2,000 words cut into word chunks for
  a sequence output, served to two DDP ranks (CPU) with 2 DataLoader workers
  each over a bounded stream (one epoch). The server's log shows each chunk
  served at most once, the same number of full batches to every training
  connection, and no validation chunk.
- Images with captions and a label: Parquet holding PNG and JPEG bytes in
  Hugging Face's Image layout, an image input, a caption input and a tabular
  output.
- A CSV, tabular in and tabular out, shuffled over two epochs.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support import ROOT
from support.datasets import image_bytes, write_people
from support.eirtrain_support import (
    StreamLog,
    parse_stream_log,
    run_eirtrain,
    write_shrunk_configs,
)
from support.server_process import ServerProcess

# the server's index cache in tmp_path (the server inherits $EIR_STREAM_CACHE)
pytestmark = pytest.mark.usefixtures("index_cache")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

EIRTRAIN_TIMEOUT = 420
DEMO = ROOT / "examples" / "datasets" / "demo"
QUIET = {"visualization_logging": {"no_pbar": True}}


def serve_and_train(
    tmp_path: Path,
    spec: Path,
    config_dir: Path,
    shrink: dict[str, Any],
    *server_args: str,
) -> tuple[str, dict[str, Any], StreamLog]:
    """Serve `spec`, train eirtrain on it to its end (exit 0, no traceback):
    eirtrain's output, the server's last status and its parsed log."""
    args = ["--port", "0", "--dataset", str(spec), "--workers", "1", *server_args]
    output_folder = tmp_path / "run"
    with ServerProcess(*args, debug_log=True, log_path=tmp_path / "server.log") as s:
        configs = write_shrunk_configs(
            config_dir, tmp_path / "configs", s.url, output_folder, shrink
        )
        run = run_eirtrain(
            configs, output_folder, tmp_path / "eirtrain.log", EIRTRAIN_TIMEOUT
        )
        status, log = s.status(), parse_stream_log(s.log)
    assert not run.timed_out, f"eirtrain ran over {EIRTRAIN_TIMEOUT} s:\n{run.tail()}"
    assert run.returncode == 0, f"eirtrain exited {run.returncode}:\n{run.tail()}"
    assert "Traceback" not in run.output(), run.tail(80)
    print(f"{spec.name}: eirtrain took {run.seconds:.0f} s")
    return run.output(), status, log


def assert_each_sample_once_and_level(log: StreamLog, status: dict[str, Any]) -> int:
    """No sample served twice for training, none of the validation ones, and
    the same number of full batches for every training connection; returns
    that number."""
    delivered = log.training_deliveries()
    twice = [i for i, n in Counter(delivered).items() if n > 1]
    assert not twice, f"served twice: {twice[:20]}"
    assert log.validation_indices, "no validation ids reached the server"
    assert not log.validation_indices & set(delivered), "validation served"
    trainers = log.training_connections()
    levels = {c.id: len(c.batches_after_reset) for c in trainers}
    assert len(set(levels.values())) == 1, f"unequal batches: {levels}"
    assert status["connections_in_pass"] == 0
    return next(iter(levels.values()))


# -- the text corpus, two ranks -------------------------------------------------
def test_a_word_chunked_corpus_trains_two_ranks_with_workers(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "examples" / "datasets"))
    from make_demo_corpus import write_corpus

    write_corpus(tmp_path / "data", files=2, documents=24, seed=3)
    spec = tmp_path / "corpus.yaml"
    spec.write_text((DEMO / "corpus.yaml").read_text())
    shrink = {
        "global": {
            "basic_experiment": {"batch_size": 16, "valid_size": 40},
            "data_preparation": {"streaming_setup_samples": 240},
            "evaluation_checkpoint": {
                "sample_interval": 1000,
                "checkpoint_interval": 1000,
            },
            "accelerator": {"hardware": "cpu", "strategy": "ddp", "devices": 2},
            **QUIET,
        }
    }
    _, status, log = serve_and_train(tmp_path, spec, DEMO, shrink, "--epochs", "1")
    trainers = log.training_connections()
    assert len(trainers) == 2 * 2, [c.id for c in trainers]  # ranks x workers
    level = assert_each_sample_once_and_level(log, status)
    assert level > 0
    print(f"corpus: {status['max_iterations']} word chunks, {level} batches x 4 conns")


# -- images with captions and a label ----------------------------------------------
def write_paintings(folder: Path, rows: int) -> Path:
    rng = random.Random(7)
    styles = ["cubism", "baroque", "ukiyo-e"]
    kinds = ["PNG", "JPEG"]
    images = [
        {
            "bytes": image_bytes(
                kinds[i % 2], (24, 20), colour=tuple(rng.randrange(256) for _ in "rgb")
            ),
            "path": f"p{i}.img",
        }
        for i in range(rows)
    ]
    table = pa.table(
        {
            "image": images,
            "caption": [f"a {rng.choice(styles)} painting of a cat" for _ in images],
            "style": [rng.choice(styles) for _ in images],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "paintings.parquet", row_group_size=64)
    spec = folder / "paintings.yaml"
    spec.write_text(
        "files: paintings.parquet\n"
        "inputs:\n"
        "  painting: {type: image, column: image, size: [16, 16], mode: RGB}\n"
        "  caption: {type: sequence, column: caption}\n"
        "outputs:\n"
        "  style: {type: tabular, columns: [style]}\n"
    )
    return spec


def write_configs(folder: Path, configs: dict[str, dict[str, Any]]) -> Path:
    """Config files (JSON is YAML) named by kind, for write_shrunk_configs."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        (folder / f"{name}.yaml").write_text(json.dumps(config, indent=2))
    return folder


def small_globals(batch: int, valid: int, setup: int) -> dict[str, Any]:
    return {
        "basic_experiment": {
            "output_folder": "runs/x",
            "n_epochs": 1,
            "batch_size": batch,
            "valid_size": valid,
            "dataloader_workers": 0,
        },
        "data_preparation": {"streaming_setup_samples": setup},
        "evaluation_checkpoint": {"sample_interval": 10, "checkpoint_interval": 10},
        "accelerator": {"hardware": "cpu"},
        **QUIET,
    }


def source(kind: str, name: str, kind_info: dict, model: dict) -> dict[str, Any]:
    key = "input" if kind == "input" else "output"
    return {
        f"{key}_info": {
            f"{key}_source": "ws://localhost:8000/ws",
            f"{key}_name": name,
            f"{key}_type": kind_info.pop("type"),
        },
        f"{key}_type_info": kind_info,
        "model_config": model,
    }


def test_images_with_captions_train_a_label(tmp_path: Path) -> None:
    spec = write_paintings(tmp_path / "data", rows=320)
    image = {"type": "image", "size": [16], "mode": "RGB", "auto_augment": False}
    caption = {"type": "sequence", "max_length": 16, "split_on": " "}
    style = {"type": "tabular", "target_cat_columns": ["style"]}
    configs = write_configs(
        tmp_path / "given",
        {
            "globals": small_globals(batch=16, valid=32, setup=160),
            "input_painting": source("input", "painting", image, {"model_type": "cnn"}),
            "input_caption": source("input", "caption", caption, {"embedding_dim": 16}),
            "fusion": {"model_type": "mlp-residual"},
            "output_style": source("output", "style", style, {}),
        },
    )
    _, status, log = serve_and_train(tmp_path, spec, configs, {}, "--epochs", "1")
    assert assert_each_sample_once_and_level(log, status) > 0


# -- a CSV, shuffled over two epochs --------------------------------------------
def test_a_csv_trains_tabular_to_tabular_shuffled_over_two_epochs(
    tmp_path: Path,
) -> None:
    spec = write_people(tmp_path, 240)
    clinical = {
        "type": "tabular",
        "input_cat_columns": ["sex"],
        "input_con_columns": ["age", "bmi"],
    }
    outcome = {"type": "tabular", "target_cat_columns": ["outcome"]}
    configs = write_configs(
        tmp_path / "given",
        {
            "globals": small_globals(batch=16, valid=24, setup=120),
            "input_clinical": source(
                "input", "clinical", clinical, {"model_type": "tabular"}
            ),
            "fusion": {"model_type": "mlp-residual"},
            "output_outcome": source("output", "outcome", outcome, {}),
        },
    )
    server_args = ("--shuffle", "--epochs", "2")
    _, status, log = serve_and_train(tmp_path, spec, configs, {}, *server_args)
    assert (status["epochs"], status["shuffled"]) == (2, True)
    delivered = log.training_deliveries()
    assert not log.validation_indices & set(delivered), "validation served"
    per_index = Counter(delivered)
    assert max(per_index.values()) <= 2, "an index served more than once an epoch"
    assert len(per_index) == 240 - len(log.validation_indices)  # every row trained
    assert delivered[:40] != sorted(delivered[:40]), "the epoch is not shuffled"
