"""What the server says about itself: HTTP replies (/healthz, /metrics),
a stream in brief, progress lines, how a connection closed, and a log
filter that keeps the token out of the log. No state of its own.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, quote_plus

try:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Response
except ImportError:  # the server says what to install (cli.main)
    pass


def http_response(ws: ServerConnection, body: bytes, content_type: str) -> Response:
    """A 200 reply with `body`: websockets' own reply (its Date and
    Connection headers), its text/plain body and headers replaced."""
    response = ws.respond(HTTPStatus.OK, "")
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = content_type
    response.headers["Content-Length"] = str(len(body))
    response.body = body
    return response


def json_response(ws: ServerConnection, body: dict[str, Any]) -> Response:
    text = json.dumps(body) + "\n"
    return http_response(ws, text.encode(), "application/json")


def brief(status: dict[str, Any]) -> dict[str, Any]:
    """A stream in brief, for /healthz and the status reply's "streams"."""
    keys = ("phase", "epoch", "current_position", "max_iterations")
    return {key: status[key] for key in keys} | {
        "samples_served_total": status["samples_served_total"],
        "open_connections": status["open_connections"],
    }


def describe_close(ws: ServerConnection) -> str:
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    if sent is not None and not ws.protocol.close_rcvd_then_sent:
        reason = f" {sent.reason!r}" if sent.reason else ""
        return f"closed by the server: code {sent.code}{reason}"
    if received is None:
        return "no close frame from the client (normal for DataLoader workers)"
    reason = f" {received.reason!r}" if received.reason else ""
    return f"code {received.code}{reason}"


class RedactFilter(logging.Filter):
    """Replaces a secret (and its URL-encoded form) in log records.

    websockets logs request lines ("GET /ws?token=...") at DEBUG level."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secrets = sorted({secret, quote(secret, safe=""), quote_plus(secret)})

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "<token>")
            record.msg, record.args = message, None
        return True


def progress_line(status: dict[str, Any], rate: float) -> str:
    """The periodic progress line of a stream, from its status and a rate."""
    served, total = status["samples_served_in_pass"], status["samples_served_total"]
    text = f"progress, stream {status['stream']}: {served:,} samples served"
    text += " in this pass"
    remaining = status["remaining_iterations"]
    if remaining is not None:
        whole = served + remaining
        percent = 100 * served / whole if whole else 100.0
        left = f"{remaining / rate:,.0f} s left" if rate > 0 else "time left unknown"
        text += f" ({percent:.1f}% of {whole:,}, {left})"
    streaming = status["connections_in_pass"]
    return (
        f"{text}, {total:,} in total; {rate:,.0f} samples/s; "
        f"{streaming} connection{'' if streaming == 1 else 's'} streaming"
    )
