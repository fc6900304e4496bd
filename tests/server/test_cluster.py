"""--cluster against a real Dask cluster, started here as users start one.

A module-wide cluster: `dask scheduler` and `dask worker --nworkers 2
--nthreads 1` as subprocesses on 127.0.0.1 (support/local_dask.py), in a
scratch folder without our modules and without PYTHONPATH, so every module
the workers run has been uploaded by the server: the eirstream package as one
zip, and the source's own files. The server is a subprocess with --cluster;
the client reads whole passes as EIR's training connection does
(support/exact_pass.py). Nothing is mocked: the killed worker is a real Dask
worker process, killed with SIGKILL in the middle of a pass.

Without `distributed` the cluster tests skip, except in CI
(EIR_REQUIRE_CLIENT=1 or CI=true), where they fail: CI must run them
(support/required.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from support import ROOT
from support.commands import run, run_streamer
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
from support.local_dask import LocalDaskCluster, local_dask_cluster
from support.required import needs_dask
from support.server_process import ServerProcess
from support.servers import running_server
from support.waiting import wait_until

from eirstream.dask_engine import files_for_workers
from eirstream.readahead import SampleProducer
from eirstream.settings import DEFAULT_SOURCE

NUM_SAMPLES = 4000
VALIDATION = [k for k in range(NUM_SAMPLES) if k % 5 == 1]
EXPECTED = [k for k in range(NUM_SAMPLES) if k % 5 != 1]


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalDaskCluster]:
    needs_dask()
    with local_dask_cluster(nworkers=2, nthreads=1) as cluster:
        yield cluster


@pytest.fixture
def cluster(dask_cluster: LocalDaskCluster) -> LocalDaskCluster:
    """The module's cluster with both workers up (a killed one is restarted
    by its nanny)."""
    dask_cluster.wait_for_workers(2)
    return dask_cluster


# Run with -I in an empty folder: imports every module of the package from
# the zip given as argv[1] (not __main__, which would start a server) and
# prints the modules it found and those that came from elsewhere.
IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
archive = sys.argv[1]
sys.path.insert(0, archive)
import eirstream
names = ["eirstream"] + [
    module.name for module in pkgutil.walk_packages(eirstream.__path__, "eirstream.")
]
outside = [
    name
    for name in names
    if not name.endswith("__main__")
    and not importlib.import_module(name).__file__.startswith(archive)
]
print(json.dumps({"modules": names, "outside": outside}))
"""


