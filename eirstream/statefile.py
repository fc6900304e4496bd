"""Writing the state file (`--state PATH`; its format is state.py's).

`StateFile.open` reads and checks the file (or makes it), and writes a
fresh snapshot in its place (`read`, then `begin`: the server resumes its
streams in between, so a file they do not fit is left untouched). From
then on every update is one line appended with one `write` call: a
sample's update is in the file before its reply is handed to the socket,
so a server killed at any moment (even with SIGKILL) leaves a file that
names every sample sent. The operating system writes the file to disk in
its own time; `sync` forces it (the server calls it every `--state-sync`
seconds), so a machine that crashes loses at most that interval's updates,
and their samples are sent again (never skipped: a lost update only makes
the file older).

When the updates outgrow `COMPACT_AFTER` bytes, a new snapshot replaces
the file: written to a temporary file beside it, flushed to disk, then
renamed over it, so a reader sees the old file or the new one, never half
of one. A write that fails (a full disk, say) leaves the last good state
in place: an append cut short is cut off again, a failed snapshot is
removed. The server logs one warning and goes on serving; from then on
each update writes a snapshot instead of its line, and the first that is
written brings the file up to date, the updates lost meanwhile with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eirstream.progress import Progress

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
from eirstream.state import (
    ReadState,
    StateError,
    encode_indices,
    encode_line,
    encode_progress,
    progress_line,
    read_state,
    snapshot,
)

logger = logging.getLogger("eirstream.state")

COMPACT_AFTER = 2**20  # bytes of updates after the snapshot


class StateFile:
    """The state file of one server (see the module docstring)."""

    def __init__(self, path: Path, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = dict(settings)
        self.encoded: dict[str, dict[str, Any]] = {}  # the streams, as written
        self.updates = self.failures = 0
        self._fd = -1
        self._size = self._snapshot_size = 0  # bytes written and good
        self._failing: str | None = None  # why the last write failed
        self._dirty = False  # written since the last sync
        self._closed = False  # after `close`: nothing is written again
        self._mode: int | None = None  # the file's permissions, kept by snapshots
        self._lock = -1  # the descriptor that holds PATH.lock

    @classmethod
    def open(
        cls, path: str, settings: Mapping[str, Any]
    ) -> tuple[StateFile, ReadState]:
        """The state file at `path` for a server with `settings`, and what it
        held (nothing for a new file): `read`, then `begin`. StateError, one
        line, for a file this server cannot use or a path it cannot write;
        the file is left as it is then."""
        state, read = cls.read(path, settings)
        state.begin()
        return state, read

    @classmethod
    def read(
        cls, path: str, settings: Mapping[str, Any]
    ) -> tuple[StateFile, ReadState]:
        """`open` up to writing: what the file holds, checked, and the state
        file to `begin` once the caller has checked it too (nothing written
        yet, so a refusal leaves the file as it is). StateError, one line,
        for a file this server cannot use."""
        state = cls(Path(path), settings)
        try:
            data = state.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # (writing says why)
            read = ReadState()
        except OSError as exc:
            raise StateError(f"cannot read it: {exc.strerror or exc}") from None
        else:
            read = read_state(data, state.settings)
        state.encoded = {name: dict(parts) for name, parts in read.encoded.items()}
        return state, read

    def begin(self) -> None:
        """Write a fresh snapshot in place of the file read; StateError if
        the path cannot be written (the file is left as it is then)."""
        if self.path.exists() and not _writable(self.path):
            raise StateError("cannot write it: the file is read-only")
        with contextlib.suppress(OSError):
            self._mode = stat.S_IMODE(self.path.stat().st_mode)
        self._take_lock()
        problem = self._compact()
        if problem:
            self._release_lock()
            raise StateError(f"cannot write it: {problem}")

    def _take_lock(self) -> None:
        """Hold PATH.lock, so that a second server given the same path is
        refused rather than writing over this one's file. (A POSIX record
        lock: it belongs to the process, and the system lets go of it when
        the process ends, however it ends.)"""
        if fcntl is None:  # (Windows: no lock)
            return
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot write it: {exc.strerror or exc}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(
                f"another server is using it (it holds {lock.name}); give each "
                "server its own --state path"
            ) from None
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    # -- updates -------------------------------------------------------------
    def progress(self, name: str, progress: Progress) -> None:
        """Write a stream's progress (before its reply leaves). It is kept
        as it is, and encoded for a snapshot only."""
        self.encoded.setdefault(name, {})["progress"] = progress
        self._append(progress_line(name, progress))

    def validation(
        self, name: str, indices: tuple[int, ...], progress: Progress | None = None
    ) -> None:
        """Write a stream's validation ids (as sorted indices), with its
        `progress` in the same line if given: a stream's first line has
        both, so no file holds a stream without its progress."""
        parts: dict[str, Any] = {"validation": encode_indices(indices)}
        if progress is not None:
            parts["progress"] = encode_progress(progress)
        self._update(name, parts)

    def _update(self, name: str, parts: dict[str, Any]) -> None:
        self.encoded.setdefault(name, {}).update(parts)
        self._append(encode_line({"stream": name, **parts}))

    def _append(self, line: bytes) -> None:
        if self._closed:  # (a reply finished while the server stopped)
            return
        self.updates += 1
        if self._failing is not None:
            # Updates were lost since: a snapshot of every stream, this
            # update with them, brings the file up to date.
            problem = self._compact()
            if problem:
                self._failed(OSError(problem))
                return
            logger.warning("state file %s: writing again", self.path)
            self._failing = None
            return
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"only {written} of {len(line)} bytes written")
        except OSError as exc:
            self._failed(exc)
            with contextlib.suppress(OSError):  # cut off what was written
                os.ftruncate(self._fd, self._size)
            return
        self._size += written
        self._dirty = True
        if self._size - self._snapshot_size > COMPACT_AFTER:
            problem = self._compact()
            if problem:  # the file is whole; the next update tries again
                self._failed(OSError(problem))

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        if self._failing is None:
            self._failing = str(exc.strerror or exc)
            logger.warning(
                "state file %s: a write failed (%s); it keeps its last good state, "
                "and the server goes on serving",
                self.path,
                self._failing,
            )

    # -- snapshots and syncing ------------------------------------------------
    def _compact(self) -> str | None:
        """Replace the file by one snapshot of every stream (temporary file,
        flushed, renamed over); why not, or None."""
        streams = {
            name: {
                key: encode_progress(value) if isinstance(value, Progress) else value
                for key, value in parts.items()
            }
            for name, parts in self.encoded.items()
        }
        body = snapshot(self.settings, streams)
        temporary = self.path.with_name(self.path.name + ".tmp")
        # Appends go on through the temporary's own descriptor, which follows
        # it through the rename: the file is never opened again after it (an
        # open that failed then, with no descriptor left, say, left the
        # appends going to the replaced file).
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        new = -1
        try:
            new = os.open(temporary, flags, 0o644)
            if self._mode is not None:  # a file made 0600 stays 0600
                os.fchmod(new, self._mode)
            if os.write(new, body) != len(body):
                raise OSError("short write")
            os.fsync(new)
            os.replace(temporary, self.path)
        except OSError as exc:
            if new >= 0:
                os.close(new)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return str(exc.strerror or exc)
        _sync_folder(self.path.parent)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size, self._snapshot_size = new, len(body), len(body)
        self._dirty = False
        return None

    def sync(self) -> None:
        """Flush what was written to disk (call it off the event loop)."""
        fd, self._dirty = self._fd, False
        if fd < 0:  # closed: the last snapshot was synced
            return
        # (fd closed by a snapshot meanwhile: that one was synced)
        with contextlib.suppress(OSError):
            os.fsync(fd)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def close(self) -> None:
        """A last snapshot, flushed; the file is not written again."""
        if self._closed or self._fd < 0:
            return
        self._closed = True
        if self._compact():
            self.sync()
        os.close(self._fd)
        self._fd = -1
        self._release_lock()

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self._size,
            "updates": self.updates,
            "failed_writes": self.failures,
        }


def _writable(path: Path) -> bool:
    """Whether the file is for writing: its mode lets someone write it (root
    may write any file, but one made read-only is left alone) and this
    process may."""
    return bool(path.stat().st_mode & 0o222) and os.access(path, os.W_OK)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
