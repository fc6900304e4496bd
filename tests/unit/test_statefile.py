"""Writing the state file (statefile.py): a fresh snapshot renamed over the
file, one line appended per update, a new snapshot once the updates grow,
and a failed write that leaves the last good state, warns once, and is made
good by the next write. Files only, in pytest's temporary folder.
"""

import errno
import logging
import os
import random
from pathlib import Path

import pytest

import eirstream.statefile as statefile
from eirstream.progress import Progress, StreamState, Take
from eirstream.state import StateError, read_state
from eirstream.statefile import StateFile

SETTINGS = {"--seed": 1, "--shuffle": True, "samples per epoch": 1000}


# What a state file leaves in its folder: itself and the lock a server
# holds on it (no temporary).
KEPT = ["run.state", "run.state.lock"]


def read(path: Path) -> dict[str, StreamState]:
    """The state a server would resume from `path`, which must read whole."""
    got = read_state(path.read_bytes(), SETTINGS)
    assert not got.dropped
    return got.streams


def random_progress(rng: random.Random) -> Progress:
    take = Take((rng.randrange(1000),), (0, rng.randrange(500)), (0, 500))
    return Progress(
        rng.randrange(3),
        rng.randrange(1000),
        tuple(rng.sample(range(1000), rng.randrange(4))),
        (take,) * rng.randrange(3),
        served_total=rng.randrange(10**6),
        rewinds=rng.randrange(9),
    )


