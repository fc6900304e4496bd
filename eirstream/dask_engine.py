"""Samples made on a Dask cluster: the engine behind `--cluster ADDRESS`.

Imported only when `--cluster` is given, so the server runs without Dask's
`distributed` package installed. The engine implements
engines.Engine: the producer hands it tasks of indices like any other
engine.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import tempfile
import time
import zipfile
from concurrent.futures import Future
from typing import Any

import eirstream
from eirstream.engines import frozen
from eirstream.loading import is_file_spec
from eirstream.making import MadeTask, make_task

PACKAGE = "eirstream"  # what a worker imports to make samples, sent as one zip
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
    restarts = 0  # the executor is never replaced (see restart)

    def __init__(self, address: str, spec: str, settings: dict[str, Any]) -> None:
        try:
            from distributed import Client
            from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile
        except ImportError:
            raise ValueError(
                "--cluster needs Dask's distributed package: pip install "
                "'eirstream[cluster]' (or pip install distributed)"
            ) from None
        self.address = address
        try:
            self.client = Client(address, timeout=CLUSTER_CONNECT_TIMEOUT)
        except Exception as exc:
            raise ValueError(
                f"--cluster {address!r}: no Dask scheduler answered there: {exc}"
            ) from None
        try:  # each plugin holds its file's bytes: the scratch folder can go
            with tempfile.TemporaryDirectory(prefix="eirstream-") as scratch:
                ours, theirs, worker_spec = files_for_workers(spec, scratch)
                # In import order: a module comes after those it imports. Named
                # by file, so a new server's plugins replace an old one's.
                for path in ours + theirs:
                    name = f"eirstream:{os.path.basename(path)}"
                    if path in ours:  # the scheduler unpickles make_task's reference
                        plugin = SchedulerUploadFile(path)
                        self.client.register_plugin(plugin, name=name)
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

    def submit(self, indices: list[int]) -> Future[MadeTask]:
        return self._executor.submit(make_task, self._spec, self._settings, indices)

    def observe(self, made: MadeTask) -> None:
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


def files_for_workers(spec: str, folder: str) -> tuple[list[str], list[str], str]:
    """What a remote worker needs to make samples of `spec`: our package as
    one zip, written to `folder` (the scheduler needs it too, to unpickle a
    task's reference to make_task), the source's own files, and the spec as
    the worker imports it (a file's module is named by its stem there).

    The source's module goes along with the modules it imports from its own
    folder or from the current directory (where `load_source` looks first):
    the default source's data_simulator.py brings single_sample_simulation.py,
    whichever copy the server imported. A package goes as a zip of its .py
    files. Anything else it imports must be installed where the workers run.
    """
    here = os.path.dirname(os.path.abspath(eirstream.__file__))
    ours = [zip_package(here, PACKAGE, folder)]
    target, _, attr = spec.rpartition(":")
    if is_file_spec(target):
        path = os.path.abspath(target)
        worker_spec = f"{os.path.splitext(os.path.basename(path))[0]}:{attr}"
        return ours, with_neighbours(path), worker_spec
    top = target.partition(".")[0]
    found = None if top == PACKAGE else importlib.util.find_spec(top)
    if found is None or not found.has_location:
        return ours, [], spec
    locations = list(found.submodule_search_locations or [])
    if locations:
        return ours, [zip_package(locations[0], top, folder)], spec
    assert found.origin is not None
    return ours, with_neighbours(found.origin), spec


def with_neighbours(path: str) -> list[str]:
    """The module file `path` and, over and over, the single-file modules it
    imports (by a top-level `import name` or `from name import ...`) that are
    found in its folder or in the current directory, as the server process
    finds them. Each module comes after the ones it imports: a worker
    imports each file as it arrives."""
    folders = {os.path.dirname(path), os.getcwd()}
    ordered: list[str] = []
    seen = {path}

    def visit(module: str) -> None:
        for near in _imported_modules(module):
            if near not in seen and os.path.dirname(near) in folders:
                seen.add(near)
                visit(near)
        ordered.append(module)

    visit(path)
    return ordered


def _imported_modules(path: str) -> list[str]:
    """The files of the single-file modules the module at `path` imports by
    absolute name (packages and built-in modules left out)."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    files = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if "." in name:
                continue  # a package's module: the package is no neighbour
            try:
                found = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                continue
            if found is None or found.submodule_search_locations is not None:
                continue  # not found, or a package
            if found.origin is not None and found.origin.endswith(".py"):
                files.append(os.path.abspath(found.origin))
    return files


def zip_package(package: str, name: str, folder: str) -> str:
    """A zip of the package folder's .py files, written to `folder`,
    importable from sys.path as `name` (with an entry per folder: zipimport
    needs them for namespace packages)."""
    path = os.path.join(folder, f"{name}.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for root, dirs, names in os.walk(package):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
            inside = os.path.normpath(
                os.path.join(name, os.path.relpath(root, package))
            )
            archive.write(root, inside)
            for file in sorted(names):
                if file.endswith(".py"):
                    archive.write(os.path.join(root, file), os.path.join(inside, file))
    return path
