"""Loading a source: `--source module:factory`, `--dataset SPEC`, and their checks.

`load_source` imports what `--source` names (a module on sys.path or a
file), calls its factory with the server's settings and checks that what it
made fits `SampleSource`. `load_checked_source` adds the full check of its
`getInfo` payload against EIR's layout (eirformat.py).
"""

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from typing import Any

from eirstream.datasets.source import make_source
from eirstream.eirformat import check_dataset_info
from eirstream.settings import Settings
from eirstream.sources import SampleSource


def load_source(spec: str, settings: dict[str, Any]) -> SampleSource:
    """Build a source from "module:factory" or "path/to/file.py:factory".

    A module is looked up in the current directory first, then on sys.path
    (`--source mydata:make` finds ./mydata.py wherever the server is
    installed, and a copy of the tutorial's data_simulator.py or
    single_sample_simulation.py in the current directory wins over the
    installed one). A file is loaded directly, and its folder goes first on
    sys.path so it imports its neighbours. The factory may be a dotted
    attribute (`module:Class.create`); it gets `settings` (seed,
    sequence_length, max_iterations) as keyword arguments. Every problem
    raises ValueError with a one-line message naming the spec.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(
            f"--source must be module:factory or path/to/file.py:factory, got {spec!r}"
        )
    module = _import_source_module(target, spec)
    try:  # the standard resolver walks "Class.create"; the module is imported
        factory = pkgutil.resolve_name(f"{module.__name__}:{attr}")
    except AttributeError:
        raise ValueError(
            f"--source {spec!r}: {target} has no attribute {attr!r}"
        ) from None
    except ValueError:
        raise ValueError(
            f"--source {spec!r}: {attr!r} is not a (dotted) Python name"
        ) from None
    if not callable(factory):
        raise ValueError(
            f"--source {spec!r}: {attr} is a {type(factory).__name__}, not a "
            "callable factory"
        )
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as exc:
        raise ValueError(
            f"--source {spec!r}: {attr} must accept the keyword arguments "
            f"{', '.join(settings)} (or **kwargs): {exc}"
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin); just call it
    try:
        source = factory(**settings)
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: {attr}(...) failed: {type(exc).__name__}: {exc}"
        ) from exc
    _check_made_source(source, spec)
    return source


DATASET_SOURCE = "eirstream.datasets.source:make_source"  # what --dataset serves


def load_configured_source(settings: Settings) -> SampleSource:
    """The source the command line configures: `--dataset`'s, or the
    checked `--source` (the tutorial's simulated data by default)."""
    source_settings = settings.source_settings()
    if settings.dataset is not None:
        return load_dataset_source(source_settings)
    return load_checked_source(settings.source, source_settings)


def load_dataset_source(settings: dict[str, Any]) -> SampleSource:
    """The source of `--dataset` (settings["dataset"] names the spec). It
    checks its own `getInfo` payload, and every problem it raises already
    names the spec in one line, so they pass through as they are."""
    return make_source(**settings)


def _check_made_source(source: Any, spec: str) -> None:
    """ValueError unless what the factory made fits SampleSource and
    describes its data."""
    problems = _interface_problems(source)
    if problems:
        raise ValueError(
            f"--source {spec!r}: the {type(source).__name__} it made does not fit "
            f"SampleSource (eirstream/sources.py): {'; '.join(problems)}"
        )
    try:
        info = source.dataset_info()
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: dataset_info() failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(info, dict) or not isinstance(info.get("outputs"), dict):
        raise ValueError(
            f"--source {spec!r}: dataset info needs 'inputs' and 'outputs' dicts, "
            f"got {info!r:.80}"
        )


def load_checked_source(spec: str, settings: dict[str, Any]) -> SampleSource:
    """`load_source`, plus the full check of its `getInfo` payload against
    EIR's layout."""
    source = load_source(spec, settings)
    try:
        check_dataset_info(source.dataset_info())
    except ValueError as exc:
        raise ValueError(f"--source {spec!r}: {exc}") from None
    return source


def _interface_problems(source: Any) -> list[str]:
    problems = [
        f"no {name}() method"
        for name in ("dataset_info", "sample", "index_of")
        if not callable(getattr(source, name, None))
    ]
    if not callable(getattr(source, "samples", len)):
        problems.append("samples is not a method")
    if not hasattr(source, "num_samples"):
        problems.append("no num_samples attribute (an int, or None for unbounded)")
    else:
        bound = source.num_samples
        if bound is not None and (
            not isinstance(bound, int) or isinstance(bound, bool) or bound < 0
        ):
            problems.append(
                f"num_samples is {bound!r} (need an int >= 0, or None for unbounded)"
            )
    return problems


def is_file_spec(target: str) -> bool:
    """Whether the part of a --source spec before the colon names a file."""
    return target.endswith(".py") or "/" in target or os.sep in target


def search_first(folder: str) -> None:
    """Put `folder` first on sys.path (moved there if it is further down),
    so that the source's modules are found there before those installed;
    nothing to do when it, or "" for the current directory (as under
    `python -m`), is first already. Worker processes are spawned with this
    sys.path, so they import the same files."""
    here = "" if folder == os.getcwd() else None
    if sys.path[:1] not in ([folder], [here]):
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def _import_source_module(target: str, spec: str) -> Any:
    """The module named by the part of a --source spec before the colon."""
    if is_file_spec(target):
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise ValueError(f"--source {spec!r}: no such file {path}")
        stem = os.path.splitext(os.path.basename(path))[0]
        digest = hashlib.sha1(path.encode()).hexdigest()[:8]
        name = f"_source_{''.join(c if c.isalnum() else '_' for c in stem)}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        search_first(os.path.dirname(path))
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--source {spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ValueError(
                f"--source {spec!r}: importing {path} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return module
    cwd = os.getcwd()
    search_first(cwd)
    importlib.invalidate_caches()  # files (or zips) may have come since
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ValueError(
                f"--source {spec!r}: no module named {exc.name!r} (looked in the "
                f"current directory {cwd} and on sys.path); run from the folder "
                "that holds it, or give its file: path/to/file.py:factory"
            ) from None
        raise ValueError(
            f"--source {spec!r}: importing {target} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"--source {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}"
        ) from exc