def test_the_workers_get_the_whole_package_as_one_zip(tmp_path: Path) -> None:
    """Every module of eirstream goes to the workers in one zip, and each one
    imports from that zip alone: a module added to the package is never left
    behind. The default source's files follow, each after those it imports
    (a worker imports a file as it arrives). No cluster needed."""
    ours, theirs, spec = files_for_workers(DEFAULT_SOURCE, str(tmp_path))
    assert [Path(path).name for path in ours] == ["eirstream.zip"]
    package = ROOT / "eirstream"
    on_disk = {
        f"eirstream/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    with zipfile.ZipFile(ours[0]) as archive:
        zipped = {name for name in archive.namelist() if name.endswith(".py")}
    assert zipped == on_disk
    assert theirs == [
        str(ROOT / "single_sample_simulation.py"),
        str(ROOT / "data_simulator.py"),
    ]
    assert spec == DEFAULT_SOURCE
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run([sys.executable, "-I", "-c", IMPORT_EVERY_MODULE, ours[0]], cwd=empty)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert len(found["modules"]) == len(on_disk), found["modules"]
    assert found["outside"] == []


def modules_on_workers(cluster: LocalDaskCluster) -> dict[str, list[str]]:
    """Worker address -> files of our modules imported there."""

    def ours() -> list[str]:
        import sys

        names = ("data_simulator", "single_sample_simulation", "heavy_source")
        return sorted(
            getattr(module, "__file__", "") or ""
            for name, module in list(sys.modules.items())
            if name in names or name.startswith("_source_") or "my_source" in name
        )

    return cluster.client.run(ours)


def tasks_run(cluster: LocalDaskCluster) -> dict[str, int]:
    """Worker address -> tasks it has executed so far."""

    def executed(dask_worker) -> int:
        return dask_worker.state.executed_count

    return cluster.client.run(executed)


def test_cluster_serves_each_sample_once_with_the_local_bytes(
    cluster: LocalDaskCluster, tmp_path: Path
) -> None:
    args = ["--seed", "3", "--max-iterations", str(NUM_SAMPLES)]
    before = tasks_run(cluster)
    on_dask, status = validated_pass(
        *args, "--cluster", cluster.address,
        validation=VALIDATION, log_path=tmp_path / "dask.log",
    )  # fmt: skip
    ran = {a: n - before.get(a, 0) for a, n in tasks_run(cluster).items()}
    local, _ = validated_pass(
        *args, "--workers", "1", validation=VALIDATION, log_path=tmp_path / "local.log"
    )
    check_exactly_once(on_dask, EXPECTED)
    check_exactly_once(local, EXPECTED)
    assert on_dask.by_id() == local.by_id()
    assert status["engine"] == "dask", status
    assert status["workers"] == 2, status
    assert status["samples_made"] >= len(EXPECTED), status
    assert status["samples_failed"] == 0, status
    # The samples were made on both workers, from uploaded copies of our
    # modules: the workers' folder does not hold them and ROOT is not on
    # their path.
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran
    for address, files in modules_on_workers(cluster).items():
        made_there = [f for f in files if f.endswith("data_simulator.py")]
        assert made_there, f"{address} never imported data_simulator: {files}"
        assert not any(f.startswith(str(ROOT)) for f in files), files


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only")
def test_a_dask_worker_killed_mid_stream_costs_no_sample(
    cluster: LocalDaskCluster, tmp_path: Path
) -> None:
    num = 1200
    log = tmp_path / "server.log"
    spec, heavy = bench_source("heavy_source")
    args = ["--port", "0", "--source", spec, "--max-iterations", str(num)]
    with ServerProcess(*args, "--cluster", cluster.address, log_path=log) as server:

        def busy_worker() -> int | None:
            """A worker process (not its nanny), while tasks are at the cluster."""
            if server.status()["making"]["tasks_in_flight"]:
                return sorted(cluster.worker_pids().values())[0]
            return None

        got, killed = pass_killing_a_worker(server, busy_worker)
        status = server.status()["making"]
    source = heavy.make_source(seed=0, sequence_length=64, max_iterations=num)
    check_remade_pass(got, num, source, log.read_text())
    restart = wait_until(
        lambda: len(cluster.client.scheduler_info()["workers"]) == 2,
        "the nanny to restart the killed worker",
    )
    stall = longest_stall_after(got.arrivals, killed.at)
    print(
        f"\nDask worker SIGKILL: tasks_remade {status['tasks_remade']}, "
        f"longest wait for a reply after the kill {stall:.3f} s, worker back "
        f"{restart:.1f} s after the pass; pass of {num} samples, status {status}"
    )
    assert killed.pid not in cluster.worker_pids().values()


MY_SOURCE = '''
"""A source the workers have never seen: only the server has this file."""
from data_simulator import SimulatedHealthData


class Shouting(SimulatedHealthData):
    def simulate(self, index):
        prompt, trace = super().simulate(index)
        return prompt.upper() + " |FROM MY SOURCE|", trace


def make(**settings):
    return Shouting(**settings)
'''


@pytest.mark.parametrize(
    "form", ["path/file.py:factory + --cluster", "module:factory + env"]
)
def test_a_source_only_the_server_has_runs_on_the_workers(
    form: str,
    cluster: LocalDaskCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    stem = f"my_source_{'file' if form.startswith('path') else 'module'}"
    spec, module = write_source(folder, stem, MY_SOURCE)
    num = 200
    if form.startswith("path"):
        args = ["--source", spec, "--cluster", cluster.address]
        cwd = ROOT
    else:  # found from the current folder, the cluster named by the environment
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
        args, cwd = ["--source", f"{stem}:make"], folder
    log = tmp_path / "server.log"
    before = sum(tasks_run(cluster).values())
    args += ["--port", "0", "--max-iterations", str(num)]
    with ServerProcess(*args, log_path=log, cwd=cwd) as server:
        got = training_pass(server.url, batch_size=32)
        status = server.status()["making"]
    assert sum(tasks_run(cluster).values()) > before, "no task ran on the workers"
    check_exactly_once(got, range(num))
    assert status["engine"] == "dask", status
    source = module.make(seed=0, sequence_length=64, max_iterations=num)
    by_id = got.by_id()
    for k in range(num):
        assert by_id[f"sample_{k}"] == source.samples_json([k])[0], k
    assert "|FROM MY SOURCE|" in by_id["sample_7"]
    ran_there = [
        f for files in modules_on_workers(cluster).values() for f in files if stem in f
    ]
    assert ran_there, "the workers never imported the source file"


def test_an_edited_tutorial_file_in_the_current_folder_runs_on_the_workers(
    cluster: LocalDaskCluster, tmp_path: Path
) -> None:
    """Started from a folder that holds only an edited
    single_sample_simulation.py, the server serves that edit (the current
    folder comes first) and sends that copy to the workers, beside the
    data_simulator.py it found elsewhere: the workers make the edited data."""
    mine = tmp_path / "mine"
    mine.mkdir()
    text = (ROOT / "single_sample_simulation.py").read_text()
    assert "AGE = (18, 80)" in text, "the edit below needs this line"
    edited = text.replace("AGE = (18, 80)", "AGE = (101, 101)")
    (mine / "single_sample_simulation.py").write_text(edited)
    num = 200
    args = ["--port", "0", "--max-iterations", str(num), "--cluster", cluster.address]
    before = sum(tasks_run(cluster).values())
    with ServerProcess(*args, cwd=mine, log_path=tmp_path / "server.log") as server:
        got = training_pass(server.url, batch_size=32)
    assert sum(tasks_run(cluster).values()) > before, "no task ran on the workers"
    check_exactly_once(got, range(num))
    prompts = [json.loads(raw)["inputs"]["text_input"] for raw in got.by_id().values()]
    assert all(" Age: 101 " in prompt for prompt in prompts), prompts[:3]


# Runs the script as `python SCRIPT ARGS` would, where `distributed` cannot
# be imported.
BLOCK_DISTRIBUTED = (
    "import runpy, sys\n"
    "sys.modules['distributed'] = None  # `import distributed` now fails\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.mark.parametrize("how", ["--cluster", "DASK_SCHEDULER_ADDRESS"])
def test_cluster_without_distributed_says_what_to_install(how: str) -> None:
    """No cluster needed: this one runs everywhere, distributed or not."""
    address = "tcp://127.0.0.1:9"
    args = ["--port", "0"]
    env = {}
    if how == "--cluster":
        args += ["--cluster", address]
    else:
        env["DASK_SCHEDULER_ADDRESS"] = address
    done = run_streamer(
        *args,
        env=env,
        without=["DASK_SCHEDULER_ADDRESS"],
        python_args=["-c", BLOCK_DISTRIBUTED],
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line]
    assert done.returncode == 2, (done.returncode, lines)
    assert len(lines) == 1, lines
    assert "distributed" in lines[0] and "install" in lines[0], lines


def test_a_cluster_without_workers_makes_requests_wait_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests wait for workers to join (no error reply), and the log says
    that no worker is connected."""
    needs_dask()
    monkeypatch.setattr(SampleProducer, "WAIT_WARNING", 0.5)
    with local_dask_cluster(nworkers=1, nthreads=1) as lonely:
        os.killpg(lonely.workers.pid, signal.SIGKILL)  # worker and nanny gone
        wait_until(
            lambda: not lonely.client.scheduler_info(n_workers=-1)["workers"],
            "the scheduler to drop its killed worker",
        )
        with running_server(max_iterations=100, cluster=lonely.address) as server:
            client = EirLikeClient(server.url)
            client.send({"type": "getData", "payload": {"batch_size": 8}})
            with pytest.raises(websocket.WebSocketTimeoutException):
                client.recv(timeout=2.5)  # nothing yet, and no error either

            def waits() -> list[str]:
                lines = [record.getMessage() for record in list(caplog.records)]
                return [line for line in lines if "has waited" in line]

            wait_until(waits, "the log line that says why the request waits")
            client.close()
    assert f"no Dask worker is connected to {lonely.address}" in waits()[0]
