"""GET /metrics over a real socket: Prometheus' text format that promtool
accepts, values that match what the clients were sent, the token, and a
server without prometheus_client (metrics off, streaming on).

Replies are read as sent (support/http.py), every header kept.
"""

import http.client
import json
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support.eir_like_client import EirLikeClient
from support.http import HttpReply, http_get
from support.prometheus import check_metrics
from support.required import needs_prometheus
from support.server_process import ServerProcess
from support.servers import ServerThread, running_server
from support.waiting import HANG

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
METRICS_OFF = "pip install 'eirstream[metrics]'"


def samples(body: bytes) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, as prometheus_client's parser reads it."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def of(stream: str) -> frozenset:
    return frozenset({("stream", stream)})


def scrape(port: int) -> HttpReply:
    reply = http_get(port, "/metrics")
    assert reply.status == 200, reply
    return reply


def data_bytes(client: EirLikeClient, batch_size: int) -> int:
    """One getData of `batch_size`, answered with data: the reply's bytes."""
    client.send({"type": "getData", "payload": {"batch_size": batch_size}})
    client.ws.settimeout(HANG)
    text = client.ws.recv()
    reply = json.loads(text)
    assert reply["type"] == "data" and len(reply["payload"]) == batch_size, reply
    return len(text.encode())


def status_of(client: EirLikeClient) -> dict:
    return client.request({"type": "status", "payload": {}})[0]["payload"]


def known_traffic(server: ServerThread) -> dict[str, dict]:
    """Known requests on streams 'alpha' and 'beta'; each stream's status
    (asked last) and what its client counted."""
    alpha = EirLikeClient(f"{server.url}/alpha")
    assert alpha.request({"type": "getInfo"})[0]["type"] == "info"
    alpha_bytes = sum(data_bytes(alpha, 10) for _ in range(3))
    bad_size = {"type": "getData", "payload": {"batch_size": 0}}
    assert alpha.request(bad_size)[0]["type"] == "error"  # a request, an error
    assert alpha.request({"type": "nope"})[0]["type"] == "error"  # an error only
    beta = EirLikeClient(f"{server.url}/beta")
    held_out = {"validation_ids": ["sample_1", "sample_2"]}
    beta.request({"type": "setValidationIds", "payload": held_out})
    beta_bytes = data_bytes(beta, 7) + data_bytes(beta, 7)
    assert [r["type"] for r in beta.request({"type": "reset"}, 2)] == [
        "resetConfirmation",
        "reset",
    ]
    beta_bytes += data_bytes(beta, 5)  # 0, 3, 4, 5, 6: position 7
    out = {
        "alpha": {
            "status": status_of(alpha),
            "requests": 6,  # getInfo, 3 getData, the bad getData, status
            "errors": 2,
            "bytes": alpha_bytes,
            "data_replies": 3,
            "samples": 30,
            "position": 30,
        },
        "beta": {
            "status": status_of(beta),
            "requests": 6,  # setValidationIds, 3 getData, reset, status
            "errors": 0,
            "bytes": beta_bytes,
            "data_replies": 3,
            "samples": 19,
            "position": 7,
        },
    }
    alpha.close()
    beta.close()
    return out


def test_metrics_match_what_each_stream_was_sent() -> None:
    tools = needs_prometheus()  # a skip without promtool, or a failure in CI
    with running_server(max_iterations=200) as server:
        port = server.server.port
        sent = known_traffic(server)
        reply = scrape(port)
        making = server.call(server.server.producer.status)
    assert TEXT_FORMAT in reply.header("Content-Type"), reply.headers
    checked = check_metrics(tools, reply.body.decode())
    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    assert not checked.stdout.strip() and not checked.stderr.strip(), checked
    got = samples(reply.body)
    for name, want in sent.items():
        status = want["status"]
        assert status["stream"] == name
        assert status["samples_served_total"] == want["samples"]
        assert status["current_position"] == want["position"]
        expected = {
            "eirstream_samples_served_total": want["samples"],
            "eirstream_bytes_served_total": want["bytes"],
            "eirstream_requests_total": want["requests"],
            "eirstream_errors_total": want["errors"],
            "eirstream_rewinds_total": status["rewinds"],
            "eirstream_epoch": status["epoch"],
            "eirstream_position": status["current_position"],
            "eirstream_validation_ids": status["validation_ids"],
            "eirstream_get_data_wait_seconds_count": want["data_replies"],
        }
        assert {metric: got[(metric, of(name))] for metric in expected} == expected
        assert got[("eirstream_get_data_wait_seconds_sum", of(name))] > 0
        inf = frozenset({("stream", name), ("le", "+Inf")})
        assert got[("eirstream_get_data_wait_seconds_bucket", inf)] == 3
    assert sent["beta"]["status"]["rewinds"] == 1
    assert sent["beta"]["status"]["validation_ids"] == 2
    for metric in ("samples_served_total", "requests_total", "position"):
        assert got[(f"eirstream_{metric}", of("default"))] == 0
    assert got[("eirstream_streams", frozenset())] == 3
    assert got[("eirstream_tasks_made_total", frozenset())] <= making["tasks_made"]
    assert got[("eirstream_workers", frozenset())] == making["workers"] == 1


