"""A client that does not read for minutes (it is training) must not be dropped.

EIR answers pings only inside a read, so keepalive pings with a timeout drop
real training runs. The server sends no pings unless --ping-interval is given.
"""

import json
import time

import websocket
from support.eir_like_client import EirLikeClient
from support.servers import running_server
from support.waiting import HANG

from eirstream.cli import parse_args


def test_cli_default_has_no_keepalive_pings():
    settings = parse_args([])
    assert settings.ping_interval is None


def test_server_side_connection_has_no_ping_interval(server):
    client = EirLikeClient(server.url)
    try:
        peers = server.call(lambda: list(server.server.connections))
        assert len(peers) == 1
        assert peers[0].ping_interval is None
        assert peers[0].ping_timeout is None
    finally:
        client.close()


def test_idle_client_gets_no_frames_and_stays_connected():
    with running_server(max_iterations=50) as srv:
        client = EirLikeClient(srv.url)
        time.sleep(2.0)  # not reading: the server must send nothing meanwhile
        client.ws.settimeout(0.5)
        try:
            frame = client.ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            frame = None
        assert frame is None, f"unsolicited frame from the server: {frame}"
        reply = client.request({"type": "getData", "payload": {"batch_size": 2}})[0]
        assert [s["sample_id"] for s in reply["payload"]] == ["sample_0", "sample_1"]
        client.close()


def test_ping_interval_option_enables_pings_that_are_answered():
    with running_server(max_iterations=5, ping_interval=0.2) as srv:
        ws = websocket.create_connection(srv.url, timeout=HANG)
        ws.send(json.dumps({"type": "handshake", "version": "1.0"}))
        assert json.loads(ws.recv())["type"] == "handshake"
        frame = ws.recv_data_frame(control_frame=True)
        assert frame[0] == websocket.ABNF.OPCODE_PING
        ws.close()
