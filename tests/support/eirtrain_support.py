"""Run the real EIR client (`eirtrain`) against a data server, for interop tests.

Nothing here is specific to one example: start the server with
`ServerProcess` (support/server_process.py; `debug_log=True` for the lines
`parse_stream_log` reads), give this the folder of EIR configs and the
settings to shrink, and it

* writes a shrunk copy of the configs pointing at that server
  (`write_shrunk_configs`; YAML is read with the Python of eirtrain's own
  environment, which has PyYAML, and written back as JSON, which is YAML),
* runs eirtrain with a timeout (`run_eirtrain`) and reads its run folder
  (`generated_samples`, `last_logged_iteration`, `last_checkpoint`),
* reads what our server logs at DEBUG level (`parse_stream_log`): every
  request, the stream indices of every `data` reply, the validation indices
  and `terminate`, and the stream's own lines (the end of a pass); each
  connection's named stream, and the story of one named stream alone; what
  the setup read and what training read.

eirtrain is looked up in $EIR_ENV_DIR/bin (default /tmp/eirenv), then on PATH;
every test under tests/eirtrain skips without it, or fails where the run
requires it (support/required.py, called for them by tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import ROOT
from support.commands import clean_env, run
from support.waiting import HANG

CONFIGS = ROOT / "configs"
EIR_ENV_DIR = Path(os.environ.get("EIR_ENV_DIR", "/tmp/eirenv"))

# A shrink of the configs for a run of about 25 s on 2 CPU cores against a
# server bounded to about 1200 samples. Keys: config file kind (the start of
# the file name, as eirtrain-against.sh picks them), then nested YAML keys.
SMOKE_SHRINK: dict[str, dict[str, Any]] = {
    "global": {
        "basic_experiment": {"batch_size": 32, "valid_size": 100},
        "data_preparation": {"streaming_setup_samples": 1000},
        "evaluation_checkpoint": {"sample_interval": 20, "checkpoint_interval": 20},
        "accelerator": {"hardware": "cpu"},
        "visualization_logging": {"no_pbar": True},
    }
}
CONFIG_KINDS = ("global", "input", "fusion", "output")


# -- finding eirtrain ------------------------------------------------------
def find_eirtrain() -> Path | None:
    """eirtrain in $EIR_ENV_DIR/bin (default /tmp/eirenv), else on PATH."""
    candidate = EIR_ENV_DIR / "bin" / "eirtrain"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("eirtrain")
    return Path(found) if found else None


def eir_python(eirtrain: Path) -> str:
    """The interpreter of eirtrain's environment (it has PyYAML)."""
    sibling = eirtrain.parent / "python"
    if sibling.exists():
        return str(sibling)
    first_line = eirtrain.read_text(errors="replace").splitlines()[0]
    if first_line.startswith("#!"):
        return first_line[2:].strip().split()[0]
    raise RuntimeError(f"cannot tell which Python runs {eirtrain}")


# -- configs -----------------------------------------------------------------
def config_kind(path: Path) -> str | None:
    """Which eirtrain option a config file goes to, by the start of its name."""
    return next((k for k in CONFIG_KINDS if path.name.startswith(k)), None)


def read_yaml_documents(path: Path, python: str) -> list[Any]:
    """All YAML documents of `path`, parsed by eirtrain's Python."""
    code = (
        "import json, sys, yaml\n"
        "print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"
    )
    out = run([python, "-c", code, path])
    if out.returncode != 0:
        raise RuntimeError(f"cannot read {path} as YAML: {out.stderr.strip()}")
    return json.loads(out.stdout)


