"""`wait_until`: poll a condition until it holds, bounded by a timeout; HANG.

The one polling helper of the tests. A timeout is only an upper bound for
something that will happen, HANG unless a test says otherwise; to show that
something does *not* happen, a test still has to watch for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Seconds a test waits for something that will happen (a reply, a process's
# exit, a line in a log) before it calls it a hang: far more than any machine
# needs, so that no test depends on the machine's speed.
HANG = 60


def wait_until(
    condition: Callable[[], object],
    what: str,
    timeout: float = HANG,
    interval: float = 0.02,
) -> float:
    """Poll `condition()` until it is true; the seconds that took.

    `what` names what is awaited ("the server to see both connections
    close"): after `timeout` seconds the AssertionError says what did not
    happen, and how long it was given.
    """
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started
