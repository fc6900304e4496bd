"""--source module:factory: your own data through the unchanged server.

A small custom source (its own sample ids, a tabular input, array and
survival outputs) is written to a temporary folder and served by module name
and by file path, generating in the server process and in worker processes.
Worker processes import the module themselves, so this also checks that they
find it wherever the server did (its sys.path and current directory). Then
every kind of bad --source is tried on the command line: one clear line, a
non-zero exit, no traceback.
"""

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import run_streamer
from support.eir_like_client import EirLikeClient
from support.servers import running_server

from eirstream import eirformat
from eirstream import encoders as enc
from eirstream.loading import load_checked_source as load_source

SETTINGS = {"seed": 3, "sequence_length": 64, "max_iterations": 30}

# A source that shares nothing with the tutorial simulator: ids "row-<k>",
# values computed from the index, and a helper module imported from its own
# folder (as a user's module would).
PLUGIN = '''
"""A user's own data source, used by the tests."""
import random

from plugin_helpers import row_values

from eirstream import eirformat
from eirstream import encoders as enc

INFO = {
    "inputs": {"measures": {"type": "tabular"}},
    "outputs": {
        "trend": {"type": "array", "shape": [2, 3]},
        "survival": {"type": "survival"},
    },
}


class RowSource:
    def __init__(self, seed, max_iterations):
        self.seed = seed
        self.num_samples = max_iterations

    def dataset_info(self):
        return INFO

    def sample(self, index):
        rng = random.Random(f"{self.seed}/{index}")
        height, weight = row_values(rng)
        return eirformat.build_sample(
            INFO,
            f"row-{index}",
            inputs={"measures": enc.tabular_row({"height": height, "w": weight})},
            outputs={
                "trend": enc.encode_array([[index, 1, 2], [3, 4, height]]),
                "survival": enc.survival_row(index % 2, index / 10, "dead", "t"),
            },
        )

    def index_of(self, sample_id):
        prefix, _, number = sample_id.partition("-")
        if prefix != "row" or not number.isdigit():
            return None
        index = int(number)
        return index if index < self.num_samples else None


def make(seed, sequence_length, max_iterations):
    return RowSource(seed, max_iterations)


def make_unbounded(**settings):
    return RowSource(settings["seed"], None)


class Incomplete:
    num_samples = "all of them"

    def sample(self, index):
        return {}


def make_incomplete(**settings):
    return Incomplete()


def make_failing(**settings):
    raise RuntimeError("database unreachable")


def make_positional(path):
    return RowSource(0, 1)


def make_bad_info(**settings):
    source = RowSource(0, 1)
    source.dataset_info = lambda: {
        "inputs": {"x": {"type": "array"}},
        "outputs": {"y": {"type": "tabular"}},
    }
    return source


not_callable = 42
'''

HELPERS = """
def row_values(rng):
    return round(rng.uniform(150, 200), 1), rng.randint(50, 100)
"""


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "rows_plugin.py").write_text(PLUGIN)
    (folder / "plugin_helpers.py").write_text(HELPERS)
    return folder


