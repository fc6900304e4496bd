"""The fast generator and the worker pipeline change speed, never content.

* The fast generator (single_sample_simulation.py) against the plain `randint`
  reference (bench/plain_simulation.py): two-sample tests, field by field,
  over a few thousand samples each. Every check fails with probability
  ALPHA (1e-6 per check) when both draw from the same model; two mutants of
  the fast generator (a step range one value too narrow; fitness rounded
  down) show that the same checks do catch small model errors.
* Determinism: sample k is a function of (seed, k) alone, in this process,
  in another process with another hash seed, and as JSON text.
* The server: a sample's bytes do not depend on the number of worker
  processes or on batch sizes; samples made ahead of a reset are still right
  after the rewind; generation happens in the workers, not the event loop; a
  killed worker is replaced without losing a request; a source that fails
  gets an error reply and the server keeps serving.
"""

import asyncio
import hashlib
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import websocket
from conftest import ROOT, running_server
from plain_simulation import plain_simulate_sample

import single_sample_simulation
from data_simulator import SampleStream, SimulatedHealthData
from simulation_streamer import LocalEngine, SampleProducer
from single_sample_simulation import simulate_sample

N = 5000  # samples per generator in the distribution tests
ALPHA = 1e-6  # false-alarm probability of each statistical check, at most
Z = statistics.NormalDist().inv_cdf(1 - ALPHA / 2)  # two-sided, for means
Z_UPPER = statistics.NormalDist().inv_cdf(1 - ALPHA)  # one-sided, for chi-square

PROMPT = re.compile(
    r"<START> \|Time of HR monitoring start: (?P<hour>\d\d):(?P<minute>\d\d)\|"
    r" \|Biomarkers\| Cortisol_Morning: (?P<cortisol_morning>\d+) -"
    r" Cortisol_Evening: (?P<cortisol_evening>\d+) -"
    r" Sleep_Quality: (?P<sleep_quality>\d+) -"
    r" \|Demographics\| Age: (?P<age>\d+) -"
    r" Fitness_Score: (?P<fitness>\d+\.\d) -"
    r" Activity: (?P<activity>sedentary|light|moderate|vigorous) -"
)
FIELDS = (
    "hour",
    "minute",
    "cortisol_morning",
    "cortisol_evening",
    "sleep_quality",
    "age",
    "fitness",
    "activity",
)

Generator = Callable[[random.Random, int], tuple[str, str]]


# -- statistics --------------------------------------------------------------------
def chi_square_critical(dof: int) -> float:
    """Upper ALPHA quantile of chi-square(dof) by the Wilson-Hilferty
    approximation; checked by numerical integration to exceed no more than
    ALPHA of the distribution for dof 1 ... 60 (it errs on the safe side)."""
    h = 2 / (9 * dof)
    return dof * (1 - h + Z_UPPER * math.sqrt(h)) ** 3


def homogeneity(a: Iterable[object], b: Iterable[object]) -> tuple[float, int]:
    """Two-sample chi-square statistic of two categorical samples, and its dof.

    Categories expected fewer than 5 times in either sample are pooled.
    """
    count_a, count_b = Counter(a), Counter(b)
    n_a, n_b = sum(count_a.values()), sum(count_b.values())
    cells: list[tuple[int, int]] = []
    pool_a = pool_b = 0
    for category in sorted(set(count_a) | set(count_b), key=str):
        x, y = count_a[category], count_b[category]
        total = x + y
        if min(total * n_a, total * n_b) / (n_a + n_b) < 5:
            pool_a, pool_b = pool_a + x, pool_b + y
        else:
            cells.append((x, y))
    if pool_a + pool_b:
        cells.append((pool_a, pool_b))
    chi2 = 0.0
    for x, y in cells:
        total = x + y
        for observed, n in ((x, n_a), (y, n_b)):
            expected = total * n / (n_a + n_b)
            chi2 += (observed - expected) ** 2 / expected
    return chi2, len(cells) - 1


def same_distribution(a: list[object], b: list[object], what: str) -> list[str]:
    chi2, dof = homogeneity(a, b)
    limit = chi_square_critical(max(dof, 1))
    if chi2 > limit:
        return [f"{what}: chi-square {chi2:.1f} with {dof} dof, limit {limit:.1f}"]
    return []


def same_mean(a: list[float], b: list[float], what: str) -> list[str]:
    se = math.hypot(
        statistics.stdev(a) / math.sqrt(len(a)), statistics.stdev(b) / math.sqrt(len(b))
    )
    diff = statistics.fmean(a) - statistics.fmean(b)
    if abs(diff) > Z * se:
        return [f"{what}: means differ by {diff:+.3f}, allowed ±{Z * se:.3f}"]
    return []


