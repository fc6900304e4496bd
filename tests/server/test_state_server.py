"""`--state PATH` with a real server process: a file the server cannot use
stops it before it listens (exit 2, one ERROR line, the file untouched),
and a server stopped half-way through a pass (SIGKILL, SIGTERM) and started
again with the same file lets the next run go on where the first stopped.

A run is EIR's, spoken by `EirLikeClient`: setup (status; the validation
probe, then SETUP samples in batches; a reset of its own; status;
setValidationIds with ids taken from the setup's samples), then training
connections that probe, wait for each other (as DDP's and the DataLoader
workers' start does) and read batches to the end of the pass. What the
server sent is read from its DEBUG log (support/eirtrain_support.py's
`parse_stream_log`): a reply is logged once it was handed to the socket.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websocket
from support.eir_like_client import EirLikeClient
from support.eirtrain_support import StreamLog, parse_stream_log
from support.server_process import ServerProcess, request_status
from support.waiting import HANG, wait_until

from eirstream.state import AFRESH

SAMPLES = 3000  # --max-iterations: samples per epoch
BATCH = 8
SETUP = 64  # EIR's streaming_setup_samples
VALID = 10  # EIR's valid_size
TRAINING = SAMPLES - VALID
RESUMED = re.compile(
    r"stream '([^']+)' resumed from (\S+): epoch (\d+), ([\d,]+) of ([\d,]+) "
    r"samples served; ([\d,]+) validation ids kept out of training"
)


def server_args(state: Path, *more: str, shuffle: bool = True) -> list[str]:
    """A bounded pass of SAMPLES simulated samples, shuffled, one epoch,
    made by a thread of the server, its state kept in `state`."""
    args = ["--port", "0", "--workers", "0", "--max-iterations", str(SAMPLES)]
    args += ["--seed", "5", "--state", str(state), *more]
    return [*args, "--shuffle"] if shuffle else args


def number(sample_id: str) -> int:
    return int(sample_id.removeprefix("sample_"))


# -- a run, as EIR makes it -------------------------------------------------------
def eir_setup(url: str) -> list[str]:
    """EIR's setup connections 1 to 5; the ids of the samples it read. Its
    validation ids are VALID of them, chosen by a seeded shuffle of the
    sorted ids: the same setup samples give the same validation ids."""
    EirLikeClient(url).close()  # 1: status (its reply is not what is tested)
    reader = EirLikeClient(url)  # 2: the probe, then SETUP samples
    reader.validation_probe()
    read: list[str] = []
    while len(read) < SETUP and (batch := reader.fetch_batch(BATCH)) is not None:
        read += [sample["sample_id"] for sample in batch]
    reader.close()
    resetter = EirLikeClient(url)  # 3: a reset, and its two replies
    replies = resetter.request({"type": "reset"}, replies=2)
    assert [r["type"] for r in replies] == ["resetConfirmation", "reset"], replies
    resetter.close()
    ids = sorted(set(read))
    random.Random(7).shuffle(ids)
    sender = EirLikeClient(url)  # 5: the validation ids
    message = {"type": "setValidationIds", "payload": {"validation_ids": ids[:VALID]}}
    assert sender.request(message)[0]["type"] == "validationIdsConfirmation"
    sender.close()
    return read


@dataclass
class Training:
    """A run's training connections, each on a thread of its own."""

    url: str
    connections: int
    received: list[list[str]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # how each connection ended

    def __post_init__(self) -> None:
        self.received = [[] for _ in range(self.connections)]
        self._started = threading.Barrier(self.connections)
        self._threads = [
            threading.Thread(target=self._read, args=(k,), daemon=True)
            for k in range(self.connections)
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, k: int) -> None:
        client = None
        try:
            client = EirLikeClient(self.url)
            client.validation_probe()
            self._started.wait(HANG)
            client.send({"type": "heartbeat"})  # never read, as EIR does
            while (batch := client.fetch_batch(BATCH)) is not None:
                self.received[k] += [sample["sample_id"] for sample in batch]
            self.ended.append("terminate")
        except (OSError, ValueError, websocket.WebSocketException) as exc:
            self.ended.append(type(exc).__name__)  # the server went (or closed)
        finally:
            if client is not None:
                with contextlib.suppress(OSError, websocket.WebSocketException):
                    client.close()

    def count(self) -> int:
        return sum(len(got) for got in self.received)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(HANG)
            assert not thread.is_alive(), "a training connection hung"


@dataclass
class Story:
    """What a server's log says one stream sent, and its resumed line."""

    log: StreamLog
    setup: list[int]
    validation: set[int]
    trained: list[int]
    resumed: re.Match[str] | None

    @classmethod
    def of(cls, server: ServerProcess, stream: str) -> Story:
        log = parse_stream_log(server.log, stream)
        assert log.validation_indices is not None, server.log[-3000:]
        resumed = [m for line in server.lines if (m := RESUMED.search(line))]
        return cls(
            log,
            log.setup_deliveries(),
            log.validation_indices,
            log.training_deliveries(),
            resumed[0] if resumed else None,
        )


def first_run(state: Path, stream: str, stop: signal.Signals) -> tuple[Story, int]:
    """Run 1 with 2 training connections, its server stopped with `stop`
    once they received half of the pass. What it sent (its log's training
    replies, and those a SIGKILL cut off from the log that the connections
    received), and how many samples they received."""
    with ServerProcess(*server_args(state), debug_log=True) as server:
        url = f"{server.url}/{stream}" if stream != "default" else server.url
        eir_setup(url)
        training = Training(url, 2)
        wait_until(lambda: training.count() >= TRAINING // 2, "half of the pass")
        server.process.send_signal(stop)
        assert server.wait(HANG) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        training.join()
        assert len(training.ended) == 2 and "terminate" not in training.ended
    story = Story.of(server, stream)  # (the log is whole once it stopped)
    received = [number(i) for got in training.received for i in got]
    not_logged = Counter(received) - Counter(story.trained)
    assert sum(not_logged.values()) <= (0 if stop == signal.SIGTERM else 2 * BATCH)
    story.trained += list(not_logged.elements())
    return story, len(received)


def second_run(state: Path, stream: str) -> tuple[Story, dict, dict]:
    """The server started again with the same --state, then run 2 with one
    training connection to the end of the pass. Its story, and its status
    of the stream (with "bytes on disk" then) and of the default stream
    before run 2."""
    with ServerProcess(*server_args(state), debug_log=True) as server:
        url = f"{server.url}/{stream}" if stream != "default" else server.url
        server.wait_for(RESUMED)
        lines = server.lines
        listening = next(k for k, line in enumerate(lines) if "listening" in line)
        resumed_at = next(k for k, line in enumerate(lines) if RESUMED.search(line))
        assert listening < resumed_at, server.log  # the start-up line, after it
        status = request_status(url)
        status["bytes on disk"] = state.stat().st_size
        default = request_status(server.url)
        eir_setup(url)
        training = Training(url, 1)
        training.join()
        assert training.ended == ["terminate"]
    return Story.of(server, stream), status, default  # the whole log, stopped


def check_resumed_run(
    first: Story, second: Story, state: Path, stream: str, status: dict
) -> int:
    """Run 2 read run 1's setup and sent its ids; no validation sample was
    trained; no sample twice; the resumed line, the status and the file
    agree. How many samples the file named as sent that run 1's log does
    not have (a reply the kill cut off between the file and the log)."""
    assert second.setup == first.setup  # the same setup samples, in order
    assert second.validation == first.validation and len(first.validation) == VALID
    both = first.trained + second.trained
    assert not set(both) & first.validation, "a validation sample was trained"
    assert not [i for i, n in Counter(both).items() if n > 1], "a sample twice"
    assert second.resumed is not None
    name, path, epoch, served, per_epoch, kept = second.resumed.groups()
    assert (name, path, epoch) == (stream, str(state), "0")
    served_count = int(served.replace(",", ""))
    assert int(per_epoch.replace(",", "")) == TRAINING
    assert int(kept.replace(",", "")) == VALID
    assert status["resumed"] == {
        "epoch": 0,
        "served": served_count,
        "per_epoch": TRAINING,
        "pass_over": False,
    }
    assert status["state"]["path"] == str(state)
    assert status["state"]["bytes"] == status["bytes on disk"]
    assert status["state"]["failed_writes"] == 0
    missing = set(range(SAMPLES)) - first.validation - set(both)
    unlogged = served_count - len(first.trained)
    assert len(missing) == unlogged, (len(missing), served_count, len(first.trained))
    return unlogged


# -- a stopped server, and the next run ----------------------------------------------
def test_a_server_killed_mid_pass_lets_the_next_run_train_on_the_rest(
    tmp_path: Path,
) -> None:
    """SIGKILL half-way through run 1 on the named stream run-x: the next
    server resumes run-x (and only it) from the file, and run 2 trains on
    every sample run 1 was not sent. The kill may cut off the log line of
    a reply already on file: at most one per training connection."""
    state = tmp_path / "run.state"
    first, received = first_run(state, "run-x", signal.SIGKILL)
    assert received >= TRAINING // 2 and len(first.trained) < TRAINING
    second, status, default = second_run(state, "run-x")
    unlogged = check_resumed_run(first, second, state, "run-x", status)
    assert 0 <= unlogged <= 2 * BATCH
    assert default["resumed"] is None and default["samples_served_total"] == 0
    assert "run-x" in default["streams"]  # kept, before anyone used it


def test_a_server_stopped_by_sigterm_lets_the_next_run_train_on_the_rest(
    tmp_path: Path,
) -> None:
    """SIGTERM half-way through run 1 on the default stream: the server
    closes every connection and writes a last snapshot (one line); the next
    run trains on exactly what run 1 was not sent."""
    state = tmp_path / "run.state"
    first, received = first_run(state, "default", signal.SIGTERM)
    assert received == len(first.trained)  # a clean stop: all it sent arrived
    assert state.read_bytes().count(b"\n") == 1
    second, status, _ = second_run(state, "default")
    assert check_resumed_run(first, second, state, "default", status) == 0
    assert sorted(first.trained + second.trained) == sorted(
        set(range(SAMPLES)) - first.validation
    )


# -- files a server cannot use ------------------------------------------------------
@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a state file a server with `server_args` wrote: a run's
    setup and validation ids on the default stream, then SIGTERM."""
    state = tmp_path_factory.mktemp("kept") / "run.state"
    with ServerProcess(*server_args(state)) as server:
        eir_setup(server.url)
    return state.read_bytes()


def refused(state: Path, *args: str, shuffle: bool = True) -> str:
    """The server's one ERROR line when started with `args` and --state
    `state`, which it leaves as it was (not even written again the same);
    it exits 2 without listening."""
    before = file_as_is(state)
    with ServerProcess(
        *server_args(state, *args, shuffle=shuffle), wait_listening=False
    ) as server:
        status = server.wait(HANG)
    assert status == 2, server.log
    assert "listening" not in server.log and "Traceback" not in server.log
    errors = [line for line in server.lines if " ERROR " in line]
    assert len(errors) == 1, server.log
    assert f"--state {state}: " in errors[0]
    assert file_as_is(state) == before
    return errors[0]


def file_as_is(path: Path) -> tuple[bytes, int, int] | None:
    """A file's bytes, inode and modification time (None: no file)."""
    if not path.exists():
        return None
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


@pytest.mark.parametrize(
    ("args", "shuffle", "named"),
    [
        (["--seed", "6"], True, ["--seed 5 in the file, 6 here"]),
        (
            ["--max-iterations", "2999"],
            True,
            ["--max-iterations 3000 in the file, 2999 here", "samples per epoch"],
        ),
        ([], False, ["--shuffle True in the file, False here"]),
        (
            ["--source", "bench/heavy_source.py:make_source"],
            True,
            ["--source 'data_simulator:SimulatedHealthData' in the file"],
        ),
        (["--sequence-length", "32"], True, ["--sequence-length 64 in the file"]),
    ],
)
def test_a_file_for_other_settings_is_refused_naming_what_differs(
    tmp_path: Path, kept: bytes, args: list[str], shuffle: bool, named: list[str]
) -> None:
    state = tmp_path / "run.state"
    state.write_bytes(kept)
    line = refused(state, *args, shuffle=shuffle)
    for text in named:
        assert text in line, line
    assert AFRESH in line


def changed_first_line(data: bytes, **changes: object) -> bytes:
    """`data` with its first line's JSON changed and its checksum made good."""
    first, rest = data.split(b"\n", 1)
    record = json.loads(first.rpartition(b"\t")[0])
    record.update(changes)
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%s\t%08x\n%s" % (body, zlib.crc32(body), rest)


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda data: data[: data.index(b"\n") // 2], "the file is truncated"),
        (lambda data: data.replace(b'"--seed":5', b'"--seed":6', 1), "corrupt"),
        (lambda data: changed_first_line(data, version=2), "newer eirstream"),
        (lambda data: b"", "the file is empty"),
        (lambda data: b"model:\n  checkpoint: run/7.pt\n", "not an eirstream state"),
    ],
    ids=["truncated", "corrupt", "version-2", "empty", "another-file"],
)
def test_a_damaged_file_is_refused_and_left_as_it_is(
    tmp_path: Path, kept: bytes, damage, named: str
) -> None:
    state = tmp_path / "run.state"
    state.write_bytes(damage(kept))
    assert named in refused(state)


def test_a_path_the_server_cannot_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    line = refused(tmp_path / "plain" / "run.state")
    assert "cannot write it" in line
    assert (tmp_path / "plain").read_text() == "a file, not a folder"


def test_a_second_server_on_the_same_state_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "run.state"
    with ServerProcess(*server_args(state)) as server:
        eir_setup(server.url)
        line = refused(state)  # while the first one serves
        assert "another server is using it" in line, line
        EirLikeClient(server.url).close()  # the first goes on serving
    with ServerProcess(*server_args(state)):  # the lock went with the server
        pass


def test_a_file_of_more_streams_than_max_streams_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "run.state"
    with ServerProcess(*server_args(state)) as server:
        for name in ("run-a", "run-b"):
            EirLikeClient(f"{server.url}/{name}").close()
    assert b'"run-b"' in state.read_bytes()
    line = refused(state, "--max-streams", "2")
    assert "it keeps 3 streams, more than --max-streams 2" in line, line


def write_dataset(folder: Path, columns: str) -> Path:
    """A CSV of 50 rows and a --dataset spec serving `columns` of it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{k},{k % 7},{'ab'[k % 2]}" for k in range(50)]
    (folder / "rows.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    spec = folder / "rows.yaml"
    spec.write_text(
        "files: rows.csv\n"
        f"inputs:\n  x: {{type: tabular, columns: [{columns}]}}\n"
        "outputs:\n  y: {type: tabular, columns: [label]}\n"
    )
    return spec


@pytest.mark.usefixtures("index_cache")
def test_a_file_for_another_dataset_spec_is_refused(tmp_path: Path) -> None:
    """The spec at the same path, edited: its samples differ."""
    pytest.importorskip("pyarrow")
    spec = write_dataset(tmp_path / "data", "a, b")
    state = tmp_path / "run.state"
    args = ["--port", "0", "--workers", "0", "--dataset", str(spec)]
    with ServerProcess(*args, "--state", str(state)) as server:
        assert request_status(server.url)["state"]["path"] == str(state)
    write_dataset(tmp_path / "data", "a")
    before = state.read_bytes()
    with ServerProcess(*args, "--state", str(state), wait_listening=False) as server:
        assert server.wait(HANG) == 2, server.log
    errors = [line for line in server.lines if " ERROR " in line]
    assert len(errors) == 1 and "dataset spec sha256" in errors[0], server.log
    assert state.read_bytes() == before


def test_a_pass_of_more_epochs_than_the_server_gives_is_refused(
    tmp_path: Path,
) -> None:
    """The file stopped in epoch 1 of a 2-epoch pass; the server is started
    with --epochs 1: one line naming --epochs, not a traceback."""
    state = tmp_path / "run.state"
    few = ["--max-iterations", "40", "--epochs", "2"]
    with ServerProcess(*server_args(state, *few)) as server:
        eir_setup(server.url)
        client = EirLikeClient(server.url)
        client.validation_probe()
        for _ in range(7):  # 56 of the pass's 60 training samples
            assert client.fetch_batch(BATCH)
        server.process.send_signal(signal.SIGKILL)
        server.wait(HANG)
    line = refused(state, "--max-iterations", "40", "--epochs", "1")
    assert "--epochs" in line and "epoch 1" in line, line
