"""Access control: the ?token= check, TLS (wss://), and the warning when exposed."""

import hmac
import http.client
import json
import logging
import shutil
import ssl
import urllib.parse
from pathlib import Path

import pytest
import websocket
from support.commands import run, run_streamer
from support.eir_like_client import EirLikeClient
from support.server_process import ServerProcess
from support.servers import running_server
from support.waiting import HANG

import eirstream.server

# Characters that need URL-encoding, to check the token survives the round trip.
TOKEN = "k7Q-fixture+tok/en=&é"
ENCODED = urllib.parse.quote(TOKEN, safe="")
HANDSHAKE = json.dumps({"type": "handshake", "version": "1.0", "worker_id": 0})


def refused_status(url: str, **options) -> int:
    """The HTTP status of a refused WebSocket upgrade."""
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=HANG, **options)
    return refused.value.status_code


def all_forms(secret: str) -> list[str]:
    return [
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
    ]


def test_token_is_required_before_the_upgrade(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # websockets' own request logs included
    compared: list[tuple[bytes, bytes]] = []
    constant_time_compare = hmac.compare_digest

    def recording_compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time_compare(a, b)

    monkeypatch.setattr(
        eirstream.server.hmac, "compare_digest", recording_compare_digest
    )
    with running_server(max_iterations=50, token=TOKEN) as server:
        base = server.url
        for url in [
            base,
            f"{base}?token=",
            f"{base}?token=wrong",
            f"{base}?token={ENCODED}x",
            f"{base}?token={ENCODED[:-1]}",
            f"{base}?tok={ENCODED}",
            f"{base}?TOKEN={ENCODED}",
        ]:
            assert refused_status(url) == 401, url
        assert server.status()["open_connections"] == 0
        assert server.call(lambda: server.server.connections_total) == 0

        client = EirLikeClient(f"{base}?token={ENCODED}")
        client.validation_probe()
        assert len(client.fetch_batch(5)) == 5
        client.close()
        # Other query parameters may come along.
        client = EirLikeClient(f"{base}?run=3&token={ENCODED}")
        client.validation_probe()
        client.close()
    assert (TOKEN.encode(), TOKEN.encode()) in compared
    assert (b"wrong", TOKEN.encode()) in compared
    rejections = [
        r
        for r in caplog.records
        if r.name.startswith("eirstream") and "401" in r.getMessage()
    ]
    assert len(rejections) == 7
    assert "<token>" in caplog.text  # websockets' request lines, redacted
    for form in all_forms(TOKEN):
        assert form not in caplog.text


def test_health_needs_no_token_and_reveals_nothing_secret() -> None:
    with running_server(max_iterations=50, token=TOKEN) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.server.port)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        body = response.read().decode()
        connection.close()
        assert response.status == 200
        assert json.loads(body)["status"] == "ok"
        for form in all_forms(TOKEN):
            assert form not in body


def test_token_from_environment_never_appears_in_the_log() -> None:
    secret = "env-secret-4b1d"
    with ServerProcess(
        "--port",
        "0",
        "--workers",
        "0",
        "--log-level",
        "debug",
        env={"EIR_STREAM_TOKEN": secret},
    ) as server:
        assert "listening" in server.wait_for("?token=<your token>")
        assert refused_status(server.url) == 401
        assert refused_status(f"{server.url}?token=nope") == 401
        client = EirLikeClient(f"{server.url}?token={secret}")
        client.validation_probe()
        client.close()
        server.wait_for("closed (code 1000)")
        server.stop()
    assert "rejected, missing or wrong ?token=" in server.log
    assert "<token>" in server.log  # debug logs show the request, redacted
    assert secret not in server.log


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", "t0k", False), ("127.0.0.1", None, False)],
)
def test_binding_beyond_localhost_without_a_token_warns(
    host: str, token: str | None, warned: bool
) -> None:
    args = ["--host", host, "--port", "0", "--workers", "0"]
    if token:
        args += ["--token", token]
    with ServerProcess(*args) as server:
        url = server.url + (f"?token={token}" if token else "")
        client = EirLikeClient(url)  # via 127.0.0.1 only
        client.validation_probe()
        client.close()
        warnings = [line for line in server.lines if " WARNING " in line]
    if warned:
        assert len(warnings) == 1, warnings
        assert "0.0.0.0" in warnings[0] and "--token" in warnings[0]
    else:
        assert warnings == []


