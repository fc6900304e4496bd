"""GET /metrics: the server's counters in Prometheus' text format.

`metric_values` turns the streams (streams.py) and the producer's status
(readahead.py) into `Metric`s: plain values, no I/O and no
prometheus_client, so tests check them without sockets. `ServerMetrics`
hands them to prometheus_client at each scrape (a custom collector: the
values are read when Prometheus asks, so serving a sample costs nothing
more than the counts the server keeps anyway). prometheus_client is an
extra (`pip install 'eirstream[metrics]'`); without it the server runs and
answers /metrics with 501.

Per stream, the label `stream` is the stream's name; there is never a
label per connection. docs/metrics.md lists every metric and its meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from eirstream.streams import NamedStream

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError:
    metrics_available = False
    Collector = object  # type: ignore[assignment,misc]
else:
    metrics_available = True

PREFIX = "eirstream_"
# What generate_latest writes: Prometheus' text format 0.0.4. (Newer
# prometheus_client releases set CONTENT_TYPE_LATEST to version=1.0.0, a
# format with name escaping that a scraper asks for in its Accept header;
# their own server sends it only then, and 0.0.4 to everyone else.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family: `values` maps label values (in `labels`' order)
    to a number, or for a histogram to (cumulative buckets, sum)."""

    name: str  # without PREFIX; a counter's without "_total"
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], Any]


# name, kind, help, and how to read it from (stream status, counts)
_PER_STREAM: tuple[tuple[str, str, str, Any], ...] = (
    (
        "samples_served",
        "counter",
        "Samples sent in data replies",
        lambda s, c: s["samples_served_total"],
    ),
    (
        "bytes_served",
        "counter",
        "Bytes of data replies",
        lambda s, c: c.bytes_served,
    ),
    ("requests", "counter", "Requests received", lambda s, c: c.requests),
    ("errors", "counter", "Error replies sent", lambda s, c: c.errors),
    ("rewinds", "counter", "Rewinds to epoch 0's start", lambda s, c: s["rewinds"]),
    ("epoch", "gauge", "The cursor's epoch, from 0", lambda s, c: s["epoch"]),
    (
        "position",
        "gauge",
        "The cursor's position within its epoch",
        lambda s, c: s["current_position"],
    ),
    (
        "open_connections",
        "gauge",
        "WebSocket connections open",
        lambda s, c: s["open_connections"],
    ),
    (
        "validation_ids",
        "gauge",
        "Validation ids kept out of training (those this stream produces)",
        lambda s, c: s["validation_ids"],
    ),
)

# name, kind, help, key of the producer's status
_ENGINE: tuple[tuple[str, str, str, str], ...] = (
    (
        "read_ahead_samples",
        "gauge",
        "Samples made or in the making ahead of the streams",
        "samples_ahead",
    ),
    ("read_ahead_bytes", "gauge", "Bytes of made samples held", "bytes_held"),
    ("tasks_made", "counter", "Tasks (units of work) made", "tasks_made"),
    ("tasks_failed", "counter", "Tasks lost at the engine", "tasks_failed"),
    ("tasks_remade", "counter", "Lost tasks queued to be made again", "tasks_remade"),
    ("samples_made", "counter", "Samples made", "samples_made"),
    ("samples_failed", "counter", "Samples the source raised for", "samples_failed"),
    ("worker_restarts", "counter", "Local worker pools replaced", "pool_restarts"),
    ("workers", "gauge", "Workers making samples", "workers"),
)


def metric_values(
    streams: Iterable[NamedStream],
    making: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> list[Metric]:
    """Every metric: per stream from `streams`, for the engine from
    `making` (the producer's status), for the --state file from `state`
    (its status; None: no --state)."""
    streams = list(streams)
    states = [(named, named.stream.status()) for named in streams]
    out = [
        Metric(
            name,
            kind,
            text,
            ("stream",),
            {(named.name,): read(status, named.counts) for named, status in states},
        )
        for name, kind, text, read in _PER_STREAM
    ]
    out.append(
        Metric(
            "get_data_wait_seconds",
            "histogram",
            "Seconds from a getData's arrival to its reply being ready",
            ("stream",),
            {
                (named.name,): (
                    named.counts.waits.cumulative(),
                    named.counts.waits.total,
                )
                for named in streams
            },
        )
    )
    out.extend(
        Metric(name, kind, text, (), {(): making[key]})
        for name, kind, text, key in _ENGINE
    )
    out.append(Metric("streams", "gauge", "Named streams kept", (), {(): len(streams)}))
    out.extend(_resumed(states, state))
    return out


def _resumed(
    states: list[tuple[NamedStream, dict[str, Any]]], state: dict[str, Any] | None
) -> list[Metric]:
    """Where each resumed stream resumed from, and the state file's writes."""
    if state is None:
        return []
    resumed = {
        (named.name,): status["resumed"]
        for named, status in states
        if status["resumed"]
    }
    return [
        Metric(
            "resumed_epoch",
            "gauge",
            "The epoch a stream resumed in from the --state file",
            ("stream",),
            {key: value["epoch"] for key, value in resumed.items()},
        ),
        Metric(
            "resumed_samples",
            "gauge",
            "Samples of that epoch sent before the stream resumed",
            ("stream",),
            {key: value["served"] for key, value in resumed.items()},
        ),
        Metric(
            "state_updates",
            "counter",
            "Updates written to the --state file",
            (),
            {(): state["updates"]},
        ),
        Metric(
            "state_write_failures",
            "counter",
            "Failed writes to the --state file (it keeps its last good state)",
            (),
            {(): state["failed_writes"]},
        ),
    ]


class ServerMetrics(Collector):
    """The server's metrics for prometheus_client, read at each scrape."""

    def __init__(
        self,
        streams: Iterable[NamedStream],
        making: Callable[[], dict[str, Any]],
        state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """`streams`: the server's streams (read anew at each scrape);
        `making`: the producer's status; `state`: the --state file's."""
        self.streams = streams
        self.making = making
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Any]:
        state = None if self.state is None else self.state()
        for metric in metric_values(self.streams, self.making(), state):
            yield family(metric)

    def exposition(self) -> tuple[bytes, str]:
        """The body of a /metrics reply, and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE


def family(metric: Metric) -> Any:
    """`metric` as a prometheus_client metric family."""
    name, labels = PREFIX + metric.name, list(metric.labels)
    if metric.kind == "histogram":
        histogram = HistogramMetricFamily(name, metric.help, labels=labels)
        for key, (buckets, total) in metric.values.items():
            histogram.add_metric(list(key), buckets, total)
        return histogram
    kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
    made = kind(name, metric.help, labels=labels)
    for key, value in metric.values.items():
        made.add_metric(list(key), value)
    return made
