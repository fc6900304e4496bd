"""Running the server as an operator does: signals, ports, health, paths, logs.

Most tests start `simulation_streamer.py` as a subprocess (`ServerProcess` of
support/server_process.py) and read the URL from its "listening" log line.
"""

import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest
import websocket
from support.commands import run, run_streamer
from support.eir_like_client import EirLikeClient
from support.server_process import ServerProcess
from support.servers import running_server
from support.waiting import HANG, wait_until
from websocket import ABNF

# Process ids, CPU times and memory are read from /proc (Linux).
reads_proc = pytest.mark.skipif(
    not os.path.exists("/proc/self/stat"), reason="reads /proc, which only Linux has"
)

HANDSHAKE = json.dumps({"type": "handshake", "version": "1.0", "worker_id": 0})
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: \S"
)


def read_close(ws: websocket.WebSocket, timeout: float = HANG) -> tuple[int, str]:
    """Skip messages up to the close frame: (code, reason)."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def gone(pid: int) -> bool:
    """True once `pid` has exited (no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def served_total(port: int) -> int:
    """samples_served_total, from /healthz."""
    return json.loads(http_get(port, "/healthz")[2])["samples_served_total"]


def answers_healthz(port: int) -> bool:
    """True once a server on `port` answers /healthz with 200."""
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stream_until_closed(url: str, started: threading.Event, out: dict) -> None:
    """EIR's fetch loop (batch 16) until the server's close frame arrives."""
    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=HANG)
    out["batches"] = 0
    try:
        ws.send(HANDSHAKE)
        ws.recv()
        while True:
            ws.send('{"type": "heartbeat"}')
            ws.send('{"type": "getData", "payload": {"batch_size": 16}}')
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == ABNF.OPCODE_CLOSE:
                    out["close"] = (int.from_bytes(data[:2], "big"), data[2:].decode())
                    return
                if json.loads(data)["type"] == "data":
                    out["batches"] += 1
                    started.set()
                    break
    except Exception as exc:  # reported by the test
        out["exception"] = repr(exc)
    finally:
        ws.shutdown()


@reads_proc
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name
)
def test_signal_closes_every_connection_with_1001_and_exits_0_promptly(
    signum: signal.Signals,
) -> None:
    with ServerProcess("--port", "0", "--workers", "1") as server:
        idle = EirLikeClient(server.url)  # handshake only, then silent
        # A peer that asks for a lot and never reads: the server's sends to it
        # block on a full socket buffer. (Served alone, so that what it got
        # does not depend on how fast the streaming client below is.)
        deaf = EirLikeClient(server.url)
        for _ in range(40):
            deaf.send({"type": "getData", "payload": {"batch_size": 1000}})
        wait_until(
            lambda: served_total(server.port) >= 3000,
            "the peer that never reads to be served 3 of its 40 batches",
        )
        streaming, mid_stream = threading.Event(), {}
        streamer = threading.Thread(
            target=stream_until_closed, args=(server.url, streaming, mid_stream)
        )
        streamer.start()
        assert streaming.wait(HANG)
        workers = server.children()
        assert workers, "expected sample worker processes"

        sent = time.monotonic()
        server.process.send_signal(signum)
        if signum == signal.SIGINT:  # an impatient second Ctrl-C changes nothing
            time.sleep(0.05)
            server.process.send_signal(signum)
        status = server.wait(HANG)  # the deaf peer gets 1 s (see the test below)
        took = time.monotonic() - sent
        print(f"{signum.name}: exit {status} after {took:.2f} s")
        assert status == 0

        assert read_close(idle.ws) == (1001, "server shutting down")
        streamer.join(HANG)
        assert "exception" not in mid_stream, mid_stream
        assert mid_stream["close"] == (1001, "server shutting down")
        assert mid_stream["batches"] > 0
        idle.ws.shutdown()
        deaf.ws.shutdown()

        log = server.log
        assert "Traceback" not in log, log
        summary = [line for line in server.lines if "stopped:" in line]
        assert len(summary) == 1, log
        found = re.search(
            r"stopped: 3 connections served \(3 closed at shutdown\), "
            r"(\d+) samples served",
            summary[0],
        )
        assert found, summary[0]
        assert int(found.group(1)) >= 3000 + 16 * mid_stream["batches"]
        assert all(LOG_LINE.match(line) for line in server.lines), log
        # The sample workers went with the server.
        wait_until(
            lambda: all(gone(pid) for pid in workers),
            f"the sample workers {workers} to exit with the server",
        )
        # Nothing listens on the port any more.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_a_peer_that_never_answers_the_close_costs_the_shutdown_a_second() -> None:
    """What keeps the shutdown above prompt: each connection waits 1 s for
    its peer's answer to the close, not the websockets library's default of
    10 s (checked on the server's connections, not with a clock)."""
    with running_server(max_iterations=10) as server:
        client = EirLikeClient(server.url)
        timeouts = server.call(
            lambda: [ws.close_timeout for ws in server.server.connections]
        )
        client.close()
    assert timeouts == [1]