# -- TLS ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            key,
            "-out",
            cert,
        ]
    )
    assert made.returncode == 0, made.stderr
    return cert, key


def test_tls_serves_wss_to_a_client_that_trusts_the_certificate(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    with running_server(
        max_iterations=50, certfile=str(cert), keyfile=str(key), token=TOKEN
    ) as server:
        assert server.url.startswith("wss://")
        url = f"{server.url}?token={ENCODED}"
        # Without trusting the certificate, verification fails.
        with pytest.raises(ssl.SSLCertVerificationError):
            websocket.create_connection(url, timeout=HANG)
        # The way to give EIR's websocket-client a CA without changing EIR.
        monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", str(cert))
        client = EirLikeClient(url)
        client.validation_probe()
        assert len(client.fetch_batch(4)) == 4
        client.close()
        monkeypatch.delenv("WEBSOCKET_CLIENT_CA_BUNDLE")
        # The token is still checked under TLS.
        assert refused_status(server.url, sslopt={"ca_certs": str(cert)}) == 401


def test_tls_serves_an_unverifying_client_and_a_plain_one_harms_nobody(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    with running_server(max_iterations=50, certfile=str(cert), keyfile=str(key)) as s:
        ws = websocket.create_connection(
            s.url, timeout=HANG, sslopt={"cert_reqs": ssl.CERT_NONE}
        )
        ws.send(HANDSHAKE)
        assert json.loads(ws.recv()) == {"type": "handshake", "version": "1.0"}
        ws.send('{"type": "getInfo"}')
        assert json.loads(ws.recv())["type"] == "info"
        ws.send('{"type": "getData", "payload": {"batch_size": 2}}')
        assert len(json.loads(ws.recv())["payload"]) == 2
        # A plain ws:// client on the TLS port fails, and harms nobody.
        with pytest.raises(Exception):  # noqa: B017 - any failure to connect
            websocket.create_connection(s.url.replace("wss://", "ws://"), timeout=5)
        ws.send('{"type": "getData", "payload": {"batch_size": 2}}')
        assert len(json.loads(ws.recv())["payload"]) == 2
        ws.close()
        context = ssl.create_default_context(cafile=str(cert))
        https = http.client.HTTPSConnection(
            "127.0.0.1", s.server.port, context=context, timeout=HANG
        )
        https.request("GET", "/healthz")
        assert https.getresponse().status == 200
        https.close()


def test_unusable_tls_files_are_one_clear_line(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    other_key = tmp_path / "other.pem"
    made = run(["openssl", "genpkey", "-algorithm", "RSA", "-out", other_key])
    assert made.returncode == 0, made.stderr
    cases = [
        (["--certfile", str(tmp_path / "missing.pem")], "missing.pem"),
        (["--certfile", str(cert), "--keyfile", str(other_key)], "other.pem"),
        (["--certfile", str(key)], "key.pem"),  # a key is not a certificate
    ]
    for args, named in cases:
        with ServerProcess(
            "--port", "0", "--workers", "0", *args, wait_listening=False
        ) as server:
            assert server.wait(HANG) == 2, server.log
        assert len(server.lines) == 1, server.log
        assert "--certfile" in server.lines[0] and named in server.lines[0]
        assert "Traceback" not in server.log
    keyless = run_streamer("--keyfile", str(key))
    assert keyless.returncode == 2
    assert "--keyfile needs --certfile" in keyless.stderr