class Writes:
    """os.write as statefile.py calls it, failing while `failing` is set:
    "full" raises ENOSPC, "half" writes half the bytes (a short write)."""

    def __init__(self) -> None:
        self.failing: str | None = None
        self.real = os.write

    def __call__(self, fd: int, data: bytes) -> int:
        if self.failing == "full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.failing == "half":
            return self.real(fd, bytes(data)[: len(data) // 2])
        return self.real(fd, data)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    fake = Writes()
    monkeypatch.setattr(statefile.os, "write", fake)
    return fake


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "eirstream.state" and r.levelno == logging.WARNING
    ]


# -- snapshots ----------------------------------------------------------------------
def test_a_new_file_is_one_snapshot_renamed_into_place(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    state, held = StateFile.open(str(path), SETTINGS)
    assert held.streams == {} and not held.dropped
    assert path.read_bytes().count(b"\n") == 1
    assert read(path) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT  # no .tmp
    state.close()


def test_opening_a_kept_file_reads_it_and_replaces_it_by_a_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.validation("default", (3, 8), Progress(0, 12, served_total=40))
    state.progress("run-b", Progress(1, 5))
    state.progress("default", Progress(0, 20, served_total=48))
    before = read(path)
    inode = path.stat().st_ino
    os.close(state._fd)  # a killed server: no last snapshot
    again, held = StateFile.open(str(path), SETTINGS)
    assert held.streams == before == read(path)
    assert path.stat().st_ino != inode  # a new file, renamed over the old
    assert path.read_bytes().count(b"\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT
    again.close()


def test_updates_read_back_whole_after_each_and_snapshots_shrink_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statefile, "COMPACT_AFTER", 3000)
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    rng = random.Random(5)
    expected: dict[str, StreamState] = {}
    snapshots = 0
    for _ in range(400):
        name = rng.choice(["default", "run-a", "run-b"])
        before = expected.get(name, StreamState())
        size, inode = path.stat().st_size, path.stat().st_ino
        if rng.random() < 0.1:
            ids = tuple(sorted(rng.sample(range(1000), rng.randrange(30))))
            progress = random_progress(rng)
            state.validation(name, ids, progress)
            expected[name] = StreamState(progress, ids)
        elif name in expected:
            progress = random_progress(rng)
            state.progress(name, progress)
            expected[name] = StreamState(progress, before.validation)
        else:
            continue
        assert read(path) == expected  # never half a line, never an old state
        if path.stat().st_ino != inode:  # a snapshot replaced the file
            snapshots += 1
            assert path.stat().st_size < size
            assert path.read_bytes().count(b"\n") == 1
        assert state.status()["bytes"] == path.stat().st_size
    assert snapshots >= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT
    state.close()
    assert path.read_bytes().count(b"\n") == 1  # close: one last snapshot
    assert read(path) == expected


def test_close_leaves_one_snapshot_and_writes_no_more(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    for position in range(50):
        state.progress("default", Progress(0, position))
    state.close()
    assert path.read_bytes().count(b"\n") == 1
    assert read(path) == {"default": StreamState(Progress(0, 49))}
    state.close()  # twice: nothing more
    assert read(path) == {"default": StreamState(Progress(0, 49))}


def test_an_update_after_close_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply finished while the server stops comes after the last
    snapshot: the file stays that snapshot, and nothing is logged."""
    caplog.set_level(logging.WARNING, "eirstream.state")
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.progress("default", Progress(0, 3))
    state.close()
    closed = file_as_is(path)
    state.progress("default", Progress(0, 9))
    state.validation("default", (1,), Progress(0, 9))
    state.sync()
    assert file_as_is(path) == closed and not warnings(caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT


def file_as_is(path: Path) -> tuple[bytes, int, int]:
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


def test_a_new_stream_is_never_on_file_without_its_progress(tmp_path: Path) -> None:
    """Its validation ids and first progress are one line, one write."""
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    size = path.stat().st_size
    state.validation("run-x", (4,), Progress(0, 2))
    assert path.read_bytes()[size:].count(b"\n") == 1
    assert read(path) == {"run-x": StreamState(Progress(0, 2), (4,))}
    state.close()


def test_sync_flushes_what_was_written(tmp_path: Path) -> None:
    state, _ = StateFile.open(str(tmp_path / "s"), SETTINGS)
    assert not state.dirty
    state.progress("default", Progress(0, 1))
    assert state.dirty
    state.sync()
    assert not state.dirty
    state.close()


# -- failed writes ------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["full", "half"])
def test_failed_appends_keep_the_last_good_state_warn_once_and_catch_up(
    tmp_path: Path,
    writes: Writes,
    failure: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "eirstream.state")
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.validation("default", (1, 2), Progress(0, 10))
    state.progress("default", Progress(0, 20))
    good = path.read_bytes()
    writes.failing = failure
    state.progress("default", Progress(0, 30))
    state.validation("run-b", (7,), Progress(0, 3))  # a new stream meanwhile
    state.validation("default", (1, 2, 5), Progress(0, 40))
    assert path.read_bytes() == good  # as it was: no half line, nothing new
    assert state.status()["failed_writes"] == 3
    assert state.status()["bytes"] == len(good)
    lines = warnings(caplog)
    assert len(lines) == 1 and "a write failed" in lines[0], lines
    assert "goes on serving" in lines[0]
    writes.failing = None
    state.progress("default", Progress(0, 50))  # the next good write
    assert read(path) == {  # up to date, the lost updates too
        "default": StreamState(Progress(0, 50), (1, 2, 5)),
        "run-b": StreamState(Progress(0, 3), (7,)),
    }
    assert len(warnings(caplog)) == 2 and "writing again" in warnings(caplog)[1]
    state.progress("default", Progress(0, 60))
    assert read(path)["default"].progress == Progress(0, 60)
    assert len(warnings(caplog)) == 2
    state.close()


def test_a_failed_snapshot_leaves_the_old_file_and_no_temporary(
    tmp_path: Path,
    writes: Writes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "eirstream.state")
    monkeypatch.setattr(statefile, "COMPACT_AFTER", 500)
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    position = 0
    while path.stat().st_size < 450:  # close to a snapshot
        position += 1
        state.progress("default", Progress(0, position))
    good, inode = path.read_bytes(), path.stat().st_ino
    writes.failing = "half"
    for _ in range(5):
        state.progress("default", Progress(0, position + 1))
        assert path.read_bytes() == good and path.stat().st_ino == inode
        assert sorted(p.name for p in tmp_path.iterdir()) == KEPT
    assert len(warnings(caplog)) == 1
    writes.failing = None
    state.progress("default", Progress(0, position + 2))
    assert read(path) == {"default": StreamState(Progress(0, position + 2))}
    state.close()


def test_a_close_that_cannot_snapshot_leaves_the_appended_file(
    tmp_path: Path, writes: Writes
) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.progress("default", Progress(0, 7))
    writes.failing = "full"
    state.close()
    assert read(path) == {"default": StreamState(Progress(0, 7))}
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT


def test_a_snapshot_never_opens_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the state file itself fails (no descriptors left, say): the
    snapshots still replace it, and no update goes to the replaced file."""
    monkeypatch.setattr(statefile, "COMPACT_AFTER", 400)
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    real = os.open

    def no_open(file: object, flags: int, *args: object, **kwargs: object) -> int:
        if Path(str(file)) == path:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(file, flags, *args, **kwargs)

    monkeypatch.setattr(statefile.os, "open", no_open)
    snapshots, inode = 0, path.stat().st_ino
    for position in range(60):
        state.progress("default", Progress(0, position))
        snapshots += path.stat().st_ino != inode
        inode = path.stat().st_ino
        assert read(path) == {"default": StreamState(Progress(0, position))}
    assert snapshots > 3 and state.status()["failed_writes"] == 0
    state.close()


# -- paths a server cannot use ---------------------------------------------------------
def test_a_read_only_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.progress("default", Progress(0, 5))
    state.close()
    path.chmod(0o444)
    before, stat = path.read_bytes(), path.stat()
    with pytest.raises(StateError, match="cannot write it: the file is read-only"):
        StateFile.open(str(path), SETTINGS)
    assert path.read_bytes() == before
    assert path.stat().st_ino == stat.st_ino and path.stat().st_mtime == stat.st_mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT


def test_snapshots_keep_the_permissions_the_file_was_given(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.close()
    path.chmod(0o600)
    again, _ = StateFile.open(str(path), SETTINGS)  # a snapshot replaces it
    again.progress("default", Progress(0, 5))
    again.close()  # and another one
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["missing/run.state", "a-file/run.state"])
def test_a_path_in_no_folder_cannot_be_written(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("a regular file, no folder")
    with pytest.raises(StateError, match=r"^cannot write it: "):
        StateFile.open(str(tmp_path / where), SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_file_for_other_settings_is_refused_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.progress("default", Progress(0, 5))
    state.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="--seed 1 in the file, 2 here"):
        StateFile.open(str(path), {**SETTINGS, "--seed": 2})
    assert path.read_bytes() == before


def test_reading_writes_nothing_until_begin(tmp_path: Path) -> None:
    """What the server checks after reading (do its streams fit?) can still
    refuse the file: it is not written before `begin`."""
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.progress("default", Progress(0, 5))
    os.close(state._fd)  # a killed server: no last snapshot
    before, inode = path.read_bytes(), path.stat().st_ino
    again, held = StateFile.read(str(path), SETTINGS)
    assert held.streams == {"default": StreamState(Progress(0, 5))}
    assert path.read_bytes() == before and path.stat().st_ino == inode
    again.begin()
    assert path.stat().st_ino != inode and read(path) == held.streams
    again.close()


def test_a_last_line_cut_short_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "run.state"
    state, _ = StateFile.open(str(path), SETTINGS)
    state.progress("default", Progress(0, 5))
    state.progress("default", Progress(0, 9))
    os.close(state._fd)
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a crash in the middle of the last write
    again, held = StateFile.open(str(path), SETTINGS)
    assert held.dropped
    assert held.streams == {"default": StreamState(Progress(0, 5))}
    assert read(path) == held.streams  # the snapshot has the state before it
    again.close()
