"""The --dataset reader (eirstream.datasets): a spec file and its data files,
served as a sample source.

Every test writes its own tiny dataset with pyarrow into tmp_path (or into
fsspec's in-memory filesystem) and its index cache into tmp_path too, so
nothing is downloaded and nothing outside tmp_path is touched. Counting runs
in threads here (no processes); tests/server/test_dataset_workers.py counts
in processes and reads the cache from another process.
"""

import base64
import concurrent.futures as futures
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pytest.importorskip("yaml")
pytest.importorskip("fsspec")
pytest.importorskip("PIL.Image")

import pyarrow.feather as feather  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from support.datasets import (  # noqa: E402
    CHUNK_SPEC,
    decoded,
    document,
    expected_chunks,
    image_bytes,
    write_documents,
    write_spec,
)

from eirstream import eirformat  # noqa: E402
from eirstream import encoders as enc  # noqa: E402
from eirstream.datasets import files as dataset_files  # noqa: E402
from eirstream.datasets import index as dataset_index  # noqa: E402
from eirstream.datasets import source as dataset_source  # noqa: E402
from eirstream.datasets.index import index_bytes_per_document  # noqa: E402
from eirstream.datasets.source import load_dataset  # noqa: E402
from eirstream.datasets.spec import DatasetProblem, parse_spec  # noqa: E402
from eirstream.loading import DATASET_SOURCE, load_source  # noqa: E402
from eirstream.making import encode_task  # noqa: E402
from eirstream.stream import SampleStream  # noqa: E402

pytestmark = pytest.mark.usefixtures("index_cache")


@pytest.fixture(autouse=True)
def count_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are counted in threads, never in processes: a unit test starts
    none."""

    def threads(files, rule) -> futures.Executor:
        return futures.ThreadPoolExecutor(max_workers=min(16, len(files)))

    monkeypatch.setattr(dataset_index, "counting_pool", threads)


def check_all(source) -> list[dict]:
    """Every sample passes EIR's checks, and samples_json is json.dumps."""
    info = source.dataset_info()
    eirformat.check_dataset_info(info)
    indices = list(range(source.num_samples))
    samples = source.samples(indices)
    for sample in samples:
        eirformat.check_sample(sample, info)
    texts = source.samples_json(indices)
    assert texts == [json.dumps(s, separators=(",", ":")) for s in samples]
    shuffled = random.Random(0).sample(indices, len(indices))  # made in order
    assert source.samples_json(shuffled) == [texts[i] for i in shuffled]
    return samples


# =============================================================================
# Word chunks
# =============================================================================
def test_word_chunks_across_files_and_row_groups(tmp_path: Path) -> None:
    texts = write_documents(tmp_path)
    spec = write_spec(tmp_path, CHUNK_SPEC % 20)
    source = load_dataset(str(spec))
    assert source.files_counted == 2
    samples = check_all(source)
    want = expected_chunks(texts, 20)
    got = {s["sample_id"]: s["inputs"]["text_output"] for s in samples}
    assert len(got) == len(samples) == source.num_samples == len(want)
    assert got == want  # every chunk exactly once, short tails dropped
    assert [len(got[f"r1c{c}"].split()) for c in range(3)] == [512, 512, 76]
    assert "r12c0" not in got  # 3 words, under min_words
    for sample in samples:  # the other entry reading `text` gets the chunk too
        assert sample["inputs"]["caption"] == sample["inputs"]["text_output"]
        row = int(sample["sample_id"][1:].split("c")[0])
        words = len(texts[row].split())
        assert sample["inputs"]["meta"] == {"label": f"L{words % 3}", "words": words}
    assert len(source.block_sizes) == 4 and sum(source.block_sizes) == len(want)
    ids = [s["sample_id"] for s in samples]
    assert [source.index_of(i) for i in ids] == list(range(len(ids)))
    assert source.indices_of([*ids, "r1", "r1c3", "r99c0", "r01c0", "x"]) == set(
        range(len(ids))
    )
    again = load_dataset(str(spec))  # the counts come from the cache
    assert (again.files_counted, again.files_cached) == (0, 2)
    assert again.samples_json([5, 0]) == source.samples_json([5, 0])