# -- samples -----------------------------------------------------------------------
def draw(generator: Generator, seed: str, n: int = N) -> list[tuple[dict, list[int]]]:
    """n (prompt fields, readings) pairs, one RNG per index as the server seeds."""
    out = []
    for index in range(n):
        prompt, trace = generator(random.Random(f"{seed}:{index}"), 64)
        match = PROMPT.fullmatch(prompt)
        assert match is not None, prompt
        out.append((match.groupdict(), [int(t) for t in trace.split(" ")]))
    return out


def compare(fast: list[tuple[dict, list[int]]], plain: list[tuple[dict, list[int]]]):
    """Every check of fast against plain; the list of those that failed."""
    failures: list[str] = []
    for name in FIELDS:
        a, b = [p[name] for p, _ in fast], [p[name] for p, _ in plain]
        # Same values: every value of every field is expected over 25 times
        # in N samples, so one is missing by chance with odds below e**-25.
        if set(a) != set(b):
            failures.append(f"{name}: values {sorted(set(a) ^ set(b))} in one only")
        failures += same_distribution(a, b, name)
    first = ([t[0] for _, t in fast], [t[0] for _, t in plain])
    failures += same_distribution(*first, "first reading")
    failures += same_mean(*first, "first reading")
    # The trace by activity level (the trace's strongest driver) and overall.
    for level in ("sedentary", "light", "moderate", "vigorous"):
        failures += same_mean(
            [statistics.fmean(t) for p, t in fast if p["activity"] == level],
            [statistics.fmean(t) for p, t in plain if p["activity"] == level],
            f"mean trace, {level}",
        )
    failures += same_mean(
        [statistics.fmean(t) for _, t in fast],
        [statistics.fmean(t) for _, t in plain],
        "mean trace",
    )
    failures += same_mean(
        [t[7] for _, t in fast], [t[7] for _, t in plain], "eighth reading"
    )
    failures += same_mean(
        [t.count(200) / len(t) for _, t in fast],
        [t.count(200) / len(t) for _, t in plain],
        "share of readings at 200",
    )
    failures += same_distribution(
        [min(t[-1], 200) // 10 for _, t in fast],
        [min(t[-1], 200) // 10 for _, t in plain],
        "last reading (tens)",
    )
    failures += same_mean(
        [t[-1] for _, t in fast], [t[-1] for _, t in plain], "last reading"
    )
    return failures


@pytest.fixture(scope="module")
def plain_samples() -> list[tuple[dict, list[int]]]:
    return draw(plain_simulate_sample, "plain")


def test_fast_generator_matches_the_plain_reference(plain_samples) -> None:
    fast = draw(simulate_sample, "fast")
    assert compare(fast, plain_samples) == []


def test_the_checks_catch_a_step_range_one_value_short(
    plain_samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    # -5 ... +7 instead of -5 ... +8: every step's mean change drops by 0.5.
    monkeypatch.setattr(single_sample_simulation, "STEP_CHANGE", (-5, 13))
    single_sample_simulation._trace_plan.cache_clear()
    try:
        failures = compare(draw(simulate_sample, "fast"), plain_samples)
    finally:
        monkeypatch.undo()
        single_sample_simulation._trace_plan.cache_clear()
    assert any("mean trace" in f for f in failures), failures
    assert any("200" in f for f in failures), failures


def test_the_checks_catch_fitness_rounded_down(
    plain_samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rounding the uniform score down instead of to nearest: 1.0 at full
    # weight and 10.0 never drawn, every other score as likely as before.
    floored = tuple(
        (f"{t // 10}.{t % 10}", t) for t in (10 + k // 2 for k in range(180))
    )
    monkeypatch.setattr(single_sample_simulation, "_FITNESS", floored)
    failures = compare(draw(simulate_sample, "fast"), plain_samples)
    assert [f for f in failures if f.startswith("fitness: values")], failures


# -- determinism ----------------------------------------------------------------------
def test_sample_is_a_function_of_seed_and_index_only() -> None:
    source = SimulatedHealthData(seed=7, sequence_length=64)
    forwards = source.samples(range(50))
    backwards = SimulatedHealthData(seed=7).samples(range(49, -1, -1))[::-1]
    assert forwards == backwards
    assert [source.sample(i) for i in (3, 3, 3)] == [forwards[3]] * 3
    other_seed = SimulatedHealthData(seed=8).samples(range(50))
    assert all(a != b for a, b in zip(forwards, other_seed, strict=True))
    # The fast JSON is exactly json.dumps of the sample, compact.
    texts = source.samples_json(range(50))
    assert texts == [json.dumps(s, separators=(",", ":")) for s in forwards]


def test_sample_does_not_depend_on_the_process_or_hash_seed() -> None:
    code = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]); "
        "from data_simulator import SimulatedHealthData as S; "
        "t = ''.join(S(seed=3, sequence_length=100).samples_json(range(200))); "
        "print(hashlib.sha256(t.encode()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        digests.add(
            subprocess.run(
                [sys.executable, "-c", code, str(ROOT)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.strip()
        )
    here = "".join(
        SimulatedHealthData(seed=3, sequence_length=100).samples_json(range(200))
    )
    assert digests == {hashlib.sha256(here.encode()).hexdigest()}


@pytest.mark.parametrize("length", [1, 37, 64, 300])
def test_traces_have_the_asked_length_and_valid_tokens(length: int) -> None:
    for index in range(200):
        _, trace = simulate_sample(random.Random(f"t:{index}"), length)
        tokens = [int(t) for t in trace.split(" ")]
        assert len(tokens) == length
        assert all(44 <= t <= 200 and t % 2 == 0 for t in tokens)


# -- the server: bytes per sample id ---------------------------------------------------
def sample_texts(message: str) -> dict[str, str]:
    """The raw JSON text of each sample of a `data` message, by sample id."""
    head = '{"type":"data","payload":['
    assert message.startswith(head) and message.endswith("]}"), message[:80]
    decoder = json.JSONDecoder()
    body = message[len(head) : -2]
    out, position = {}, 0
    while position < len(body):
        sample, end = decoder.raw_decode(body, position)
        out[sample["sample_id"]] = body[position:end]
        position = end + 1  # the comma
    return out


def stream_raw(url: str, batch_sizes: Iterable[int], probe: bool = True) -> dict:
    """EIR's training fetches (heartbeat + getData, one read) with the given
    batch sizes in turn until terminate; raw sample texts by id."""
    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=30)
    try:
        ws.send('{"type":"handshake","version":"1.0","worker_id":0}')
        assert json.loads(ws.recv())["type"] == "handshake"
        if probe:
            ws.send('{"type":"reset"}')
            assert {json.loads(ws.recv())["type"] for _ in range(2)} == {
                "resetConfirmation",
                "reset",
            }
        texts: dict[str, str] = {}
        sizes = list(batch_sizes)
        for fetch in range(100_000):
            size = sizes[fetch % len(sizes)]
            ws.send('{"type":"heartbeat"}')
            ws.send(json.dumps({"type": "getData", "payload": {"batch_size": size}}))
            message = ws.recv()
            while len(message) < 100 and json.loads(message)["type"] == "heartbeat":
                message = ws.recv()
            if len(message) < 100 and json.loads(message)["payload"] == ["terminate"]:
                return texts
            batch = sample_texts(message)
            assert len(batch) <= size
            assert not set(batch) & set(texts), "a sample was served twice"
            texts.update(batch)
        raise AssertionError("no terminate")
    finally:
        ws.close()


def test_sample_bytes_do_not_depend_on_workers_or_batch_sizes() -> None:
    runs = []
    for workers, sizes in ((0, [32]), (2, [1, 7, 100, 3, 250]), (2, [64])):
        with running_server(max_iterations=700, workers=workers) as server:
            runs.append(stream_raw(server.url, sizes))
    expected = {
        f"sample_{i}": text
        for i, text in enumerate(SimulatedHealthData(seed=0).samples_json(range(700)))
    }
    for texts in runs:
        assert texts == expected


def test_samples_made_ahead_of_a_reset_are_right_after_the_rewind() -> None:
    with running_server(max_iterations=2000, workers=2) as server:
        ws = websocket.create_connection(server.url, timeout=30)
        ws.send('{"type":"handshake","version":"1.0"}')
        ws.recv()
        first = {}
        for _ in range(5):  # 160 of 2,000; the read-ahead is 1,024 further
            ws.send('{"type":"getData","payload":{"batch_size":32}}')
            first.update(sample_texts(ws.recv()))
        ready = server.call(server.server.producer.status)
        assert ready["samples_ahead"] >= 512, ready  # made or in the making
        ws.send('{"type":"reset"}')
        ws.recv(), ws.recv()
        ws.close()
        again = stream_raw(server.url, [32, 500])
        status = server.call(server.server.producer.status)
    expected = SimulatedHealthData(seed=0).samples_json(range(2000))
    assert again == {f"sample_{i}": t for i, t in enumerate(expected)}
    assert all(again[k] == v for k, v in first.items())
    assert status["samples_served_from_read_ahead"] > 1000, status
    assert status["engine"] == "processes", status


def test_large_batches_are_made_in_workers_not_in_the_event_loop() -> None:
    with running_server(max_iterations=9000, workers=2) as server:
        texts = stream_raw(server.url, [4096], probe=False)
        status = server.call(server.server.producer.status)
    assert len(texts) == 9000
    assert status["engine"] == "processes"
    assert status["samples_made"] >= 9000
    assert status["read_ahead"] == 2 * 4096  # grown to twice the batch asked for
    assert status["samples_ahead"] <= 2 * status["read_ahead"] + 128


def test_a_killed_worker_is_replaced_and_no_request_is_lost() -> None:
    with running_server(max_iterations=3000, workers=2) as server:
        producer = server.server.producer
        ws = websocket.create_connection(server.url, timeout=30)
        ws.send('{"type":"handshake","version":"1.0"}')
        ws.recv()
        texts: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while len(server.call(producer.status)["worker_pids"]) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        victim = server.call(producer.status)["worker_pids"][0]
        for batch in range(60):
            if batch == 3:
                os.kill(victim, signal.SIGKILL)
            ws.send('{"type":"getData","payload":{"batch_size":50}}')
            message = ws.recv()
            assert message.startswith('{"type":"data"'), message[:200]
            texts.update(sample_texts(message))
        ws.close()
        status = server.call(producer.status)
    assert victim not in status["worker_pids"]
    assert status["pool_restarts"] == 1, status
    expected = SimulatedHealthData(seed=0).samples_json(range(3000))
    assert texts == {f"sample_{i}": t for i, t in enumerate(expected)}


FAILING_SOURCE = """
from data_simulator import SimulatedHealthData


class Failing(SimulatedHealthData):
    def samples_json(self, indices):
        if 13 in indices:
            raise ValueError("index 13 is cursed")
        return super().samples_json(indices)


def make(**settings):
    return Failing(**settings)
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_sample_the_source_cannot_make_costs_only_itself(
    tmp_path: Path, workers: int
) -> None:
    path = tmp_path / "failing_source.py"
    path.write_text(FAILING_SOURCE)
    with running_server(
        max_iterations=100, workers=workers, source=f"{path}:make"
    ) as server:
        ws = websocket.create_connection(server.url, timeout=30)
        ws.send('{"type":"handshake","version":"1.0"}')
        ws.recv()
        replies = []
        for _ in range(4):
            ws.send('{"type":"getData","payload":{"batch_size":10}}')
            replies.append(json.loads(ws.recv()))
        ws.send('{"type":"status"}')
        status = json.loads(ws.recv())["payload"]
        ws.close()
    served = [[s["sample_id"] for s in reply["payload"]] for reply in replies]
    assert served[1] == [f"sample_{i}" for i in range(10, 20) if i != 13]
    assert [ids[0] for ids in served] == [
        "sample_0",
        "sample_10",
        "sample_20",
        "sample_30",
    ]
    assert sum(map(len, served)) == 39
    assert status["generation"]["samples_failed"] == 1


# -- the producer on its own: bounded memory, right bytes -----------------------------
async def test_read_ahead_memory_stays_bounded_across_rewinds_and_late_skips() -> None:
    # Samples made ahead and then never asked for (a rewind moved the stream
    # back, or validation ids set later skip them) must not pin memory.
    source = SimulatedHealthData(seed=4)
    stream = SampleStream.for_source(source)
    spec = "data_simulator:SimulatedHealthData"
    engine = LocalEngine(source, spec, {"seed": 4}, workers=1)
    producer = SampleProducer(engine, read_ahead=256)
    limit = 2 * 256 + SampleProducer.CHUNK
    rng = random.Random(5)
    checked = 0
    try:
        producer.prefetch(stream.peek)
        for round_ in range(15):
            for _ in range(rng.randint(2, 12)):
                indices = stream.take("c", rng.choice([16, 64, 100]))
                message = json.loads((await producer.message(indices))[0])
                assert [s["sample_id"] for s in message["payload"]] == [
                    f"sample_{i}" for i in indices
                ]
                if rng.random() < 0.2:  # spot checks of the content
                    sample = message["payload"][0]
                    assert sample == source.sample(indices[0])
                    checked += 1
                producer.prefetch(stream.peek)
                held = producer.status()["samples_ahead"]
                assert held <= limit, (round_, held)
            if round_ % 3 == 2:  # ids among those made ahead, set after the fact
                start = stream.status()["current_position"]
                stream.set_validation_ids(
                    [f"sample_{i}" for i in range(start, start + 400, 3)]
                )
            stream.reset("c")
            await asyncio.sleep(0.02)  # let the worker deliver
        status = producer.status()
    finally:
        producer.close()
    assert checked > 0
    assert status["samples_made"] > 0
