"""tests/unit is pure: no test here connects or listens on a socket or starts a
process (threads and asyncio loops are fine). The fixture below makes every
attempt fail, naming it: such a test belongs in tests/server."""

import multiprocessing.process
import os
import socket
import subprocess
from collections.abc import Callable

import pytest


def refusal(what: str) -> Callable[..., None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a unit test {what}: it belongs in tests/server")

    return refuse


@pytest.fixture(autouse=True)
def no_sockets_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting, binding, forking and starting processes fail here."""
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, refusal(f"calls socket.{method}"))
    monkeypatch.setattr(os, "fork", refusal("forks a process"))
    monkeypatch.setattr(
        subprocess.Popen, "_execute_child", refusal("starts a subprocess")
    )
    monkeypatch.setattr(
        multiprocessing.process.BaseProcess, "start", refusal("starts a process")
    )
