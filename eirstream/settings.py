"""What the server runs with: the parsed command line, as one dataclass."""

import os
from dataclasses import dataclass
from typing import Any

DEFAULT_SOURCE = "data_simulator:SimulatedHealthData"  # the tutorial's data


@dataclass
class Settings:
    """What the server runs with: the parsed command line (see `parse_args`,
    which owns every default)."""

    host: str
    port: int
    path: str
    source: str
    dataset: str | None  # a spec file: the source is eirstream.datasets'
    shuffle: bool
    epochs: int | None  # epochs in a pass; None: endless
    max_iterations: int | None
    sequence_length: int
    seed: int
    workers: int
    workers_auto: bool  # --workers not given: one per core, or a thread
    cluster: str | None
    max_batch_size: int
    max_message_size: int
    max_streams: int
    state: str | None  # --state PATH: keep and resume each stream's progress
    state_sync: float  # seconds between flushes of the state file to disk
    token: str | None
    certfile: str | None
    keyfile: str | None
    ping_interval: float | None
    handshake_timeout: float
    progress_interval: float
    log_level: str
    check: int | None  # --check N: check N samples of the source, serve nothing

    def source_settings(self) -> dict[str, Any]:
        """The keyword arguments a source factory gets (and `dataset`, the
        spec's absolute path or URL, for the dataset source's)."""
        settings: dict[str, Any] = {
            "seed": self.seed,
            "sequence_length": self.sequence_length,
            "max_iterations": self.max_iterations,
        }
        if self.dataset is not None:
            local = "://" not in self.dataset
            settings["dataset"] = (
                os.path.abspath(self.dataset) if local else self.dataset
            )
        return settings
