"""A real server on an ephemeral loopback port, in a thread of the test process."""

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace

from eirstream.cli import parse_args
from eirstream.server import StreamServer
from eirstream.settings import Settings
from support.waiting import HANG


class ServerThread:
    """A StreamServer with its own event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = StreamServer(settings)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not started.wait(HANG):
            raise RuntimeError("server did not start")
        scheme = "wss" if settings.certfile else "ws"
        self.url = f"{scheme}://127.0.0.1:{self.server.port}{settings.path}"

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop (state is only touched there)."""

        async def wrapper():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(HANG)

    def status(self) -> dict:
        return self.call(self.server.stream.status)

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        with contextlib.suppress(Exception):
            fut.result(HANG)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(HANG)
        self.loop.close()


@contextlib.contextmanager
def running_server(**overrides) -> Iterator[ServerThread]:
    """A server on 127.0.0.1:<free port>; samples are made in its thread
    unless `workers` is given."""
    settings = replace(parse_args(["--port", "0", "--workers", "0"]), **overrides)
    server = ServerThread(settings)
    try:
        yield server
    finally:
        server.stop()
