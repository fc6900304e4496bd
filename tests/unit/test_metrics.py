"""The metrics (eirstream/metrics.py) without a socket: `metric_values` of
named streams after known takes and counts, and the Prometheus text that
`ServerMetrics` makes of them, parsed back by prometheus_client's parser.
"""

from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.streams import ids

from data_simulator import SimulatedHealthData
from eirstream.engines import ThreadEngine
from eirstream.metrics import PREFIX, Metric, ServerMetrics, metric_values
from eirstream.readahead import SampleProducer
from eirstream.stream import SampleStream
from eirstream.streams import WAIT_BUCKETS, Streams

# A producer's status, each counter a number of its own.
MAKING: dict[str, Any] = {
    "engine": "processes",
    "workers": 3,
    "tasks_in_flight": 2,
    "tasks_queued": 5,
    "read_ahead": 1024,
    "task_size": 64,
    "samples_ahead": 700,
    "samples_held": 900,
    "bytes_held": 123_456,
    "samples_made": 4_321,
    "samples_failed": 7,
    "samples_served_from_read_ahead": 4_000,
    "tasks_made": 68,
    "tasks_failed": 4,
    "tasks_remade": 3,
    "pool_restarts": 1,
    "worker_pids": [11, 12, 13],
}

# metric -> what the producer's status calls it (docs: the engine's metrics)
ENGINE_METRICS = {
    "read_ahead_samples": "samples_ahead",
    "read_ahead_bytes": "bytes_held",
    "tasks_made": "tasks_made",
    "tasks_failed": "tasks_failed",
    "tasks_remade": "tasks_remade",
    "samples_made": "samples_made",
    "samples_failed": "samples_failed",
    "worker_restarts": "pool_restarts",
    "workers": "workers",
}


def three_streams() -> Streams:
    """'default': two connections, 15 samples; 'run-b': validation ids, a
    rewind, 132 samples into its second epoch, one connection; 'idle':
    opened, nothing since. Their counts and waits are set by hand."""
    streams = Streams(lambda name: SampleStream(100, epochs=None, name=name))
    default = streams.open("default")
    default.stream.connect("c1")
    default.stream.connect("c2")
    default.stream.take("c1", 10)
    default.stream.take("c2", 5)
    default.counts.requests, default.counts.errors = 7, 1
    default.counts.bytes_served = 12_345
    for seconds in (0.002, 0.1, 0.3):
        default.counts.waits.observe(seconds)

    run_b = streams.open("run-b")
    stream = run_b.stream
    stream.set_validation_ids(ids(1, 2, 3, 500))  # 500: not one of its samples
    stream.connect("d")
    stream.take("d", 30)
    stream.reset("d")  # alone: a rewind
    stream.take("d", 97)  # the whole first epoch, less 1, 2 and 3
    stream.take("d", 5)  # 0, 4, 5, 6, 7 of the second
    run_b.counts.requests, run_b.counts.bytes_served = 3, 999
    run_b.counts.waits.observe(0.05)

    streams.open("idle")
    return streams


# stream -> metric -> value, from what three_streams did
EXPECTED = {
    "default": {
        "samples_served": 15,
        "bytes_served": 12_345,
        "requests": 7,
        "errors": 1,
        "rewinds": 0,
        "epoch": 0,
        "position": 15,
        "open_connections": 2,
        "validation_ids": 0,
    },
    "run-b": {
        "samples_served": 132,
        "bytes_served": 999,
        "requests": 3,
        "errors": 0,
        "rewinds": 1,
        "epoch": 1,
        "position": 8,
        "open_connections": 1,
        "validation_ids": 3,
    },
    "idle": dict.fromkeys(
        (
            "samples_served",
            "bytes_served",
            "requests",
            "errors",
            "rewinds",
            "epoch",
            "position",
            "open_connections",
            "validation_ids",
        ),
        0,
    ),
}
WAITS = {"default": [0.002, 0.1, 0.3], "run-b": [0.05], "idle": []}


def by_name(metrics: list[Metric]) -> dict[str, Metric]:
    return {metric.name: metric for metric in metrics}


def test_every_per_stream_metric_has_one_right_value_per_stream() -> None:
    metrics = by_name(metric_values(three_streams(), MAKING))
    for name in EXPECTED["default"]:
        metric = metrics[name]
        assert metric.labels == ("stream",), name
        values = {key[0]: value for key, value in metric.values.items()}
        assert len(metric.values) == 3, (name, metric.values)
        assert values == {stream: EXPECTED[stream][name] for stream in EXPECTED}, name
    kinds = {name: metrics[name].kind for name in EXPECTED["default"]}
    assert kinds == {
        "samples_served": "counter",
        "bytes_served": "counter",
        "requests": "counter",
        "errors": "counter",
        "rewinds": "counter",
        "epoch": "gauge",
        "position": "gauge",
        "open_connections": "gauge",
        "validation_ids": "gauge",
    }


def test_the_wait_histogram_has_each_stream_s_buckets_and_sum() -> None:
    metric = by_name(metric_values(three_streams(), MAKING))["get_data_wait_seconds"]
    assert metric.kind == "histogram" and metric.labels == ("stream",)
    assert set(metric.values) == {("default",), ("run-b",), ("idle",)}
    for stream, waits in WAITS.items():
        buckets, total = metric.values[(stream,)]
        expected = [
            (str(bound), sum(1 for w in waits if w <= bound)) for bound in WAIT_BUCKETS
        ]
        assert buckets == [*expected, ("+Inf", len(waits))], stream
        assert total == pytest.approx(sum(waits)), stream