def test_port_in_use_is_one_clear_line_and_a_nonzero_exit() -> None:
    with ServerProcess("--port", "0", "--workers", "0") as first:
        with ServerProcess(
            "--port", str(first.port), "--workers", "0", wait_listening=False
        ) as second:
            status = second.wait(HANG)
        assert status != 0
        lines = [line for line in second.lines if line.strip()]
        assert len(lines) == 1, second.lines
        assert "Traceback" not in second.log
        assert str(first.port) in lines[0]
        assert "in use" in lines[0].lower(), lines[0]
        # The first server is unaffected.
        client = EirLikeClient(first.url)
        client.validation_probe()
        client.close()


def test_bad_command_line_values_are_rejected_with_a_message() -> None:
    for args, expected in [
        (["--max-message-size", "0"], "--max-message-size"),
        (["--max-batch-size", "-3"], "--max-batch-size"),
        (["--port", "http"], "--port"),
        (["--path", "ws"], "--path"),
        (["--token", ""], "--token"),
    ]:
        result = run_streamer(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


# What an interpreter must do before any server can listen.
IMPORTS = "import asyncio, json, logging, websockets.asyncio.server"


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cpu_seconds(command: list[str]) -> float:
    """CPU time (user + system) `command` used, run to its end."""
    import resource  # POSIX only, as /proc is

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run(command)
    assert done.returncode == 0, done.stderr
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


@reads_proc
def test_startup_to_listening_costs_little_more_cpu_than_the_imports() -> None:
    """To its "listening" line the server does little beyond importing what it
    needs: its CPU time is compared with an interpreter's that only imports
    asyncio and websockets (about 1.2 times that here), a ratio that does not
    depend on how fast the machine is. The wall time depends on the load too;
    bench/throughput.py measures it against its target."""
    walls, cpus, imports = [], [], []
    for _ in range(3):
        imports.append(run_cpu_seconds([sys.executable, "-c", IMPORTS]))
        with ServerProcess("--port", "0") as server:
            walls.append(server.startup_seconds)
            cpus.append(process_cpu_seconds(server.pid))
    print(
        f"start to listening: wall {min(walls):.3f} s (best of 3; all {walls}), "
        f"CPU {min(cpus):.2f} s; the imports alone {min(imports):.2f} s"
    )
    assert min(cpus) < 3 * min(imports), (cpus, imports)


def test_healthz_answers_json_without_upgrading() -> None:
    with running_server(max_iterations=100) as server:
        client = EirLikeClient(server.url)
        client.validation_probe()
        assert len(client.fetch_batch(7)) == 7
        for path in ("/healthz", "/healthz?probe=1"):
            status, headers, body = http_get(server.server.port, path)
            assert status == 200
            assert headers["Content-Type"] == "application/json"
            assert len(body) < 1024
            health = json.loads(body)
            assert health["status"] == "ok"
            assert health["open_connections"] == 1
            assert health["samples_served_total"] == 8  # probe's 1 + 7
        # A WebSocket client asking for /healthz gets the 200, not an upgrade.
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(
                server.url.replace("/ws", "/healthz"), timeout=HANG
            )
        assert refused.value.status_code == 200
        client.close()


@pytest.mark.parametrize("path", ["/", "/wss", "/wsx/run", "/favicon.ico"])
def test_a_path_outside_the_streams_gets_404(path: str) -> None:
    with running_server(max_iterations=10) as server:
        port = server.server.port
        status, _, body = http_get(port, path)
        assert status == 404
        assert b"/ws" in body  # names the path that works
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=HANG)
        assert refused.value.status_code == 404
        assert server.status()["open_connections"] == 0
        # The right path, with a query string, works.
        client = EirLikeClient(f"ws://127.0.0.1:{port}/ws?run=7")
        client.validation_probe()
        client.close()


def test_path_option_moves_the_websocket_endpoint() -> None:
    with ServerProcess("--port", "0", "--workers", "0", "--path", "/stream") as server:
        assert server.url.endswith("/stream")
        assert http_get(server.port, "/ws")[0] == 404
        client = EirLikeClient(server.url)
        client.validation_probe()
        client.close()


def test_max_message_size_flag_closes_with_1009() -> None:
    with ServerProcess(
        "--port", "0", "--workers", "0", "--max-message-size", "2048"
    ) as server:
        client = EirLikeClient(server.url)
        client.ws.send("x" * 3000)
        code, reason = read_close(client.ws)
        assert code == 1009
        assert "2048" in reason
        client.ws.shutdown()
        other = EirLikeClient(server.url)
        other.validation_probe()
        other.close()
        line = server.wait_for("closed by the server: code 1009")
        assert "conn#1" in line