def test_word_chunks_are_shuffled_a_few_documents_at_a_time(tmp_path: Path) -> None:
    # One row group of 40 documents gives 800 chunks: shuffled in windows of
    # CHUNK_WINDOW (two pieces of 400 consecutive chunks, 20 documents each),
    # so that a worker's task splits few documents that other tasks split too.
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table({"text": [document(d, 200) for d in range(40)]}),
        tmp_path / "data" / "one.parquet",
    )
    spec = write_spec(
        tmp_path,
        "files: data/*.parquet\noutputs:\n"
        "  text_output: {type: sequence, column: text, chunk_words: 10}\n",
    )
    source = load_dataset(str(spec))
    assert source.block_sizes == [800]
    assert source.shuffle_window == dataset_source.CHUNK_WINDOW == 512
    stream = SampleStream.for_source(source, shuffle=True, seed=5)
    epoch = stream.peek(800)
    assert sorted(epoch) == list(range(800)) and epoch != sorted(epoch)
    halves = sorted([sorted(epoch[:400]), sorted(epoch[400:])])
    assert halves == [list(range(400)), list(range(400, 800))]
    rows = write_spec(
        tmp_path,
        "files: data/*.parquet\noutputs:\n  t: {type: sequence, column: text}\n",
    )
    assert load_dataset(str(rows)).shuffle_window is None  # the default window


def test_a_capped_corpus_refuses_chunks_past_its_cap(tmp_path: Path) -> None:
    # --max-iterations may end an epoch inside a document: its later chunks
    # are not samples, even asked for together with the earlier ones.
    texts = write_documents(tmp_path)
    spec = write_spec(tmp_path, CHUNK_SPEC % 20)
    source = load_dataset(str(spec), max_iterations=2)  # r1c0, r1c1 of r1's 3
    assert [source.sample_id(i) for i in range(2)] == ["r1c0", "r1c1"]
    assert len(source.samples_json([1, 0])) == 2
    with pytest.raises(IndexError, match=r"sample index 2 is not in 0\.\.1"):
        source.samples_json([0, 2])
    assert len(texts[1].split()) > 2 * 512


def test_min_words_decides_the_tail(tmp_path: Path) -> None:
    texts = write_documents(tmp_path)
    spec = write_spec(tmp_path, CHUNK_SPEC % 100)
    source = load_dataset(str(spec))
    got = {
        s["sample_id"]: s["inputs"]["text_output"]
        for s in source.samples(range(source.num_samples))
    }
    assert got == expected_chunks(texts, 100)
    assert [i for i in got if i.startswith("r1c")] == ["r1c0", "r1c1"]


def test_factory_through_load_source_and_encode_task(tmp_path: Path) -> None:
    write_documents(tmp_path)
    spec = write_spec(tmp_path, CHUNK_SPEC % 1)
    settings = {
        "dataset": str(spec),
        "seed": 0,
        "sequence_length": 64,
        "max_iterations": None,
    }
    source = load_source(DATASET_SOURCE, settings)
    info = source.dataset_info()
    indices = [7, 0, 3, 3, 11]
    made = encode_task(source, indices)
    assert made.failures == {}
    for k, index in enumerate(indices):
        sample = json.loads(made.blob[made.offsets[k] : made.offsets[k + 1] - 1])
        eirformat.check_sample(sample, info)
        assert sample == source.sample(index)
    capped = dataset_source.make_source(dataset=str(spec), max_iterations=5)
    assert capped.num_samples == 5 and sum(capped.block_sizes) == 5
    assert capped.index_of(source.sample_id(5)) is None
    with pytest.raises(IndexError):
        capped.sample(5)