def test_engine_metrics_come_from_the_producer_s_status() -> None:
    metrics = by_name(metric_values(three_streams(), MAKING))
    for name, key in ENGINE_METRICS.items():
        assert metrics[name].labels == (), name
        assert metrics[name].values == {(): MAKING[key]}, name
    assert metrics["streams"].values == {(): 3} and metrics["streams"].labels == ()
    counters = {"tasks_made", "tasks_failed", "tasks_remade", "samples_made"}
    counters |= {"samples_failed", "worker_restarts"}
    assert {n for n in ENGINE_METRICS if metrics[n].kind == "counter"} == counters


def test_metric_names_are_distinct_and_labelled_by_stream_or_not_at_all() -> None:
    metrics = metric_values(three_streams(), MAKING)
    names = [metric.name for metric in metrics]
    assert not [name for name, n in Counter(names).items() if n > 1], names
    assert {metric.labels for metric in metrics} == {("stream",), ()}
    assert {metric.kind for metric in metrics} == {"counter", "gauge", "histogram"}
    for metric in metrics:
        assert metric.name.islower() and not metric.name.endswith("_total"), metric
        assert all(len(key) == len(metric.labels) for key in metric.values), metric
    expected = {*EXPECTED["default"], *ENGINE_METRICS, "get_data_wait_seconds"}
    assert set(names) == expected | {"streams"}


def test_a_real_producer_s_status_has_every_engine_metric() -> None:
    source = SimulatedHealthData(seed=0)
    producer = SampleProducer(ThreadEngine(source))
    try:
        making = producer.status()
    finally:
        producer.close()
    metrics = by_name(metric_values(three_streams(), making))
    for name, key in ENGINE_METRICS.items():
        assert metrics[name].values == {(): making[key]}, name


def test_no_streams_gives_engine_metrics_and_empty_families() -> None:
    metrics = by_name(metric_values([], MAKING))
    assert metrics["samples_served"].values == {}
    assert metrics["get_data_wait_seconds"].values == {}
    assert metrics["streams"].values == {(): 0}
    assert metrics["workers"].values == {(): 3}


# -- the exposition, parsed back --------------------------------------------------
def samples_of(metrics: list[Metric]) -> dict[tuple[str, frozenset], float]:
    """The samples Prometheus' text format should hold for `metrics`: (name,
    labels) -> value."""
    out: dict[tuple[str, frozenset], float] = {}
    for metric in metrics:
        name = PREFIX + metric.name
        for key, value in metric.values.items():
            labels = tuple(zip(metric.labels, key, strict=True))
            if metric.kind == "histogram":
                buckets, total = value
                for bound, count in buckets:
                    out[(name + "_bucket", frozenset((*labels, ("le", bound))))] = count
                out[(name + "_count", frozenset(labels))] = buckets[-1][1]
                out[(name + "_sum", frozenset(labels))] = total
            else:
                suffix = "_total" if metric.kind == "counter" else ""
                out[(name + suffix, frozenset(labels))] = value
    return out


def parsed(text: str) -> tuple[dict[tuple[str, frozenset], float], dict[str, str]]:
    """Samples and each family's type, as prometheus_client's parser reads
    `text`."""
    samples: dict[tuple[str, frozenset], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key  # each sample once
            samples[key] = sample.value
    return samples, types


def test_the_exposition_parses_back_to_the_same_values() -> None:
    streams = three_streams()
    exporter = ServerMetrics(streams, lambda: MAKING)
    body, content_type = exporter.exposition()
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    samples, types = parsed(body.decode())
    metrics = metric_values(streams, MAKING)
    assert samples == samples_of(metrics)
    assert types == {PREFIX + metric.name: metric.kind for metric in metrics}
    # Spot checks, in Prometheus' own names.
    assert samples[("eirstream_samples_served_total", frozenset({("stream", "run-b")}))]
    assert samples[("eirstream_position", frozenset({("stream", "default")}))] == 15
    le = frozenset({("stream", "default"), ("le", "0.1")})
    assert samples[("eirstream_get_data_wait_seconds_bucket", le)] == 2
    assert samples[("eirstream_read_ahead_bytes", frozenset())] == 123_456


def test_each_scrape_reads_the_streams_anew() -> None:
    streams = three_streams()
    making = dict(MAKING)
    exporter = ServerMetrics(streams, lambda: making)
    before, _ = parsed(exporter.exposition()[0].decode())
    streams["idle"].stream.connect("late")
    streams["idle"].stream.take("late", 9)
    streams.open("new-run")
    making["tasks_made"] = 99
    after, _ = parsed(exporter.exposition()[0].decode())
    served = ("eirstream_samples_served_total", frozenset({("stream", "idle")}))
    assert before[served] == 0 and after[served] == 9
    assert after[("eirstream_streams", frozenset())] == 4
    assert after[("eirstream_tasks_made_total", frozenset())] == 99
    new = ("eirstream_open_connections", frozenset({("stream", "new-run")}))
    assert new not in before and after[new] == 0
