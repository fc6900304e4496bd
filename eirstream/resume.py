"""`--state PATH`: the server's side of keeping and resuming streams.

`Keeper` joins a server's named streams (streams.py) to its state file
(statefile.py): at start it reads the file and resumes each stream it
names (the stream's rule 8, stream.py), and from then on it writes each
change of a stream's progress or validation ids, a reply's progress just
before the reply leaves. The settings a state file must match are those
the samples and their order depend on (`fingerprint`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from eirstream.progress import StreamState
from eirstream.settings import Settings
from eirstream.sources import SampleSource
from eirstream.state import AFRESH, StateError
from eirstream.statefile import StateFile
from eirstream.streams import NamedStream, Refused, Streams

logger = logging.getLogger("eirstream.state")


def fingerprint(settings: Settings, source: SampleSource) -> dict[str, Any]:
    """What a stream's samples and their order depend on: a state file
    written with other values cannot be resumed."""
    values: dict[str, Any] = {
        "--seed": settings.seed,
        "--max-iterations": settings.max_iterations,
        "--shuffle": settings.shuffle,
        "samples per epoch": source.num_samples,
    }
    if settings.dataset is None:
        values["--source"] = settings.source
        values["--sequence-length"] = settings.sequence_length
    else:
        values["--dataset"] = settings.source_settings()["dataset"]
        # A URL's spec is known by its address alone.
        with contextlib.suppress(OSError), open(settings.dataset, "rb") as spec:
            values["dataset spec sha256"] = hashlib.sha256(spec.read()).hexdigest()
    return values


class Keeper:
    """The state file of a server and the streams it keeps."""

    def __init__(
        self, settings: Settings, source: SampleSource, streams: Streams
    ) -> None:
        """Read the file and resume the streams it names; ValueError (one
        line, the file left as it is) when it cannot be used."""
        path = settings.state
        assert path is not None
        self.sync_seconds = settings.state_sync
        try:
            self.file, read = StateFile.read(path, fingerprint(settings, source))
        except StateError as exc:
            raise ValueError(f"--state {path}: {exc}") from None
        if read.dropped:
            logger.warning(
                "state file %s: its last line was cut short (a crash while "
                "writing); the state before it is used",
                path,
            )
        self.streams = streams
        self._syncing: asyncio.Task[None] | None = None
        for name, state in read.streams.items():
            try:
                named = streams.open(name)
            except Refused:
                raise ValueError(
                    f"--state {path}: it keeps {len(read.streams)} streams, more "
                    f"than --max-streams {streams.max_streams}: give a larger "
                    "--max-streams"
                ) from None
            if state == StreamState():  # a stream nobody used: nothing to resume
                continue
            try:
                named.stream.resume(state)
            except ValueError as exc:  # it does not fit this server's pass
                raise ValueError(
                    f"--state {path}: stream {name!r} cannot be resumed: {exc}; "
                    f"{AFRESH}"
                ) from None
        try:  # written from here on: nothing above refused it
            self.file.begin()
        except StateError as exc:
            raise ValueError(f"--state {path}: {exc}") from None

    def watch(self, named: NamedStream) -> None:
        """Write `named`'s changes from now on (a stream made since: its
        state at once)."""
        stream = named.stream

        def changed(what: str) -> None:
            if what == "validation":  # one line: ids and progress together
                state = stream.state()
                self.file.validation(named.name, state.validation, state.progress)
            else:
                self.file.progress(named.name, stream.progress())

        stream.listener = changed
        if named.name not in self.file.encoded:
            changed("validation")

    def sent(self, named: NamedStream) -> None:
        """A reply of `named`'s is about to leave: its progress goes first."""
        self.file.progress(named.name, named.stream.progress())

    def resumed_lines(self) -> list[str]:
        """One line per resumed stream: from where."""
        lines = []
        for named in self.streams:
            resumed = named.stream.resumed
            if resumed is None:
                continue
            of = "" if resumed.per_epoch is None else f" of {resumed.per_epoch:,}"
            kept = len(named.stream.state().validation)
            where = f"epoch {resumed.epoch}, {resumed.served:,}{of} samples served"
            if resumed.pass_over:
                where = f"its pass had ended ({where}), so training starts a new one"
            lines.append(
                f"stream {named.name!r} resumed from {self.file.path}: {where}; "
                f"{kept:,} validation ids kept out of training"
            )
        return lines

    # -- the server's life ---------------------------------------------------
    def start(self) -> None:
        self._syncing = asyncio.create_task(self._sync_now_and_then())

    async def _sync_now_and_then(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sync_seconds)
            if self.file.dirty:
                await loop.run_in_executor(None, self.file.sync)

    def close(self) -> None:
        if self._syncing is not None:
            self._syncing.cancel()
        self.file.close()

    def status(self) -> dict[str, Any]:
        return self.file.status()
