"""One training pass the way EIR makes it, kept byte for byte, and its checks.

Used by the tests that compare the engines (test_local_pool.py,
test_cluster.py), against a server subprocess (`ServerProcess` of
support/server_process.py): EIR's setup step that sends the validation ids,
then a training connection (validation probe, unread heartbeat, heartbeat +
getData per batch) that keeps the raw JSON text of every sample as the
server sent it, every `error` reply (EIR would skip them silently; here they
are failures), and when each reply arrived. `check_exactly_once` then says
precisely what is missing, doubled or leaked. `validated_pass` is the whole
of it against a server it starts; `pass_killing_a_worker` kills one of the
server's worker processes in the middle of a pass, and `check_remade_pass`
checks that the pass lost nothing by it.

The sources these tests serve are either their own, written to a file with
`write_source`, or one of bench/ that the benchmarks use too (`bench_source`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

from support import ROOT
from support.eir_like_client import EirLikeClient
from support.server_process import ServerProcess
from support.waiting import HANG

_DECODER = json.JSONDecoder()


def bench_source(stem: str, factory: str = "make_source") -> tuple[str, ModuleType]:
    """A source of bench/, shared with the benchmarks (bench/heavy_source.py:
    a fixed ~3 ms of CPU per sample, so a pass lasts long enough to kill a
    worker in the middle of it): its --source spec, by file path as worker
    processes and Dask workers load it, and the module, for reference samples."""
    path = ROOT / "bench" / f"{stem}.py"
    return f"{path}:{factory}", importlib.import_module(f"bench.{stem}")


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


def texts_by_id(text: str) -> dict[str, str]:
    """Sample id -> the sample's JSON text in a `data` reply, as sent."""
    return {json.loads(raw)["sample_id"]: raw for raw in raw_samples(text)}


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
    timeout: float = HANG,
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


def validated_pass(
    *args: str, validation: Sequence[int], log_path: Path
) -> tuple[Pass, dict[str, Any]]:
    """A server started with `args`: EIR's setup sends the ids of the indices
    in `validation`, then one training pass in batches of 64. The pass, and
    the "making" object (the engine and its counters) of the server's status
    after it."""
    with ServerProcess("--port", "0", *args, log_path=log_path) as server:
        send_validation_ids(server.url, [f"sample_{k}" for k in validation])
        got = training_pass(server.url, batch_size=64)
        making = server.status()["making"]
    return got, making


@dataclass
class Kill:
    """The worker process killed in a pass, and when (monotonic seconds)."""

    pid: int
    at: float


def pass_killing_a_worker(
    server: ServerProcess, busy_worker: Callable[[], int | None]
) -> tuple[Pass, Kill]:
    """A training pass (batches of 16) in which one worker process is killed
    with SIGKILL: from the 2nd data reply on, the first time `busy_worker()`
    names one (its pid; None while no task is at the workers, when there is
    nothing to lose and nothing to show). The server must outlive it."""
    killed: list[Kill] = []

    def kill_one(batches: int) -> None:
        if batches < 2 or killed:
            return
        pid = busy_worker()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(Kill(pid, time.monotonic()))

    got = training_pass(server.url, batch_size=16, after_batch=kill_one)
    assert killed, "the pass ended before the kill"
    assert server.process.poll() is None, server.log
    return got, killed[0]


def check_remade_pass(got: Pass, num: int, source: Any, log: str) -> None:
    """A pass of `num` samples in which a worker was killed: every sample
    once, the server's `log` without a traceback (it stopped cleanly), and
    the samples re-made after the kill the same bytes as `source` makes (a
    sample is a function of its index; every 37th is compared)."""
    check_exactly_once(got, range(num))
    assert "Traceback" not in log, log
    by_id = got.by_id()
    for k in range(0, num, 37):
        assert by_id[f"sample_{k}"] == source.samples_json([k])[0], k
