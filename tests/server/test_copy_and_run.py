"""Copy and run, or install: the tutorial's data either way, or your edit of it.

Copied: a Python environment holding only `websockets` runs the server from
a folder with just the README's copy list (the three tutorial files, the
`eirstream/` package and `configs/`), and an EIR-like client gathers its
setup samples and trains on a pass; a source of the user's beside them works
the same way. Started without `websockets`, the server says in one line what
to install, and `--check` still checks the data.

Installed (`pip install .`): the `eirstream` command serves the tutorial's
data from any folder, and, from a folder that holds an edited copy of
`single_sample_simulation.py`, that edit.
"""

import re
import shutil
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT
from support.commands import run
from support.eir_like_client import EirLikeClient
from support.server_process import ServerProcess

from data_simulator import SimulatedHealthData

# What the README's "Copy and run" paragraph lists, in its order (a test
# below holds the two to each other).
COPY_LIST = [
    "single_sample_simulation.py",
    "data_simulator.py",
    "simulation_streamer.py",
    "eirstream",
    "configs",
]
# What `pip install .` builds the package from.
PROJECT_FILES = [*COPY_LIST[:4], "pyproject.toml", "README.md"]


def test_the_readme_copy_list_is_the_list_these_tests_copy() -> None:
    readme = (ROOT / "README.md").read_text()
    paragraph = readme.split("**Copy and run**", 1)[1].split("\n\n", 1)[0]
    listed = paragraph.split(" into your project", 1)[0]
    named = [name.rstrip("/") for name in re.findall(r"`([^`]+)`", listed)]
    assert named == COPY_LIST, named


OWN_SOURCE = """
from eirstream.eirformat import build_sample
from eirstream.encoders import tabular_row
from eirstream.sample_ids import index_of_sample_id, sample_id

INFO = {
    "inputs": {"reading": {"type": "tabular"}},
    "outputs": {"label": {"type": "tabular"}},
}


class Rows:
    def __init__(self, max_iterations=None, **settings):
        self.num_samples = max_iterations

    def dataset_info(self):
        return INFO

    def sample(self, index):
        inputs = {"reading": tabular_row({"value": float(index % 7)})}
        outputs = {"label": tabular_row({"parity": str(index % 2)})}
        return build_sample(INFO, sample_id(index), inputs, outputs)

    def samples(self, indices):
        return [self.sample(i) for i in indices]

    def index_of(self, sample_id):
        return index_of_sample_id(sample_id, self.num_samples)
"""


def new_venv(folder: Path) -> Path:
    """A virtual environment with nothing installed (but pip); its python."""
    venv.create(folder, with_pip=True, symlinks=True)
    return folder / "bin" / "python"


def pip_install(python: Path, *args: str) -> None:
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    done = run([*pip, *args], timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment with nothing installed yet (not even websockets).
    The tests below install into it in turn, as a user would: nothing, then
    websockets, then the project."""
    yield new_venv(tmp_path_factory.mktemp("bare-venv"))


def copy_into(folder: Path, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, folder / name, ignore=ignore)
        else:
            shutil.copy2(source, folder / name)


def start(python: Path, folder: Path, *args: str, script: str) -> ServerProcess:
    return ServerProcess(
        "--port", "0", *args, python=str(python), cwd=folder, script=script
    )


def gather_and_train(url: str, stream: int, batch_size: int) -> list[dict]:
    """EIR's setup (probe, gather 200 samples) and one training pass."""
    setup = EirLikeClient(url)
    setup.validation_probe()
    gathered: list[dict] = []
    while len(gathered) < 200:
        gathered += setup.fetch_batch(batch_size) or []
    setup.close()
    # As many validation ids as leave whole batches for training (a bounded
    # pass serves only whole batches; see the stream's rules).
    ids = [
        sample["sample_id"] for sample in gathered[: stream % batch_size + batch_size]
    ]
    client = EirLikeClient(url)
    client.request({"type": "reset"}, replies=2)
    client.request({"type": "setValidationIds", "payload": {"validation_ids": ids}})
    client.close()
    trainer = EirLikeClient(url)
    trainer.validation_probe()
    trained = trainer.training_pass(batch_size)
    trainer.close()
    served = [sample["sample_id"] for sample in trained]
    assert len(set(served)) == len(served) == stream - len(ids)
    assert not set(served) & set(ids)
    return trained


def test_without_websockets_the_server_says_what_to_install(
    bare_python: Path, tmp_path: Path
) -> None:
    copy_into(tmp_path, COPY_LIST)
    done = run([bare_python, "simulation_streamer.py"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: the server needs the websockets package: "
        "pip install 'websockets>=14' (installing eirstream brings it)"
    )
    checked = run([bare_python, "simulation_streamer.py", "--check", "5"], cwd=tmp_path)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout.startswith("ok: 5 samples checked; input text_input")


def test_the_copied_files_alone_serve_a_training_run(
    bare_python: Path, tmp_path: Path
) -> None:
    """Runs after the test above, which needs `bare_python` without websockets."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_install(bare_python, *project["dependencies"])
    listed = run([bare_python, "-m", "pip", "list", "--format=freeze"]).stdout
    names = {line.split("==")[0].lower() for line in listed.split()}
    assert names - {"pip", "setuptools"} == {"websockets"}

    tutorial = tmp_path / "tutorial"
    copy_into(tutorial, COPY_LIST)
    script = "simulation_streamer.py"
    with start(bare_python, tutorial, "--max-iterations", "500", script=script) as s:
        trained = gather_and_train(s.url, 500, 32)
    assert trained[0]["inputs"]["text_input"].startswith("<START>")

    own = tmp_path / "own"
    copy_into(own, COPY_LIST)
    (own / "my_rows.py").write_text(OWN_SOURCE)
    args = ["--max-iterations", "300", "--source", "my_rows:Rows"]
    with start(bare_python, own, *args, script=script) as server:
        trained = gather_and_train(server.url, 300, 16)
    assert trained[0]["target_labels"]["label"]["parity"] in ("0", "1")


def first_samples(server: ServerProcess, count: int) -> list[dict]:
    client = EirLikeClient(server.url)
    client.validation_probe()
    batch = client.fetch_batch(count)
    client.close()
    assert batch is not None and len(batch) == count
    return batch


def test_the_installed_command_serves_the_tutorial_or_your_edited_copy(
    bare_python: Path, tmp_path: Path
) -> None:
    """`pip install .`, then `eirstream` from an empty folder (the installed
    tutorial files) and from a folder with an edited
    single_sample_simulation.py (that copy, in the worker process too)."""
    copy_into(tmp_path / "project", PROJECT_FILES)
    python = bare_python  # the tests above are done with it
    pip_install(python, str(tmp_path / "project"))
    command = str(python.parent / "eirstream")  # run as its shebang would
    args = ["--max-iterations", "100", "--workers", "1"]

    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    with start(python, anywhere, *args, script=command) as server:
        served = first_samples(server, 8)
    tutorial = SimulatedHealthData(seed=0, sequence_length=64, max_iterations=100)
    assert served == tutorial.samples(list(range(8)))

    mine = tmp_path / "mine"
    copy_into(mine, ["single_sample_simulation.py"])
    model = mine / "single_sample_simulation.py"
    text = model.read_text()
    assert "AGE = (18, 80)" in text, "the edit below needs this line"
    model.write_text(text.replace("AGE = (18, 80)", "AGE = (101, 101)"))
    with start(python, mine, *args, script=command) as server:
        served = first_samples(server, 8)
    prompts = [sample["inputs"]["text_input"] for sample in served]
    assert all(" Age: 101 " in prompt for prompt in prompts), prompts
