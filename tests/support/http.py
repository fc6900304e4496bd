"""`http_get`: one plain HTTP GET to a server on 127.0.0.1, read as sent.

The reply is read to the end of the connection (the request says
`Connection: close`) and its headers are kept as a list, so a test sees a
header that came twice (two Content-Length headers, say, which
http.client resolves by taking the first one) and every byte of the body.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from support.waiting import HANG


@dataclass
class HttpReply:
    status: int
    headers: list[tuple[str, str]]  # in order, as sent
    body: bytes

    def header(self, name: str) -> list[str]:
        """Every value of the header `name` (any case), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


def http_get(
    port: int, path: str, headers: Mapping[str, str] | None = None
) -> HttpReply:
    """GET `path` on 127.0.0.1:`port` with `headers`; the reply as sent."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [line.split(":", 1) for line in header_lines]
    return HttpReply(
        int(status_line.split()[1]),
        [(key.strip(), value.strip()) for key, value in pairs],
        body,
    )
