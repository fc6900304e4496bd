"""--dataset, --shuffle and --epochs in a real server process (no eirtrain).

Bad input stops the server before it listens, with one line and exit 2; a
remote path (fsspec's file:// filesystem) serves like a local one; the
shuffled order is the same after a restart and whatever the batch sizes; a
local Dask cluster serves the same bytes as local workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from support.commands import run_streamer
from support.exact_pass import texts_by_id
from support.local_dask import local_dask_cluster
from support.required import needs_dask
from support.server_process import ServerProcess
from support.waiting import HANG

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("yaml")

pytestmark = pytest.mark.usefixtures("index_cache")  # servers inherit it

ROWS = 300


def write_dataset(folder: Path) -> Path:
    """Two Parquet files of several row groups, tabular in and out."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(2):
        rows = range(part * ROWS // 2, (part + 1) * ROWS // 2)
        table = pa.table(
            {
                "age": [20 + r % 60 for r in rows],
                "site": [f"site{r % 3}" for r in rows],
                "label": [f"class{r % 2}" for r in rows],
            }
        )
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=32)
    spec = folder / "people.yaml"
    spec.write_text(
        "files: part-*.parquet\n"
        "inputs:\n"
        "  clinical: {type: tabular, columns: [age, site]}\n"
        "outputs:\n"
        "  label: {type: tabular, columns: [label]}\n"
    )
    return spec


def start_fails(*args: str) -> str:
    """The server's output when it must refuse to start (exit 2)."""
    done = run_streamer("--port", "0", *args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "listening" not in done.stderr and "Traceback" not in done.stderr
    return done.stderr


def test_a_bad_spec_stops_the_server_with_one_line_before_it_listens(
    tmp_path: Path,
) -> None:
    spec = write_dataset(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("columns: [age, site]", "colums: [age]"))
    error = start_fails("--dataset", str(bad))
    assert "unknown key 'colums'" in error and "did you mean 'columns'" in error
    missing = tmp_path / "missing.yaml"
    missing.write_text(spec.read_text().replace("[label]", "[grade]"))
    assert "grade" in start_fails("--dataset", str(missing))
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text(spec.read_text().replace("part-*", "none-*"))
    assert "--dataset" in start_fails("--dataset", str(nothing))
    both = start_fails("--dataset", str(spec), "--source", "data_simulator:X")
    assert "--dataset" in both and "--source" in both


def test_shuffle_and_epochs_need_a_source_with_an_end() -> None:
    error = start_fails("--shuffle")
    assert "--shuffle and --epochs need a source with an end" in error
    assert "--max-iterations" in error


def first_ids(url: str, count: int, batch_size: int) -> list[str]:
    """The sample ids of the first `count` samples a fresh training
    connection receives (after its reset rewinds the stream)."""
    ws = websocket.create_connection(url, timeout=HANG)
    try:
        ws.send('{"type":"handshake","version":"1.0"}')
        ws.recv()
        ws.send('{"type":"reset"}')
        ws.recv(), ws.recv()
        ids: list[str] = []
        while len(ids) < count:
            ws.send(
                json.dumps({"type": "getData", "payload": {"batch_size": batch_size}})
            )
            payload = json.loads(ws.recv())["payload"]
            assert payload != ["terminate"]
            ids += [sample["sample_id"] for sample in payload]
        return ids[:count]
    finally:
        ws.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    yield write_dataset(tmp_path / "data")


def test_a_file_url_serves_like_a_path(served: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.yaml"
    remote.write_text(
        served.read_text().replace(
            "files: part-*.parquet", f"files: file://{served.parent}/part-*.parquet"
        )
    )
    with ServerProcess("--port", "0", "--dataset", str(served)) as local:
        here = first_ids(local.url, 100, 32)
    with ServerProcess("--port", "0", "--dataset", str(remote)) as far:
        there = first_ids(far.url, 100, 32)
    assert here == there == [f"r{k}" for k in range(100)]


def test_the_shuffled_order_survives_a_restart_and_other_batch_sizes(
    served: Path,
) -> None:
    orders = []
    for batch_size in (7, 64):
        args = ["--dataset", str(served), "--shuffle", "--seed", "3", "--epochs", "2"]
        with ServerProcess("--port", "0", *args) as server:
            orders.append(first_ids(server.url, ROWS + 50, batch_size))
    assert orders[0] == orders[1]
    first_epoch = orders[0][:ROWS]
    assert sorted(first_epoch, key=lambda i: int(i[1:])) == [
        f"r{k}" for k in range(ROWS)
    ]
    assert first_epoch != [f"r{k}" for k in range(ROWS)]  # shuffled
    assert orders[0][ROWS:] != first_epoch[:50]  # the next epoch, a new order


def raw_samples(url: str, count: int) -> dict[str, str]:
    """Sample id -> the sample's JSON text as sent, for `count` samples."""
    ws = websocket.create_connection(url, timeout=120, skip_utf8_validation=True)
    try:
        ws.send('{"type":"handshake","version":"1.0"}')
        ws.recv()
        texts: dict[str, str] = {}
        while len(texts) < count:
            ws.send('{"type":"getData","payload":{"batch_size":50}}')
            texts.update(texts_by_id(ws.recv()))
        return texts
    finally:
        ws.close()


def test_a_dask_cluster_serves_the_same_bytes_as_local_workers(served: Path) -> None:
    needs_dask()
    args = ["--dataset", str(served), "--shuffle", "--seed", "5"]
    with ServerProcess("--port", "0", *args, "--workers", "2") as local:
        here = raw_samples(local.url, ROWS)
    with (
        local_dask_cluster(nworkers=2, nthreads=1) as cluster,
        ServerProcess("--port", "0", *args, "--cluster", cluster.address) as far,
    ):
        there = raw_samples(far.url, ROWS)
    assert here == there


def test_the_simulator_with_an_end_is_shuffled_epoch_after_epoch() -> None:
    args = ["--max-iterations", "200", "--shuffle", "--epochs", "2", "--workers", "1"]
    with ServerProcess("--port", "0", *args) as server:
        ids = first_ids(server.url, 400, 32)
    epochs = [ids[:200], ids[200:]]
    every = [f"sample_{k}" for k in range(200)]
    for epoch in epochs:
        assert sorted(epoch, key=lambda i: int(i.split("_")[1])) == every
        assert epoch != every  # shuffled
    assert epochs[0] != epochs[1]  # each epoch in its own order
