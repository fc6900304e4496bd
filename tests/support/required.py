"""What a test run must have, rather than skip without: CI's rule.

Tests that need something optional (the real eirtrain, Dask's
`distributed`) skip without it and say how to install it, except where the
run requires it: there they fail, so that CI never goes green without
running them. EIR_REQUIRE_CLIENT=1 (CI sets it when it installs the real
client) requires both; CI=true alone requires `distributed`, which the dev
extra installs everywhere. A real Prometheus (Debian's `prometheus`
package: `prometheus` and `promtool`) is required by EIR_REQUIRE_PROMETHEUS=1
alone, which CI sets once it has installed the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal, NoReturn

import pytest

from support.eirtrain_support import EIR_ENV_DIR, find_eirtrain
from support.local_dask import dask_command
from support.prometheus import PrometheusTools, find_prometheus

Optional = Literal["eirtrain", "distributed", "prometheus"]


def required(what: Optional) -> bool:
    """Whether this run must have `what` (see the module's docstring)."""
    if what == "prometheus":
        return os.environ.get("EIR_REQUIRE_PROMETHEUS") == "1"
    if os.environ.get("EIR_REQUIRE_CLIENT") == "1":
        return True
    return what == "distributed" and os.environ.get("CI", "").lower() == "true"


def missing(what: Optional, why: str) -> NoReturn:
    """The test cannot run without `what`, for the reason `why` (which says
    how to install it): a skip, or a failure where the run requires it."""
    if required(what):
        pytest.fail(f"{why}; this run requires {what} (CI must run it)", pytrace=False)
    pytest.skip(why)


def needs_eirtrain() -> Path:
    """The real client's eirtrain, or `missing` says how to install it."""
    eirtrain = find_eirtrain()
    if eirtrain is None:
        missing(
            "eirtrain",
            f"eirtrain not installed: no {EIR_ENV_DIR}/bin/eirtrain and none on "
            "PATH (set EIR_ENV_DIR to a virtual environment with eir-dl 0.25.0; "
            "see the README, 'Tests against the real client')",
        )
    return eirtrain


def needs_dask() -> None:
    """`distributed` and its `dask` command, or `missing` says what to install."""
    if importlib.util.find_spec("distributed") is None:
        missing(
            "distributed",
            "`distributed` is not installed (pip install -e '.[cluster]')",
        )
    try:
        dask_command()
    except FileNotFoundError as error:
        missing("distributed", str(error))


def needs_prometheus() -> PrometheusTools:
    """Debian's Prometheus (`prometheus` and `promtool`), or `missing` says
    how to install it."""
    tools = find_prometheus()
    if tools is None:
        missing(
            "prometheus",
            "prometheus or promtool not on PATH (apt-get install prometheus, "
            "Debian's package; EIR_REQUIRE_PROMETHEUS=1 makes this a failure)",
        )
    return tools
