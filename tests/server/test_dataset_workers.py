"""The --dataset reader across processes: the server's process counts word
chunks in a pool of processes, and a worker process finds those counts in
the index cache instead of counting again.
"""

import concurrent.futures as futures
import json
import sys
from pathlib import Path

import pytest
from support.commands import run
from support.datasets import CHUNK_SPEC, expected_chunks, write_documents, write_spec

pytest.importorskip("pyarrow")
pytest.importorskip("yaml")
pytest.importorskip("fsspec")

from eirstream.datasets import index as dataset_index
from eirstream.datasets.index import counting_pool
from eirstream.datasets.source import load_dataset

pytestmark = pytest.mark.usefixtures("index_cache")


def test_word_chunks_are_counted_in_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[futures.Executor] = []

    def noted(files, rule) -> futures.Executor:
        pools.append(counting_pool(files, rule))
        return pools[-1]

    monkeypatch.setattr(dataset_index, "counting_pool", noted)
    texts = write_documents(tmp_path)
    source = load_dataset(str(write_spec(tmp_path, CHUNK_SPEC % 20)))
    assert [type(pool) for pool in pools] == [futures.ProcessPoolExecutor]
    assert source.files_counted == 2
    got = {
        s["sample_id"]: s["inputs"]["text_output"]
        for s in source.samples(range(source.num_samples))
    }
    assert got == expected_chunks(texts, 20)


def test_worker_processes_find_the_cache(tmp_path: Path, index_cache: Path) -> None:
    """What a worker process of the server does: call the factory, which
    finds the counts the server's process left in the cache."""
    write_documents(tmp_path)
    spec = write_spec(tmp_path, CHUNK_SPEC % 20)
    built = load_dataset(str(spec))
    script = (
        "import json; from eirstream.loading import DATASET_SOURCE, load_source; "
        f"s = load_source(DATASET_SOURCE, {{'dataset': {str(spec)!r}, "
        "'seed': 0, 'sequence_length': 64, 'max_iterations': None}); "
        "print(json.dumps([s.files_counted, s.samples_json([3, 0])]))"
    )
    # the environment, and so $EIR_STREAM_CACHE, is this process's
    done = run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == 0, done.stderr
    counted, texts = json.loads(done.stdout)
    assert counted == 0
    assert texts == built.samples_json([3, 0])
