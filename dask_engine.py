"""Samples made on a Dask cluster: the engine behind `--cluster ADDRESS`.

Imported only when `--cluster` is given, so the server runs without Dask's
`distributed` package installed. The engine implements
sample_producer.Engine: the producer hands it chunks of indices like any
other engine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import time
import zipfile
from concurrent.futures import Future
from typing import Any

from sample_producer import frozen
from sample_sources import MadeChunk, is_file_spec, make_chunk

# Our modules that a worker imports to make samples: make_chunk's home, the
# default source and what it imports, the encoders, and --dataset's source.
SOURCE_HELPERS = (
    "sample_sources",
    "single_sample_simulation",
    "stream_order",
    "data_simulator",
    "stream_encoders",
    "dataset_spec",
    "dataset_source",
)
CLUSTER_CONNECT_TIMEOUT = 10  # seconds to reach a Dask scheduler at start


class DaskEngine:
    """Samples made on a Dask cluster (`dask scheduler`, `dask worker ADDRESS`).

    The workers get our modules and the source's own file (or package) from
    the server, as worker plugins, so plain `dask worker` processes started
    anywhere, and workers that join later, can make samples. What the source
    imports beyond that must be installed where the workers run. A worker
    that dies is handled by Dask itself: the scheduler runs its tasks again
    on the others.
    """

    kind = "dask"
    # A Dask task costs milliseconds of scheduler and worker bookkeeping, and
    # a heavy pure-Python source holds the GIL against the worker's own
    # thread: tasks of half a second keep that small beside the work
    # (bench/executors.py compares the cluster with local processes).
    task_seconds = 0.5
    generation = 0  # the executor is never replaced (see restart)

    def __init__(self, address: str, spec: str, settings: dict[str, Any]) -> None:
        try:
            from distributed import Client
            from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile
        except ImportError:
            raise ValueError(
                "--cluster needs Dask's distributed package: "
                "pip install -r requirements-cluster.txt"
            ) from None
        self.address = address
        try:
            self.client = Client(address, timeout=CLUSTER_CONNECT_TIMEOUT)
        except Exception as exc:
            raise ValueError(
                f"--cluster {address!r}: no Dask scheduler answered there: {exc}"
            ) from None
        try:
            ours, theirs, worker_spec = files_for_workers(spec)
            for path in ours + theirs:  # named by file: a new server replaces them
                name = f"eir-stream:{os.path.basename(path)}"
                if path in ours:  # the scheduler unpickles make_chunk's reference
                    self.client.register_plugin(SchedulerUploadFile(path), name=name)
                self.client.register_plugin(UploadFile(path), name=name)
        except Exception as exc:
            self.client.close()
            raise ValueError(
                f"--cluster {address!r}: could not give the workers the source "
                f"{spec!r}: {type(exc).__name__}: {exc}"
            ) from None
        self._spec, self._settings = worker_spec, frozen(settings)
        self._executor = self.client.get_executor(pure=False)
        self._asked, self._workers = -1.0, 0

    def submit(self, indices: list[int]) -> Future[MadeChunk]:
        return self._executor.submit(make_chunk, self._spec, self._settings, indices)

    def observe(self, made: MadeChunk) -> None:
        """Nothing to learn: the cluster stays."""

    def restart(self) -> None:
        """Nothing to do: a lost Dask worker's tasks are rerun by the scheduler."""

    def heal(self) -> None:
        """Nothing to do: the scheduler notices lost workers itself."""

    def live_workers(self) -> int:
        """Workers connected to the scheduler (asked at most once a second:
        it is a round trip to the scheduler)."""
        now = time.monotonic()
        if now - self._asked >= 1.0:
            self._asked = now
            with contextlib.suppress(Exception):
                info = self.client.scheduler_info(n_workers=-1)
                self._workers = sum(
                    w.get("nthreads", 1) for w in info["workers"].values()
                )
        return self._workers

    def pids(self) -> list[int]:
        return []

    def why_waiting(self) -> str:
        workers = self.live_workers()
        if not workers:
            return f"no Dask worker is connected to {self.address} yet"
        return f"all {workers} Dask workers of {self.address} are busy"

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        with contextlib.suppress(Exception):
            self.client.close(timeout=2)


def files_for_workers(spec: str) -> tuple[list[str], list[str], str]:
    """What a remote worker needs to make samples of `spec`: our own modules
    (the scheduler needs them too, to unpickle a task's reference to
    make_chunk), the source's own files, and the spec as the worker imports
    it (a file's module is named by its stem there).

    The source's module goes along when it lives in the current directory or
    beside this script; a package goes as a zip of its .py files. Anything
    else it imports must be installed where the workers run.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    ours = [
        path
        for name in SOURCE_HELPERS
        if os.path.isfile(path := os.path.join(here, f"{name}.py"))
    ]
    target, _, attr = spec.rpartition(":")
    if is_file_spec(target):
        path = os.path.abspath(target)
        return ours, [path], f"{os.path.splitext(os.path.basename(path))[0]}:{attr}"
    top = target.partition(".")[0]
    found = None if top in SOURCE_HELPERS else importlib.util.find_spec(top)
    locations = list(found.submodule_search_locations or []) if found else []
    origin = found.origin if found and found.has_location else None
    local = (os.getcwd(), here)
    if locations and locations[0].startswith(local):
        return ours, [_zip_package(locations[0], top)], spec
    if origin and origin.startswith(local):
        return ours, [origin], spec
    return ours, [], spec


def _zip_package(folder: str, name: str) -> str:
    """A zip of the package's .py files, importable from sys.path as `name`
    (with an entry per folder: zipimport needs them for namespace packages)."""
    path = os.path.join(tempfile.mkdtemp(prefix="eir-stream-"), f"{name}.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
            inside = os.path.normpath(os.path.join(name, os.path.relpath(root, folder)))
            archive.write(root, inside)
            for file in names:
                if file.endswith(".py"):
                    archive.write(os.path.join(root, file), os.path.join(inside, file))
    return path