def eir_session(url: str) -> None:
    """A normal setup-and-train exchange, as EIR has it, ending in a close."""
    client = EirLikeClient(url)
    client.validation_probe()
    while client.fetch_batch(32) is not None:
        pass
    client.close()
    client = EirLikeClient(url)
    assert client.request({"type": "status", "payload": {}})[0]["type"] == "status"
    client.close()
    client = EirLikeClient(url)
    confirm = client.request(
        {"type": "setValidationIds", "payload": {"validation_ids": ["sample_1"]}}
    )[0]
    assert confirm["type"] == "validationIdsConfirmation"
    client.close()
    client = EirLikeClient(url)
    client.validation_probe()
    samples = client.training_pass(32)
    assert len(samples) == 99 - 1  # sample_1 is for validation
    client.close()


def test_info_log_is_one_line_per_connection_event() -> None:
    with ServerProcess("--port", "0", "--workers", "0", "--max-iterations", "99") as s:
        eir_session(s.url)
        bad = EirLikeClient(s.url)
        bad.ws.send("not json")
        bad.recv()
        bad.close()
        wait_until(
            lambda: sum("closed" in line for line in s.lines) >= 5,
            "a 'closed' log line for each of the 5 connections",
        )
        s.stop()
    assert all(LOG_LINE.match(line) for line in s.lines), s.log
    for number in range(1, 5):
        events = [line for line in s.lines if f"conn#{number} " in line]
        assert len(events) == 2, events  # opened, closed
        assert events[0].endswith("opened on stream 'default'")
        assert "closed (code 1000)" in events[1]
    bad_events = [line for line in s.lines if "conn#5" in line]
    assert len(bad_events) == 3, bad_events  # opened, the error, closed
    assert "not json" in bad_events[1]


def test_warning_level_logs_nothing_for_a_normal_session() -> None:
    port = free_port()
    server = ServerProcess(
        "--port",
        str(port),
        "--workers",
        "1",
        "--max-iterations",
        "99",
        "--log-level",
        "warning",
        "--progress-interval",  # progress lines are INFO: none at this level
        "0.1",
        wait_listening=False,
    )
    with server:
        wait_until(lambda: answers_healthz(port), f"/healthz to answer on {port}")
        eir_session(f"ws://127.0.0.1:{port}/ws")
        assert server.stop() == 0
    assert server.lines == []


def test_non_websocket_traffic_is_turned_away_quietly() -> None:
    """Port scanners and confused HTTP clients get an HTTP answer or a closed
    socket; the server logs no error and keeps serving."""
    with ServerProcess("--port", "0", "--workers", "0") as server:
        status, _, body = http_get(server.port, "/ws")  # no Upgrade headers
        assert status == 426 and b"WebSocket" in body
        raw_requests = [
            b"POST /ws HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # TLS hello
            b"GET /ws HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n",
            b"\r\n\r\n",
            b"",
        ]
        for raw in raw_requests:
            with socket.create_connection(("127.0.0.1", server.port), HANG) as peer:
                peer.sendall(raw)
                peer.shutdown(socket.SHUT_WR)
                peer.settimeout(HANG)
                answer = peer.recv(100)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
        client = EirLikeClient(server.url)
        client.validation_probe()
        client.close()
        server.stop()
    assert not [line for line in server.lines if " ERROR " in line], server.log
    assert "Traceback" not in server.log


PROGRESS = re.compile(
    r"progress, stream default: ([\d,]+) samples served in this pass "
    r"\(([\d.]+)% of 20,000, "
    r"(?:[\d,]+ s left|time left unknown)\), ([\d,]+) in total; ([\d,]+) samples/s; "
    r"1 connection streaming$"
)


def test_progress_lines_while_samples_flow_and_silence_when_idle() -> None:
    with ServerProcess(
        "--port", "0", "--workers", "0", "--max-iterations", "20000",
        "--progress-interval", "0.4",
    ) as server:  # fmt: skip
        client = EirLikeClient(server.url)
        client.validation_probe()
        # A fixed number of batches, a small part of the pass however fast
        # the machine serves them; one reply to each request.
        get_data = {"type": "getData", "payload": {"batch_size": 16}}
        for _ in range(100):
            (reply,) = client.request(get_data)
            assert reply["type"] == "data" and len(reply["payload"]) == 16, reply
        # The first progress line after the last batch has the final total
        # (the probe's sample, then the batches); no line after it may come.
        total = 1 + 100 * 16
        flowing = server.wait_for(f", {total:,} in total;")
        before = len(server.lines)
        time.sleep(1.6)  # four intervals without a sample served
        idle_lines = server.lines[before:]
        client.close()
    found = PROGRESS.search(flowing)
    assert found, flowing
    served, percent, total_logged, rate = found.groups()
    assert int(served.replace(",", "")) == 100 * 16  # the probe's sample came back
    assert int(total_logged.replace(",", "")) == total
    assert float(percent) == 8.0
    assert int(rate.replace(",", "")) > 0
    assert not [line for line in idle_lines if "progress, stream" in line], idle_lines