def test_open_connections_are_counted_per_stream() -> None:
    with running_server(max_iterations=100) as server:
        clients = [EirLikeClient(f"{server.url}/two") for _ in range(2)]
        clients.append(EirLikeClient(server.url))
        got = samples(scrape(server.server.port).body)
        for client in clients:
            client.close()
    assert got[("eirstream_open_connections", of("two"))] == 2
    assert got[("eirstream_open_connections", of("default"))] == 1


def test_the_metrics_reply_has_one_content_type_and_length() -> None:
    with running_server(max_iterations=10) as server:
        port = server.server.port
        reply = scrape(port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
        try:
            connection.request("GET", "/metrics")
            body = connection.getresponse().read()
        finally:
            connection.close()
    assert reply.header("Content-Type") == [TEXT_FORMAT], reply.headers
    assert reply.header("Content-Length") == [str(len(reply.body))], reply.headers
    assert body == reply.body  # what a standard client reads


def test_metrics_need_the_token_when_the_server_has_one() -> None:
    with running_server(max_iterations=10, token="s3cret-t0ken") as server:
        port = server.server.port
        refused = [
            http_get(port, "/metrics"),
            http_get(port, "/metrics", {"Authorization": "Bearer wrong"}),
            http_get(port, "/metrics?token=wrong"),
            http_get(port, "/metrics", {"Authorization": "Basic s3cret-t0ken"}),
        ]
        allowed = [
            http_get(port, "/metrics", {"Authorization": "Bearer s3cret-t0ken"}),
            http_get(port, "/metrics?token=s3cret-t0ken"),
        ]
        healthz = http_get(port, "/healthz")
    for reply in refused:
        assert reply.status == 401, reply
        assert reply.header("WWW-Authenticate") == ["Bearer"], reply.headers
        assert b"Authorization: Bearer" in reply.body and b"s3cret" not in reply.body
    for reply in allowed:
        assert reply.status == 200, reply
        assert b"eirstream_samples_served_total" in reply.body
    assert healthz.status == 200 and json.loads(healthz.body)["status"] == "ok"


def blocked_prometheus_client(folder: Path) -> dict[str, str]:
    """An environment in which `import prometheus_client` fails: a package
    of that name first on PYTHONPATH whose import raises ImportError."""
    package = folder / "prometheus_client"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ImportError("prometheus_client is blocked by the test")\n'
    )
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def test_without_prometheus_client_metrics_are_off_and_streaming_works(
    tmp_path: Path,
) -> None:
    args = ("--port", "0", "--workers", "0", "--max-iterations", "50")
    with ServerProcess(*args, env=blocked_prometheus_client(tmp_path)) as server:
        reply = http_get(server.port, "/metrics")
        client = EirLikeClient(f"{server.url}/run-1")
        client.validation_probe()
        samples_got = client.training_pass(8)
        client.close()
        healthz = http_get(server.port, "/healthz")
        server.stop()
    assert reply.status == 501, reply
    assert METRICS_OFF.encode() in reply.body, reply
    assert len(samples_got) == 50
    assert healthz.status == 200
    said = [line for line in server.lines if METRICS_OFF in line]
    assert len(said) == 1 and " INFO " in said[0], server.log
    assert "Traceback" not in server.log, server.log
