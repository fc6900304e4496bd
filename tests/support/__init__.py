"""Helpers shared by the tests, each written once: servers to test against
(servers, server_process), clients that talk to them as EIR does
(eir_like_client, exact_pass), the real eirtrain (eirtrain_support), a local
Dask cluster (local_dask), processes and commands a test starts (commands),
what a run must have rather than skip (required), waiting and its one hang
guard (waiting), an engine whose tasks end when a test says (held_engine),
a plain HTTP GET read as sent (http), a real Prometheus (prometheus),
and the data the dataset and encoder
tests build (datasets, encodings).

Tests import them as `from support.<module> import ...` (pytest puts tests/
on sys.path: pyproject.toml's `pythonpath`).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