def test_index_memory_per_document(tmp_path: Path) -> None:
    texts = write_documents(tmp_path)
    source = load_dataset(str(write_spec(tmp_path, CHUNK_SPEC % 1)))
    assert index_bytes_per_document() == 4
    blocks = source.index.blocks
    assert source.index_nbytes() == 4 * len(texts) + 32 * blocks + 16


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.text(), min_size=1, max_size=5))
def test_any_text_is_served_as_it_is(texts: list[str]) -> None:
    # Quotes, backslashes, control characters, any Unicode: each word chunk's
    # JSON (written through its document's template) is json.dumps of its
    # sample, and holds exactly the document's words; a whole row's text is
    # served as it is. (One index cache for every example: each writes new
    # files, which the cache tells apart.)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        table = pa.table({"text": texts, "label": texts[::-1]})
        pq.write_table(table, data / "texts.parquet", row_group_size=2)
        entries = "inputs:\n  meta: {type: tabular, columns: [label]}\noutputs:\n"
        chunked = write_spec(
            data,
            "files: texts.parquet\n"
            + entries
            + "  text_output: {type: sequence, column: text, chunk_words: 3}\n",
        )
        served = [
            s["inputs"]["text_output"] for s in check_all(load_dataset(str(chunked)))
        ]
        words = [text.split() for text in texts]
        assert served == [
            " ".join(split[at : at + 3])
            for split in words
            for at in range(0, len(split), 3)
        ]
        rows = write_spec(
            data,
            "files: texts.parquet\n"
            + entries
            + "  text_output: {type: sequence, column: text}\n",
        )
        source = load_dataset(str(rows))
        sent = [json.loads(text) for text in source.samples_json(range(len(texts)))]
        assert [s["inputs"]["text_output"] for s in sent] == texts
        assert [s["inputs"]["meta"]["label"] for s in sent] == texts[::-1]
        check_all(source)


# =============================================================================
# Formats
# =============================================================================
def hf_image_table(images: list[bytes | str]) -> "pa.Table":
    """Captions, labels and images in Hugging Face's Image layout (a str is
    an image stored by its path alone)."""
    cells = [
        {"bytes": None, "path": item}
        if isinstance(item, str)
        else {"bytes": item, "path": f"{i}.img"}
        for i, item in enumerate(images)
    ]
    return pa.table(
        {
            "image": pa.array(
                cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            ),
            "caption": [f"picture number {i}" for i in range(len(images))],
            "label": [i % 2 == 0 for i in range(len(images))],
        }
    )


IMAGE_SPEC = """
files: pictures.parquet
inputs:
  painting: {type: image, column: image%s}
  caption: {type: sequence, column: caption}
outputs:
  style: {type: tabular, columns: [label]}
"""


def test_images_png_and_jpeg_mixed(tmp_path: Path) -> None:
    images = [
        image_bytes("PNG"),
        image_bytes("JPEG"),
        image_bytes("PNG", mode="L"),
        image_bytes("PNG", mode="RGBA"),
        image_bytes("PNG", size=(2, 2)),
    ]
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "small.png").write_bytes(images[4])
    table = hf_image_table([*images[:4], "pics/small.png"])
    pq.write_table(table, tmp_path / "pictures.parquet", row_group_size=3)
    source = load_dataset(str(write_spec(tmp_path, IMAGE_SPEC % "")))
    assert source.dataset_info()["inputs"]["painting"] == {"type": "image"}
    samples = check_all(source)
    values = [s["inputs"]["painting"] for s in samples]
    for index in (0, 2, 3, 4):  # PNG passes through, byte for byte; 4 by path
        assert base64.b64decode(values[index]) == images[index]
    jpeg = decoded(values[1])
    assert (jpeg.format, jpeg.mode, jpeg.size) == ("PNG", "RGB", (6, 4))
    assert samples[0]["target_labels"]["style"] == {"label": "True"}
    assert samples[1]["inputs"]["caption"] == "picture number 1"

    sized = load_dataset(
        str(write_spec(tmp_path, IMAGE_SPEC % ", size: [3, 5], mode: RGB"))
    )
    assert sized.dataset_info()["inputs"]["painting"] == {
        "type": "image",
        "shape": [3, 5, 3],
        "mode": "RGB",
    }
    for sample in check_all(sized):
        picture = decoded(sample["inputs"]["painting"])
        assert (picture.format, picture.mode, picture.size) == ("PNG", "RGB", (5, 3))


def test_corrupt_image_costs_only_its_sample(tmp_path: Path) -> None:
    good = image_bytes("PNG")
    broken_png = good[:40] + bytes(len(good) - 40)  # right header, body zeroed
    images = [good, broken_png, good, b"not an image at all", image_bytes("JPEG")]
    pq.write_table(hf_image_table(images), tmp_path / "pictures.parquet")
    source = load_dataset(str(write_spec(tmp_path, IMAGE_SPEC % "")))
    made = encode_task(source, list(range(5)))
    assert sorted(made.failures) == [1, 3]
    assert "sample r1: inputs.painting" in made.failures[1]
    with pytest.raises(ValueError, match=r"sample r3: inputs\.painting"):
        source.sample(3)
    eirformat.check_sample(source.sample(4), source.dataset_info())


