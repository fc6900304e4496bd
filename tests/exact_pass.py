"""One training pass the way EIR makes it, kept byte for byte, and its checks.

Used by the tests that compare generation engines (test_local_pool.py,
test_cluster.py): a server subprocess on a free port, EIR's setup step that
sends the validation ids, then a training connection (validation probe,
unread heartbeat, heartbeat + getData per batch) that keeps the raw JSON text
of every sample as the server sent it, every `error` reply (EIR would skip
them silently; here they are failures), and when each reply arrived.
`check_exactly_once` then says precisely what is missing, doubled or leaked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

from eir_like_client import EirLikeClient
from eirtrain_support import ServerProcess, server_process

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "simulation_streamer.py"
_DECODER = json.JSONDecoder()


@contextlib.contextmanager
def streamer(
    log_path: Path,
    *args: str,
    cwd: Path = ROOT,
    startup_timeout: float = 60,
) -> Iterator[ServerProcess]:
    """simulation_streamer.py --port 0 *args, until it logs its URL (the
    environment is this process's: set variables with monkeypatch)."""
    command = [sys.executable, str(SERVER), "--port", "0", *args]
    with server_process(command, log_path, cwd, startup_timeout) as server:
        yield server


# A source with a fixed amount of CPU per sample (about 3 ms: 3,000 chained
# SHA-256 in a Python loop, holding the GIL as simulator code does), so a
# pass takes long enough for a worker to die in the middle of it. Its
# samples are the simulated ones, drawn from an RNG that also depends on the
# hashes, so the work cannot be skipped and a sample depends on its index alone.
SLOW_SOURCE = """
import random
from hashlib import sha256

from data_simulator import SimulatedHealthData
from single_sample_simulation import simulate_sample


class Slow(SimulatedHealthData):
    def simulate(self, index):
        digest = sha256(f"{self.seed}:{index}".encode()).digest()
        for _ in range(3000):
            digest = sha256(digest).digest()
        rng = random.Random(f"{self.seed}:{index}:{digest.hex()}")
        return simulate_sample(rng, self.sequence_length)


def make(**settings):
    return Slow(**settings)
"""


def write_source(folder: Path, stem: str, text: str) -> tuple[str, ModuleType]:
    """Write a source module `stem`.py into folder; its --source spec
    (path/to/stem.py:make) and the module, loaded here for reference samples."""
    path = folder / f"{stem}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"_reference_{stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return f"{path}:make", module


def raw_samples(text: str) -> list[str]:
    """The JSON text of each sample in a `data` reply, exactly as sent.

    Each element is located with the decoder's raw_decode and checked to
    decode to the same value as the whole message's parse, so a slice that
    is not the sample's own text cannot slip through.
    """
    payload = json.loads(text)["payload"]
    pos = text.index("[", text.index('"payload"')) + 1
    out = []
    for expected in payload:
        while text[pos] in " \t\r\n,":
            pos += 1
        value, end = _DECODER.raw_decode(text, pos)
        assert value == expected, f"sample text at {pos} does not match the parse"
        out.append(text[pos:end])
        pos = end
    return out


@dataclass
class Pass:
    """What one training connection received."""

    samples: list[tuple[str, str]] = field(default_factory=list)  # (id, raw JSON)
    batch_sizes: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic, per data reply
    errors: list[dict[str, Any]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [sample_id for sample_id, _ in self.samples]

    def by_id(self) -> dict[str, str]:
        return dict(self.samples)


def send_validation_ids(url: str, ids: Sequence[str]) -> None:
    """EIR's setup connection 5: setValidationIds, then close."""
    client = EirLikeClient(url)
    try:
        reply = client.request(
            {"type": "setValidationIds", "payload": {"validation_ids": list(ids)}}
        )[0]
        assert reply["type"] == "validationIdsConfirmation", reply
    finally:
        client.close()


def training_pass(
    url: str,
    batch_size: int,
    after_batch: Callable[[int], None] | None = None,
    timeout: float = 60,
    max_replies: int = 100_000,
) -> Pass:
    """EIR's training connection to the end of the stream.

    `after_batch(n)` runs after the n-th data reply (1-based): the place to
    break something mid-stream."""
    client = EirLikeClient(url, timeout=timeout)
    result = Pass()
    try:
        client.validation_probe()
        client.send({"type": "heartbeat"})  # EIR never reads this reply
        get_data = {"type": "getData", "payload": {"batch_size": batch_size}}
        for _ in range(max_replies):
            client.send({"type": "heartbeat"})
            client.send(get_data)
            client.ws.settimeout(timeout)
            text = client.ws.recv()
            message = json.loads(text)
            if message["type"] == "heartbeat":
                continue
            if message["type"] == "error":
                result.errors.append(message)
                if len(result.errors) >= 20:
                    return result
                continue
            assert message["type"] == "data", message
            if not message["payload"] or message["payload"] == ["terminate"]:
                return result
            raws = raw_samples(text)
            result.samples += [(json.loads(raw)["sample_id"], raw) for raw in raws]
            result.batch_sizes.append(len(raws))
            result.arrivals.append(time.monotonic())
            if after_batch is not None:
                after_batch(len(result.batch_sizes))
        raise AssertionError(f"no end of stream after {max_replies} replies")
    finally:
        client.close()


def check_exactly_once(got: Pass, expected_indices: Iterable[int]) -> None:
    """Every expected sample once, in stream order, nothing else, no error."""
    assert not got.errors, f"error replies: {got.errors[:3]}"
    expected = [f"sample_{k}" for k in expected_indices]
    ids = got.ids()
    if ids == expected:
        return
    counts = Counter(ids)
    doubled = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(set(expected) - counts.keys())
    extra = sorted(counts.keys() - set(expected))
    raise AssertionError(
        f"{len(ids)} samples received, {len(expected)} expected; "
        f"missing {missing[:10]} ({len(missing)}), doubled {doubled[:10]} "
        f"({len(doubled)}), not expected {extra[:10]} ({len(extra)}); "
        + ("(same set, other order)" if not (doubled or missing or extra) else "")
    )


def longest_stall_after(arrivals: Sequence[float], moment: float) -> float:
    """The longest time the client went without a data reply after `moment`
    (the first wait counted from `moment` itself)."""
    later = [moment, *(t for t in arrivals if t > moment)]
    return max((b - a for a, b in pairwise(later)), default=0.0)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until predicate() is true; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - start
