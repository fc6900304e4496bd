"""Helpers of the `--dataset` tests: small pictures, their decoding, specs, a
CSV of people, and a corpus of documents cut into word chunks.

pyarrow and Pillow are imported when a helper needs them: a test file skips
itself (pytest.importorskip) before it calls one when either is missing.
The `index_cache` fixture (tests/conftest.py) gives each test its own
index cache.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any


def image_bytes(
    kind: str,
    size: tuple[int, int] = (6, 4),
    mode: str = "RGB",
    colour: Any = None,
) -> bytes:
    """A small picture of one colour as PNG or JPEG file bytes (size is
    width, height); without `colour`, a red for RGB and grey 128 else."""
    from PIL import Image

    if colour is None:
        colour = (200, 30, 60) if mode == "RGB" else 128
    picture = Image.new(mode, size, colour)
    out = io.BytesIO()
    picture.save(out, format=kind)
    return out.getvalue()


def decoded(value: str) -> Any:
    """The Pillow image of a base64 image value, loaded."""
    from PIL import Image

    picture = Image.open(io.BytesIO(base64.b64decode(value)))
    picture.load()
    return picture


def write_spec(folder: Path, text: str) -> Path:
    """`text` written as folder/spec.yaml."""
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def write_people(folder: Path, rows: int) -> Path:
    """A CSV of `rows` people (seeded: the same every time) and the --dataset
    spec serving it: tabular in (age, bmi, sex), tabular out (outcome)."""
    rng = random.Random(11)
    lines = ["age,bmi,sex,outcome"]
    for _ in range(rows):
        age, bmi = rng.randint(20, 80), round(rng.uniform(17, 35), 1)
        outcome = "high" if age / 80 + bmi / 35 > 1.2 else "low"
        lines.append(f"{age},{bmi},{rng.choice('FM')},{outcome}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "people.csv").write_text("\n".join(lines) + "\n")
    return write_spec(
        folder,
        "files: people.csv\n"
        "inputs:\n"
        "  clinical: {type: tabular, columns: [age, bmi, sex]}\n"
        "outputs:\n"
        "  outcome: {type: tabular, columns: [outcome]}\n",
    )


def document(number: int, words: int) -> str:
    """A text whose words say which document and position they are."""
    return " ".join(f"d{number}w{k}" for k in range(words))


# Words per document, by Parquet file and row group (see write_documents)
LENGTHS = [[5, 1100, 19, 2000, 530], [1024, 0, 40, 513], [700, 20, 1100], [3, 512, 60]]
CHUNK_SPEC = """
files: data/*.parquet
inputs:
  caption: {type: sequence, column: text}
  meta: {type: tabular, columns: [label, words]}
outputs:
  text_output: {type: sequence, column: text, chunk_words: 512, min_words: %d}
"""


def write_documents(folder: Path) -> list[str]:
    """Two Parquet files of several row groups under folder/data, documents
    of LENGTHS words; the documents in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir()
    texts: list[str] = []
    for part, groups in enumerate([LENGTHS[:2], LENGTHS[2:]]):
        rows = [n for group in groups for n in group]
        docs = [document(len(texts) + i, n) for i, n in enumerate(rows)]
        texts += docs
        table = pa.table(
            {
                "text": docs,
                "label": [f"L{n % 3}" for n in rows],
                "words": rows,
            }
        )
        writer = pq.ParquetWriter(folder / "data" / f"part{part}.parquet", table.schema)
        start = 0
        for group in groups:
            writer.write_table(table.slice(start, len(group)))
            start += len(group)
        writer.close()
    return texts


def expected_chunks(texts: list[str], min_words: int) -> dict[str, str]:
    """Sample id -> text of each word chunk of 512 words, computed from the
    documents directly."""
    out = {}
    for row, text in enumerate(texts):
        words = text.split()
        for chunk, at in enumerate(range(0, len(words), 512)):
            piece = words[at : at + 512]
            if len(piece) >= min_words:
                out[f"r{row}c{chunk}"] = " ".join(piece)
    return out