def deep_merge(base: Any, override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, recursively for nested mappings."""
    merged = dict(base) if isinstance(base, Mapping) else {}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_shrunk_configs(
    config_dir: Path,
    dest: Path,
    url: str,
    output_folder: Path,
    shrink: Mapping[str, Mapping[str, Any]],
) -> dict[str, list[Path]]:
    """Copy the configs of `config_dir` to `dest` for a test run.

    Every input_source/output_source becomes `url`, the globals' output_folder
    becomes `output_folder`, and `shrink[kind]` is merged into each config of
    that kind ("global", "input", "fusion", "output"). Returns the written
    files by kind.
    """
    eirtrain = find_eirtrain()
    if eirtrain is None:
        raise RuntimeError("eirtrain is not installed")
    python = eir_python(eirtrain)
    unknown = set(shrink) - set(CONFIG_KINDS)
    if unknown:
        raise ValueError(f"shrink keys must be among {CONFIG_KINDS}, got {unknown}")
    dest.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {kind: [] for kind in CONFIG_KINDS}
    sources = sorted([*config_dir.glob("*.yaml"), *config_dir.glob("*.yml")])
    for path in sources:
        kind = config_kind(path)
        if kind is None:
            continue
        documents = []
        for doc in read_yaml_documents(path, python):
            if not isinstance(doc, dict):
                continue
            doc = deep_merge(doc, shrink.get(kind, {}))
            for section, key in (
                ("input_info", "input_source"),
                ("output_info", "output_source"),
            ):
                if isinstance(doc.get(section), dict):
                    doc[section][key] = url
            if kind == "global":
                doc = deep_merge(
                    doc, {"basic_experiment": {"output_folder": str(output_folder)}}
                )
            documents.append(json.dumps(doc, indent=2))
        target = dest / f"{path.stem}.yaml"
        target.write_text("\n---\n".join(documents) + "\n")
        written[kind].append(target)
    for kind in ("global", "output"):
        if not written[kind]:
            raise ValueError(f"no {kind}*.yaml in {config_dir}")
    return written


# -- eirtrain ------------------------------------------------------------------
@dataclass
class EirtrainRun:
    returncode: int  # -9 / -15 when killed at the timeout
    seconds: float
    timed_out: bool
    output_folder: Path
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def run_eirtrain(
    configs: Mapping[str, Sequence[Path]],
    output_folder: Path,
    log_path: Path,
    timeout: float,
    extra_args: Sequence[str] = (),
    torch_threads: int | None = 1,
) -> EirtrainRun:
    """Run eirtrain on configs from `write_shrunk_configs`, bounded by `timeout`.

    eirtrain runs in its own process group, so at the timeout its DataLoader
    workers are killed with it. `torch_threads` sets OMP_NUM_THREADS: on a
    small machine shared with the server (and other jobs), torch's default of
    one thread per core made a smoke run 4 times slower or worse (None: keep
    the environment's setting).
    """
    eirtrain = find_eirtrain()
    if eirtrain is None:
        raise RuntimeError("eirtrain is not installed")
    command = [str(eirtrain)]
    for kind in CONFIG_KINDS:
        if configs.get(kind):
            command += [f"--{kind}_configs", *map(str, configs[kind])]
    command += list(extra_args)
    threads: dict[str, str] = {}
    if torch_threads is not None:
        threads["OMP_NUM_THREADS"] = threads["MKL_NUM_THREADS"] = str(torch_threads)
    started = time.monotonic()
    timed_out = False
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            env=clean_env(values=threads),
            start_new_session=True,
        )
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(HANG)
    return EirtrainRun(
        process.returncode,
        time.monotonic() - started,
        timed_out,
        output_folder,
        log_path,
    )


def generated_samples(output_folder: Path) -> list[Path]:
    """The sequences eirtrain generated at its sample intervals."""
    return sorted(output_folder.glob("results/*/*/samples/*/auto/*_generated.txt"))


def last_logged_iteration(output_folder: Path) -> int:
    """The last iteration in train_average_history.log.

    EIR writes that file in chunks of sample_interval // 2 iterations, so up to
    that many final iterations can be missing from it.
    """
    history = output_folder / "train_average_history.log"
    rows = history.read_text().splitlines()[1:]
    return int(rows[-1].split(",")[0]) if rows else 0


_CHECKPOINT = re.compile(r"_checkpoint_(\d+)(?:_|\.pt$)")


def last_checkpoint(output_folder: Path) -> Path | None:
    """The checkpoint of the latest iteration a run saved (its
    saved_models/, with `checkpoint_interval`), None before the first.

    The one to give a new run as `model.pretrained_checkpoint`; keep them
    all (`n_saved_models`), as EIR otherwise keeps the best scored ones."""
    saved = [
        (int(found.group(1)), path)
        for path in (output_folder / "saved_models").glob("*.pt")
        if (found := _CHECKPOINT.search(path.name))
    ]
    return max(saved)[1] if saved else None


# -- our server's DEBUG log --------------------------------------------------
def parse_ranges(text: str) -> list[int]:
    """ "0,2-5,9" -> [0, 2, 3, 4, 5, 9] (the server's `index_ranges`)."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


@dataclass
class ConnectionLog:
    id: int
    requests: list[str] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)  # every data reply
    after_reset: list[int] = field(default_factory=list)  # data after a reset
    batches_after_reset: list[list[int]] = field(default_factory=list)
    terminated: bool = False
    closed: str | None = None
    stream: str | None = None  # the named stream it opened on, when logged


@dataclass
class StreamLog:
    connections: dict[int, ConnectionLog]
    validation_indices: set[int] | None
    validation_connection: int | None  # the last to set validation ids
    validation_connections: list[int] = field(default_factory=list)
    # the stream's own lines (eirstream.stream), of every stream: none names it
    stream_lines: list[str] = field(default_factory=list)

    def ordered(self) -> list[ConnectionLog]:
        return [self.connections[i] for i in sorted(self.connections)]

    def training_connections(self) -> list[ConnectionLog]:
        """Connections opened after the validation ids were first set that
        fetched data. (Under DDP every other rank sends the ids again, maybe
        after the first rank's training connections opened.)"""
        after = min(self.validation_connections, default=0)
        return [c for c in self.ordered() if c.id > after and c.batches]

    def setup_deliveries(self) -> list[int]:
        """Indices served to the run's setup: after the probe reset of the
        connections opened before the validation ids were first set."""
        before = min(self.validation_connections, default=0)
        return [i for c in self.ordered() if c.id < before for i in c.after_reset]

    def training_deliveries(self) -> list[int]:
        """Indices served for training: after each training connection's probe
        reset (the probe's one sample is discarded by EIR)."""
        return [i for c in self.training_connections() for i in c.after_reset]


_CONN_LINE = re.compile(r"eirstream\.\w+: conn#(\d+)(?: \S+)?: (.*)$")
_STREAM_LINE = re.compile(r" eirstream\.stream: (.*)$")
_OPENED_ON = re.compile(r"opened on stream '([^']*)'")


def parse_stream_log(text: str, stream: str | None = None) -> StreamLog:
    """Read the connection story out of our server's log (needs DEBUG lines).

    With `stream`, only the connections opened on that named stream count
    (their requests, replies and validation ids): the story of one stream
    of a server that serves several. `stream_lines` are every stream's."""
    connections: dict[int, ConnectionLog] = {}
    streams: dict[int, str] = {}  # connection id -> its stream's name
    validation: set[int] | None = None
    validation_conns: list[int] = []
    stream_lines: list[str] = []
    for line in text.splitlines():
        if stream_line := _STREAM_LINE.search(line):
            stream_lines.append(stream_line.group(1))
        match = _CONN_LINE.search(line)
        if not match:
            continue
        conn_id, event = int(match.group(1)), match.group(2)
        if opened := _OPENED_ON.fullmatch(event):
            streams[conn_id] = opened.group(1)
        if stream is not None and streams.get(conn_id) != stream:
            continue
        conn = connections.setdefault(conn_id, ConnectionLog(conn_id))
        conn.stream = streams.get(conn_id)
        if event.startswith("received "):
            kind = event.removeprefix("received ")
            if kind != "handshake":
                conn.requests.append(kind)
        elif event.startswith("sent "):
            indices = parse_ranges(event.split(" samples ", 1)[1].strip())
            conn.batches.append(indices)
            if "reset" in conn.requests:
                conn.after_reset.extend(indices)
                conn.batches_after_reset.append(indices)
        elif event.startswith("validation ids skip indices"):
            ranges = event.removeprefix("validation ids skip indices").strip()
            validation = set(parse_ranges(ranges))
            validation_conns.append(conn_id)
        elif event.startswith("stream exhausted"):
            conn.terminated = True
        elif event.startswith("closed"):
            conn.closed = event
    return StreamLog(
        connections,
        validation,
        validation_conns[-1] if validation_conns else None,
        validation_conns,
        stream_lines,
    )
