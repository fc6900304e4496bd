"""Helpers shared by the tests: servers to test against, clients that talk to
them as EIR does, the real eirtrain, a local Dask cluster, and waiting.

Tests import them as `from support.<module> import ...` (pytest puts tests/
on sys.path: pyproject.toml's `pythonpath`).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