@pytest.fixture
def on_path(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin folder on sys.path, its modules forgotten afterwards."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    yield plugin_dir
    for name in ("rows_plugin", "plugin_helpers"):
        sys.modules.pop(name, None)


def expected_sample(index: int, seed: int = 3) -> dict:
    """What the plugin must produce, computed here without importing it."""
    import random

    rng = random.Random(f"{seed}/{index}")
    height, weight = round(rng.uniform(150, 200), 1), rng.randint(50, 100)
    return {
        "inputs": {"measures": {"height": height, "w": weight}},
        "target_labels": {
            "trend": {"trend": enc.encode_array([[index, 1, 2], [3, 4, height]])},
            "survival": {"dead": str(index % 2), "t": index / 10},
        },
        "sample_id": f"row-{index}",
    }


def serve_and_train(
    spec: str, workers: int, caplog: pytest.LogCaptureFixture
) -> tuple[list[dict], dict]:
    """EIR's sequence against a server of `spec`: probe, setup read, reset,
    validation ids, one training pass. Returns (training samples, status).

    Worker processes import the source themselves; one that cannot would be
    logged as an error (and the server would quietly make samples itself),
    so no error may be logged."""
    caplog.set_level(logging.INFO, logger="eirstream")
    with running_server(source=spec, max_iterations=30, seed=3, workers=workers) as s:
        setup = EirLikeClient(s.url)
        probe = setup.validation_probe()
        assert probe["info"]["payload"] == {
            "inputs": {"measures": {"type": "tabular"}},
            "outputs": {
                "trend": {"type": "array", "shape": [2, 3]},
                "survival": {"type": "survival"},
            },
        }
        assert probe["data"]["payload"] == [expected_sample(0)]
        first = setup.request({"type": "getData", "payload": {"batch_size": 8}})[0]
        assert first["payload"] == [expected_sample(i) for i in range(8)]
        setup.close()
        control = EirLikeClient(s.url)
        assert control.request({"type": "reset"}, replies=2)[0]["type"] == (
            "resetConfirmation"
        )
        ids = ["row-2", "row-5", "row-29", "row-30", "sample_7"]
        reply = control.request(
            {"type": "setValidationIds", "payload": {"validation_ids": ids}}
        )[0]
        assert reply["type"] == "validationIdsConfirmation", reply
        control.close()
        trainer = EirLikeClient(s.url)
        trainer.validation_probe()
        samples = trainer.training_pass(batch_size=7)
        trainer.close()
        status = s.status()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    return samples, status


@pytest.mark.parametrize("workers", [0, 2])
def test_a_module_on_sys_path_is_served(
    caplog: pytest.LogCaptureFixture, on_path: Path, workers: int
) -> None:
    samples, status = serve_and_train("rows_plugin:make", workers, caplog)
    # row-2, row-5 and row-29 are this source's ids; row-30 is past its end
    # and sample_7 is not its id format, so neither removes anything.
    kept = [i for i in range(30) if i not in (2, 5, 29)]
    assert samples == [expected_sample(i) for i in kept]
    assert status["validation_ids"] == 3
    assert status["validation_ids_received"] == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_path_is_served(
    caplog: pytest.LogCaptureFixture,
    plugin_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    """A path relative to the current directory; the plugin's own folder is
    not on sys.path, yet its neighbour module is imported."""
    monkeypatch.chdir(plugin_dir.parent)
    samples, _ = serve_and_train("user_code/rows_plugin.py:make", workers, caplog)
    sys.modules.pop("plugin_helpers", None)
    assert [s["sample_id"] for s in samples] == [
        f"row-{i}" for i in range(30) if i not in (2, 5, 29)
    ]
    assert samples[0] == expected_sample(0)


def test_an_unbounded_source_never_terminates(on_path: Path) -> None:
    with running_server(source="rows_plugin:make_unbounded", seed=3) as s:
        client = EirLikeClient(s.url)
        client.validation_probe()
        for _ in range(5):
            batch = client.fetch_batch(64)
            assert batch is not None and len(batch) == 64
        assert batch[-1] == expected_sample(319)
        client.close()
        assert s.status()["remaining_iterations"] is None


def test_load_source_accepts_dotted_factories_and_checks_the_result() -> None:
    source = load_source("data_simulator:SimulatedHealthData", SETTINGS)
    assert source.num_samples == 30
    eirformat.check_sample(source.sample(0), source.dataset_info())


# =============================================================================
# Bad --source specs: one clear line each, from load_source and the CLI
# =============================================================================
def bad_specs(folder: Path) -> list[tuple[str, str]]:
    plugin = folder / "rows_plugin.py"
    return [
        ("rows_plugin", "--source must be module:factory or path/to/file.py:factory"),
        (":make", "--source must be module:factory"),
        ("rows_plugin:", "--source must be module:factory"),
        ("no_such_module_here:make", "no module named 'no_such_module_here'"),
        ("no_such_pkg.sub:make", "no module named 'no_such_pkg'"),
        (f"{folder / 'absent.py'}:make", f"no such file {folder / 'absent.py'}"),
        ("rows_plugin:nothing_here", "rows_plugin has no attribute 'nothing_here'"),
        (f"{plugin}:RowSource.nope", "has no attribute 'RowSource.nope'"),
        ("rows_plugin:not_callable", "not_callable is a int, not a callable factory"),
        (
            "rows_plugin:make_incomplete",
            "the Incomplete it made does not fit SampleSource (eirstream/sources.py): "
            "no dataset_info() method; no index_of() method; num_samples is "
            "'all of them'",
        ),
        (
            "rows_plugin:make_failing",
            "make_failing(...) failed: RuntimeError: database unreachable",
        ),
        (
            "rows_plugin:make_positional",
            "make_positional must accept the keyword arguments seed, "
            "sequence_length, max_iterations (or **kwargs)",
        ),
        (
            "rows_plugin:make_bad_info",
            "dataset info inputs['x'] needs 'shape', a list of positive integers",
        ),
        ("broken_module:make", "importing broken_module failed: SyntaxError"),
        ("needs_missing:make", "importing needs_missing failed: No module named"),
    ]


@pytest.fixture
def broken_modules(plugin_dir: Path) -> Path:
    (plugin_dir / "broken_module.py").write_text("def make(:\n")
    (plugin_dir / "needs_missing.py").write_text("import not_installed_anywhere\n")
    return plugin_dir


def test_load_source_errors_name_the_problem(on_path: Path, broken_modules) -> None:
    for spec, fragment in bad_specs(on_path):
        with pytest.raises(ValueError) as caught:
            load_source(spec, SETTINGS)
        message = str(caught.value)
        assert fragment in message, (spec, message)
        assert "\n" not in message, message
    for name in ("broken_module", "needs_missing"):
        sys.modules.pop(name, None)


def test_cli_rejects_bad_sources_in_one_line_without_traceback(
    broken_modules: Path,
) -> None:
    """Run from the plugin's folder: the CLI finds modules in the current
    directory although the server script lives elsewhere."""
    for spec, fragment in bad_specs(broken_modules):
        done = run_streamer(
            "--port", "0", "--workers", "0", "--source", spec, cwd=broken_modules
        )
        assert done.returncode == 2, (spec, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (spec, lines)
        assert "ERROR" in lines[0] and fragment in lines[0], (spec, lines[0])


def test_check_option_validates_a_source(on_path: Path) -> None:
    """`--check N` checks the configured source and serves nothing: one line
    and exit status 0 when it fits, one error line and 1 when not."""
    ok = run_streamer(
        "--check", "5", "--source", "rows_plugin:make", "--max-iterations", "3",
        cwd=on_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 3 samples checked; input measures (tabular)")
    assert ok.stdout.count("\n") == 1 and ok.stderr == "", (ok.stdout, ok.stderr)

    (on_path / "bad_rows.py").write_text(
        textwrap.dedent(
            """
            from rows_plugin import RowSource

            class BadRows(RowSource):
                def sample(self, index):
                    sample = super().sample(index)
                    sample["target_labels"]["trend"] = "not nested"
                    return sample

            def make(**settings):
                return BadRows(0, 4)
            """
        )
    )
    bad = run_streamer("--check", "--source", "bad_rows:make", cwd=on_path)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "error: row-0: target_labels['trend'] must be nested as {'trend': value} "
        "for a array output, got 'not nested'"
    )


def test_check_option_checks_the_default_source_and_a_dataset(
    tmp_path: Path, index_cache: Path
) -> None:
    """`--check` checks whatever the command line would serve: the tutorial's
    data by default, or `--dataset SPEC`."""
    done = run_streamer("--check", "3", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "ok: 3 samples checked; input text_input (sequence), "
        "output text_output (sequence)\n"
    )
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("yaml")
    table = pa.table({"age": [20, 30, 40], "label": ["a", "b", "a"]})
    pq.write_table(table, tmp_path / "people.parquet")
    spec = tmp_path / "people.yaml"
    spec.write_text(
        "files: people.parquet\n"
        "inputs:\n  clinical: {type: tabular, columns: [age]}\n"
        "outputs:\n  label: {type: tabular, columns: [label]}\n"
    )
    done = run_streamer("--check", "--dataset", str(spec))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "ok: 3 samples checked; input clinical (tabular), output label (tabular)\n"
    )
    spec.write_text(spec.read_text().replace("[label]", "[grade]"))
    done = run_streamer("--check", "--dataset", str(spec))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: --dataset ") and "grade" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
