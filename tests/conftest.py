"""Shared fixtures, and the rule that CI's real-client tests never skip."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.eirtrain_support import find_eirtrain
from support.servers import ServerThread, running_server


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


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """With EIR_REQUIRE_CLIENT=1 (CI sets it), a missing eirtrain is a failure.

    Interop tests otherwise skip when eirtrain is absent, which would let CI
    go green without ever proving the server against the real client."""
    if item.get_closest_marker("eirtrain") is None:
        return
    if os.environ.get("EIR_REQUIRE_CLIENT") != "1":
        return
    if find_eirtrain() is None:
        pytest.fail(
            "EIR_REQUIRE_CLIENT=1 but eirtrain is not installed: install eir-dl "
            "in a virtual environment and set EIR_ENV_DIR to it (README.md, "
            "'Tests against the real client')",
            pytrace=False,
        )
