"""Shared fixtures, and the two rules of the eirtrain folder.

Every test under tests/eirtrain runs the real client: it is marked
`eirtrain` here (`-m "not eirtrain"` leaves them out), no test elsewhere may
carry that mark, and each one skips without eirtrain, or fails where the
run requires it (support/required.py: CI sets EIR_REQUIRE_CLIENT=1).
No test imports from this file: shared helpers live in tests/support.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.required import needs_eirtrain
from support.servers import ServerThread, running_server

EIRTRAIN_TESTS = Path(__file__).parent / "eirtrain"


@pytest.fixture
def server() -> Iterator[ServerThread]:
    """A bounded server (300 samples, 64 readings, seed 0)."""
    with running_server(max_iterations=300) as s:
        yield s


@pytest.fixture
def index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `--dataset` index cache of the test's own ($EIR_STREAM_CACHE, which
    servers started by the test inherit), in tmp_path."""
    folder = tmp_path / "index-cache"
    monkeypatch.setenv("EIR_STREAM_CACHE", str(folder))
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests under tests/eirtrain are marked `eirtrain`, and only they."""
    for item in items:
        if item.path.is_relative_to(EIRTRAIN_TESTS):
            item.add_marker(pytest.mark.eirtrain)
        elif item.get_closest_marker("eirtrain") is not None:
            raise pytest.UsageError(
                f"{item.nodeid} is marked eirtrain: it belongs under tests/eirtrain"
            )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test of the real client skips without eirtrain (fails where the run
    requires it), before its fixtures start anything."""
    if item.get_closest_marker("eirtrain") is not None:
        needs_eirtrain()