def test_csv_tabular_in_and_out(tmp_path: Path) -> None:
    (tmp_path / "clinic.csv").write_text(
        "age,bmi,sex,smoker,style\n"
        "34,22.5,F,true,calm\n"
        "51,30.1,M,false,bold\n"
        "29,19.0,F,false,calm\n"
    )
    spec = write_spec(
        tmp_path,
        """
files: clinic.csv
inputs:
  clinical: {type: tabular, columns: [age, bmi, sex, smoker]}
outputs:
  style: {type: tabular, columns: [style]}
""",
    )
    source = load_dataset(str(spec))
    assert source.num_samples == 3 and source.block_sizes == [3]
    samples = check_all(source)
    assert samples[1]["inputs"]["clinical"] == {
        "age": 51,
        "bmi": 30.1,
        "sex": "M",
        "smoker": "False",
    }
    assert samples[2]["target_labels"]["style"] == {"style": "calm"}
    assert [s["sample_id"] for s in samples] == ["r0", "r1", "r2"]


def test_json_lines_with_arrays_and_survival(tmp_path: Path) -> None:
    rows = [
        {
            "note": f"visit {i}",
            "signal": [[i, 1], [2, 3], [4, 5.5]],
            "event": i % 2,
            "time": 1.5 * i,
        }
        for i in range(5)
    ]
    (tmp_path / "visits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = write_spec(
        tmp_path,
        """
files: visits.jsonl
inputs:
  note: {type: sequence, column: note}
  signal: {type: array, column: signal}
outputs:
  outcome: {type: survival, event_column: event, time_column: time}
""",
    )
    source = load_dataset(str(spec))
    assert source.dataset_info()["inputs"]["signal"] == {
        "type": "array",
        "shape": [3, 2],
    }
    samples = check_all(source)
    assert samples[3]["inputs"]["signal"] == enc.encode_array(rows[3]["signal"])
    assert samples[3]["target_labels"]["outcome"] == {"event": "1", "time": 4.5}


def test_feather_file_by_record_batch(tmp_path: Path) -> None:
    table = pa.table(
        {
            "vector": pa.array(
                [[float(i)] * 4 for i in range(7)], pa.list_(pa.float32(), 4)
            ),
            "flat": [[i, i, i, i] for i in range(7)],
            "kind": [f"k{i % 2}" for i in range(7)],
        }
    )
    feather.write_feather(table, tmp_path / "vectors.feather", chunksize=3)
    spec = write_spec(
        tmp_path,
        """
files: vectors.feather
inputs:
  vector: {type: array, column: vector}
  square: {type: array, column: flat, shape: [2, 2]}
outputs:
  kind: {type: tabular, columns: [kind]}
""",
    )
    source = load_dataset(str(spec))
    info = source.dataset_info()
    assert info["inputs"]["vector"]["shape"] == [4]  # from the Arrow type
    assert info["inputs"]["square"]["shape"] == [2, 2]
    assert source.block_sizes == [3, 3, 1]
    samples = check_all(source)
    assert samples[5]["inputs"]["vector"] == enc.encode_array([5.0] * 4)
    assert samples[6]["target_labels"]["kind"] == {"kind": "k0"}


def write_hf_folder(folder: Path, table: "pa.Table", batch_rows: int) -> None:
    """What `datasets.Dataset.save_to_disk` writes: an Arrow stream and two
    JSON files."""
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema)
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
        writer.close()
    features = {
        name: {"dtype": "string", "_type": "Value"} for name in table.column_names
    }
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    state = {
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state))


