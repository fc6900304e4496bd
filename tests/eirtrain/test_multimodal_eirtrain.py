"""examples/multimodal against the real client: eirtrain trains all five
inputs and five outputs of every EIR modality to a clean exit, and writes a
validation history and generated samples for each kind of output."""

from pathlib import Path

from support import ROOT
from support.eirtrain_support import run_eirtrain, write_shrunk_configs
from support.server_process import ServerProcess

SPEC = "examples.multimodal.source:make_source"
EXAMPLE = ROOT / "examples" / "multimodal"

SHRINK = {
    "global": {
        "basic_experiment": {"batch_size": 16, "valid_size": 16},
        "data_preparation": {"streaming_setup_samples": 96},
        "evaluation_checkpoint": {"sample_interval": 5, "checkpoint_interval": 5},
        "visualization_logging": {"no_pbar": True, "plot_skip_steps": 5},
    }
}
MAX_ITERATIONS = 208  # 16 validation samples, then 12 batches of 16


def test_eirtrain_trains_every_modality(tmp_path: Path) -> None:
    output_folder = tmp_path / "run"
    args = ["--port", "0", "--workers", "1", "--source", SPEC]
    args += ["--max-iterations", str(MAX_ITERATIONS)]
    log_path = tmp_path / "server.log"
    with ServerProcess(*args, log_path=log_path, debug_log=True) as server:
        configs = write_shrunk_configs(
            EXAMPLE, tmp_path / "configs", server.url, output_folder, SHRINK
        )
        assert len(configs["input"]) == 5 and len(configs["output"]) == 5
        run = run_eirtrain(
            configs, output_folder, tmp_path / "eirtrain.log", timeout=400
        )
        status = server.status()
    assert not run.timed_out, run.tail()
    assert run.returncode == 0, run.tail()
    assert "Received termination signal" in run.output()
    assert "Traceback" not in run.output(), run.tail(80)
    assert status["validation_ids"] == 16

    results = output_folder / "results"
    for output, target in (
        ("diagnosis", "group"),
        ("diagnosis", "score"),
        ("profile", "profile"),
        ("mask", "mask"),
        ("summary", "summary"),
        ("outcome", "event"),
    ):
        history = results / output / target / f"validation_{target}_history.log"
        rows = history.read_text().splitlines()
        assert rows[0].startswith("iteration,") and len(rows) >= 2, history
    assert list((results / "mask" / "mask" / "samples").glob("*/auto/*_generated.png"))
    assert list(
        (results / "profile" / "profile" / "samples").glob("*/auto/*_generated.npy")
    )
    assert list(
        (results / "summary" / "summary" / "samples").glob("*/auto/*_generated.txt")
    )
    assert list((output_folder / "saved_models").glob("*.pt"))