def test_hugging_face_save_to_disk_folder(tmp_path: Path) -> None:
    texts = [document(i, 3 + i) for i in range(8)]
    table = pa.table({"text": texts, "topic": [f"t{i % 3}" for i in range(8)]})
    write_hf_folder(tmp_path / "saved", table, batch_rows=3)
    spec = write_spec(
        tmp_path,
        """
files: saved
inputs:
  topic: {type: tabular, columns: [topic]}
outputs:
  text_output: {type: sequence, column: text}
""",
    )
    source = load_dataset(str(spec))
    assert source.files[0].fmt == "arrow" and source.index.kinds == ["arrow-stream"]
    assert source.block_sizes == [3, 3, 2]
    samples = check_all(source)
    assert [s["inputs"]["text_output"] for s in samples] == texts
    fresh = load_dataset(str(spec))  # batch 2 read by its offset, from the cache
    assert fresh.files_counted == 0
    assert fresh.sample(7)["inputs"]["topic"] == {"topic": "t1"}


@pytest.fixture
def memory_folder(tmp_path: Path):
    """A folder of fsspec's in-memory filesystem, removed afterwards."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/eir-tests/{tmp_path.name}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_remote_files_through_fsspec(tmp_path: Path, memory_folder) -> None:
    fs, root = memory_folder
    texts = [document(i, n) for i, n in enumerate([600, 7, 1030, 2, 520])]
    for part, rows in enumerate([texts[:2], texts[2:]]):
        with fs.open(f"{root}/part{part}.parquet", "wb") as handle:
            pq.write_table(pa.table({"text": rows}), handle, row_group_size=2)
    spec = write_spec(
        tmp_path,
        f"""
files: [memory://{root}/part0.parquet, "memory://{root}/part*.parquet"]
outputs:
  text_output: {{type: sequence, column: text, chunk_words: 512, min_words: 5}}
""",
    )
    source = load_dataset(str(spec))
    assert [f.url for f in source.files] == [
        f"memory://{root}/part0.parquet",
        f"memory://{root}/part1.parquet",
    ]
    got = {s["sample_id"]: s["inputs"]["text_output"] for s in check_all(source)}
    assert got == expected_chunks(texts, 5)
    assert load_dataset(str(spec)).files_counted == 0


def test_remote_csv_and_save_to_disk_folder(tmp_path: Path, memory_folder) -> None:
    import gzip

    fs, root = memory_folder
    fs.pipe(f"{root}/table.csv.gz", gzip.compress(b"name,size\nant,1\nbee,2\n"))
    table = pa.table({"name": ["cat", "dog", "eel"], "size": [3, 4, 5]})
    with fs.open(f"{root}/saved/data-00000-of-00001.arrow", "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema)
        for batch in table.to_batches(max_chunksize=2):
            writer.write_batch(batch)
        writer.close()
    fs.pipe(f"{root}/saved/dataset_info.json", b'{"features": {}}')
    fs.pipe(
        f"{root}/spec.yaml",
        b"""
files: [table.csv.gz, saved]
inputs:
  animal: {type: sequence, column: name}
outputs:
  size: {type: tabular, columns: [size]}
""",
    )
    source = load_dataset(f"memory://{root}/spec.yaml")
    assert [f.fmt for f in source.files] == ["csv", "arrow"]
    assert source.block_sizes == [2, 2, 1]
    samples = check_all(source)
    assert [s["inputs"]["animal"] for s in samples] == [
        "ant",
        "bee",
        "cat",
        "dog",
        "eel",
    ]
    assert samples[4]["target_labels"]["size"] == {"size": 5}


def test_format_key_and_folders(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "a.txt").write_text("word\nalpha\nbeta\n")
    (tmp_path / "tables" / "_SUCCESS").write_text("")
    entries = "outputs:\n  word: {type: tabular, columns: [word]}\n"
    spec = write_spec(tmp_path, "files: tables/a.txt\n" + entries)
    with pytest.raises(ValueError, match=r"cannot tell the format of .*a\.txt"):
        load_dataset(str(spec))
    spec = write_spec(tmp_path, "files: tables\nformat: csv\n" + entries)
    source = load_dataset(str(spec))
    assert [Path(f.url).name for f in source.files] == ["a.txt"]
    assert source.sample(1)["target_labels"]["word"] == {"word": "beta"}


def test_counting_logs_progress(
    tmp_path: Path, memory_folder, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    fs, root = memory_folder
    for part in range(3):
        with fs.open(f"{root}/p{part}.parquet", "wb") as handle:
            pq.write_table(pa.table({"text": [document(part, 40)]}), handle)
    spec = write_spec(
        tmp_path,
        f"files: memory://{root}/*.parquet\n"
        "outputs:\n  t: {type: sequence, column: text, chunk_words: 16}\n",
    )
    monkeypatch.setattr(dataset_index, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level("INFO", logger="eirstream.datasets"):
        source = load_dataset(str(spec))
    assert source.num_samples == 9
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("eirstream.datasets.")
    ]
    assert any(line.startswith("counting word chunks: ") for line in lines)
    assert any("3 files, 3 blocks, 3 rows, 9 samples" in line for line in lines)


# =============================================================================
# The cache
# =============================================================================
def test_cache_is_read_and_a_touched_file_recounted(
    tmp_path: Path, index_cache: Path
) -> None:
    for part in range(2):
        rows = "".join(f"{part}-{i},x{i}\n" for i in range(3 + part))
        (tmp_path / f"part{part}.csv").write_text("name,value\n" + rows)
    spec = write_spec(
        tmp_path,
        """
files: "*.csv"
outputs:
  out: {type: tabular, columns: [name, value]}
""",
    )
    first = load_dataset(str(spec))
    assert (first.files_counted, first.num_samples) == (2, 7)
    assert len(list(index_cache.glob("*.idx"))) == 2
    second = load_dataset(str(spec))
    assert (second.files_counted, second.files_cached) == (0, 2)
    touched = tmp_path / "part1.csv"
    touched.write_text(touched.read_text() + "1-9,x9\n")
    stat = touched.stat()
    os.utime(touched, (stat.st_atime, stat.st_mtime + 10))
    third = load_dataset(str(spec))
    assert (third.files_counted, third.num_samples) == (1, 8)
    assert third.sample(7)["target_labels"]["out"] == {"name": "1-9", "value": "x9"}
    for cached in index_cache.glob("*.idx"):  # a damaged cache is counted again
        cached.write_bytes(b"garbage")
    assert load_dataset(str(spec)).files_counted == 2


def test_memory_stays_within_the_block_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [document(i, 300) for i in range(120)]
    pq.write_table(
        pa.table({"text": texts}), tmp_path / "many.parquet", row_group_size=4
    )
    spec = write_spec(
        tmp_path,
        """
files: many.parquet
cache_mb: 0.05
outputs:
  text_output: {type: sequence, column: text}
""",
    )
    source = load_dataset(str(spec))
    assert len(source.block_sizes) == 30
    reads = []
    original = dataset_files.FileReader.read

    def counting_read(self, kind, block, offset, columns):
        reads.append(block)
        return original(self, kind, block, offset, columns)

    monkeypatch.setattr(dataset_files.FileReader, "read", counting_read)
    bound = source.cache.max_bytes
    for block in range(30):  # shuffled within each row group: one read each
        indices = list(range(4 * block, 4 * block + 4))
        random.Random(block).shuffle(indices)
        for index in indices:
            assert source.sample(index)["inputs"]["text_output"] == texts[index]
            assert source.cache.nbytes <= bound
    assert reads == list(range(30))
    assert 0 < len(source.cache) < 30
    everywhere = list(range(120))
    random.Random(1).shuffle(everywhere)
    for index in everywhere:
        assert source.sample(index)["sample_id"] == f"r{index}"
        assert source.cache.nbytes <= bound


# =============================================================================
# Errors: one line, naming the problem, before anything serves
# =============================================================================
def write_small_parquet(folder: Path) -> None:
    table = pa.table({"text": ["a b c", "d e"], "label": ["x", "y"], "number": [1, 2]})
    pq.write_table(table, folder / "small.parquet")


GOOD_ENTRIES = """
inputs:
  caption: {type: sequence, column: text}
outputs:
  label: {type: tabular, columns: [label]}
"""

ERRORS = {
    "unknown entry key": (
        "files: small.parquet\ninputs:\n  clinical: {type: tabular, colums: [label]}\n"
        "outputs:\n  o: {type: tabular, columns: [label]}\n",
        "unknown key 'colums' in inputs.clinical; did you mean 'columns'?",
    ),
    "unknown top key": (
        "files: small.parquet\nouputs:\n  o: {type: tabular, columns: [label]}\n",
        "unknown key 'ouputs' in the spec; did you mean 'outputs'?",
    ),
    "unknown type": (
        "files: small.parquet\noutputs:\n  o: {type: tabluar, columns: [label]}\n",
        "did you mean 'tabular'?",
    ),
    "missing column": (
        "files: small.parquet\noutputs:\n  o: {type: sequence, column: txt}\n",
        "column 'txt' (outputs.o) is not in",
    ),
    "wrong type": (
        "files: small.parquet\ninputs:\n  picture: {type: image, column: number}\n"
        "outputs:\n  o: {type: tabular, columns: [label]}\n",
        "column 'number' (inputs.picture, image) in",
    ),
    "no file": ("files: nothing/*.parquet" + GOOD_ENTRIES, "matched no file"),
    "unreadable": ("files: broken.parquet" + GOOD_ENTRIES, "cannot read"),
    "bad yaml": ("files: [small.parquet\n" + GOOD_ENTRIES, "not valid YAML"),
    "two chunkings": (
        "files: small.parquet\ninputs:\n"
        "  a: {type: sequence, column: text, chunk_words: 4}\n"
        "outputs:\n  b: {type: sequence, column: text, chunk_words: 4}\n",
        "at most one entry may split its column into word chunks",
    ),
    "min above chunk": (
        "files: small.parquet\noutputs:\n"
        "  b: {type: sequence, column: text, chunk_words: 4, min_words: 9}\n",
        "min_words (9) is more than chunk_words (4)",
    ),
    "dataset dict": ("files: dict" + GOOD_ENTRIES, "DatasetDict folder; point files"),
    "hf without hub": (
        "files: hf://datasets/someone/something/data.parquet" + GOOD_ENTRIES,
        "huggingface_hub",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_clear_line(tmp_path: Path, case: str) -> None:
    write_small_parquet(tmp_path)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (tmp_path / "dict" / "train").mkdir(parents=True)
    (tmp_path / "dict" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    if case == "hf without hub" and "huggingface_hub" in sys.modules:
        pytest.skip("huggingface_hub is installed")
    text, expected = ERRORS[case]
    spec = write_spec(tmp_path, text)
    with pytest.raises(ValueError) as caught:
        load_dataset(str(spec))
    message = str(caught.value)
    assert message.startswith(f"--dataset {spec}: ")
    assert expected in message
    assert "\n" not in message
    if case == "missing column":
        assert "its columns: text, label, number (did you mean 'text'?)" in message
    if case == "wrong type":
        assert "holds int64; an image column holds PNG or JPEG bytes" in message
    if case == "unreadable":
        assert "broken.parquet" in message


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("PIL", "Pillow"),
        ("yaml", "PyYAML"),
        ("pyarrow", "pyarrow"),
        ("fsspec", "fsspec"),
    ],
)
def test_missing_optional_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    write_small_parquet(tmp_path)
    spec = write_spec(
        tmp_path,
        "files: small.parquet\ninputs:\n  p: {type: image, column: text}\n"
        + "outputs:\n  o: {type: tabular, columns: [label]}\n",
    )
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ValueError) as caught:
        load_dataset(str(spec))
    message = str(caught.value)
    assert message.startswith(f"--dataset {spec}: ")
    assert f"needs the Python package {package}" in message
    assert "pip install 'eirstream[datasets]'" in message


def test_only_an_image_may_be_both_an_input_and_an_output() -> None:
    # A diffusion model's input and target are one image under one name.
    image = {"type": "image", "column": "image", "size": [8, 8], "mode": "RGB"}
    spec = parse_spec(
        {"files": "x.parquet", "inputs": {"image": image}, "outputs": {"image": image}},
        "diffusion.yaml",
    )
    assert [(e.side, e.name) for e in spec.entries] == [
        ("inputs", "image"),
        ("outputs", "image"),
    ]
    text = {"type": "sequence", "column": "text"}
    with pytest.raises(DatasetProblem, match="'text' is both an input and an output"):
        parse_spec(
            {"files": "x.parquet", "inputs": {"text": text}, "outputs": {"text": text}},
            "text.yaml",
        )
    smaller = {**image, "size": [4, 4]}
    with pytest.raises(DatasetProblem, match="same column with the same size"):
        parse_spec(
            {
                "files": "x.parquet",
                "inputs": {"image": image},
                "outputs": {"image": smaller},
            },
            "mismatch.yaml",
        )
