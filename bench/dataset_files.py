"""The datasets bench/datasets.py serves, generated into a folder.

A FineWeb-like text corpus (Parquet, one `text` column of random-word
documents) and its spec, which cuts documents into word chunks; a larger
corpus written fast for start and memory; and a Parquet of 256x256 RGB
JPEGs in Hugging Face's Image layout ({bytes, path}) with a label, whose
spec resizes them to 128x128. pyarrow and Pillow are imported only here, by
the functions that need them.
"""

from __future__ import annotations

import io
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path

CHUNK_WORDS, MIN_WORDS = 64, 20
IMAGE_SIDE, IMAGE_SIZE = 256, (128, 128)
BIG_POOL_DOCUMENTS = 1000  # documents of one row group of the big corpus
BIG_FILES = 8


def vocabulary(rng: random.Random, size: int = 8192) -> list[str]:
    """`size` random lowercase words of 2 to 9 letters."""
    letters = string.ascii_lowercase
    return ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(size)]


def documents(rng: random.Random, words: list[str], count: int) -> list[str]:
    """`count` documents of 5 to 2,000 words drawn from `words`."""
    return [" ".join(rng.choices(words, k=rng.randint(5, 2000))) for _ in range(count)]


@dataclass
class Corpus:
    spec: Path
    files: int
    documents: int
    row_groups: int
    nbytes: int  # of the Parquet files


def corpus_spec(folder: Path) -> Path:
    spec = folder / "corpus.yaml"
    spec.write_text(
        "files: data/*.parquet\n"
        "outputs:\n"
        "  text_output: {type: sequence, column: text, "
        f"chunk_words: {CHUNK_WORDS}, min_words: {MIN_WORDS}}}\n"
    )
    return spec


def write_text_corpus(
    folder: Path, files: int, per_file: int, row_group: int, seed: int
) -> Corpus:
    """A FineWeb-like corpus: `files` Parquet files (snappy, the default) of
    `per_file` random-word documents in row groups of `row_group`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = vocabulary(rng)
    data = folder / "data"
    data.mkdir(parents=True)
    for number in range(files):
        table = pa.table({"text": documents(rng, words, per_file)})
        pq.write_table(
            table, data / f"part-{number:03d}.parquet", row_group_size=row_group
        )
    groups = files * math.ceil(per_file / row_group)
    size = sum(path.stat().st_size for path in data.glob("*.parquet"))
    return Corpus(corpus_spec(folder), files, files * per_file, groups, size)


def write_big_corpus(folder: Path, target_bytes: int, seed: int) -> Corpus:
    """At least `target_bytes` of Parquet text, written fast: one row group of
    BIG_POOL_DOCUMENTS random-word documents, written again and again over
    BIG_FILES files, uncompressed and without a dictionary (so that the files
    are as large as the text, and every document is counted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pool = pa.table({"text": documents(rng, vocabulary(rng), BIG_POOL_DOCUMENTS)})
    groups = max(BIG_FILES, math.ceil(target_bytes / pool.nbytes))
    per_file = math.ceil(groups / BIG_FILES)
    data = folder / "data"
    data.mkdir(parents=True)
    for number in range(BIG_FILES):
        path = data / f"part-{number:03d}.parquet"
        with pq.ParquetWriter(
            path,
            pool.schema,
            compression="none",
            use_dictionary=False,
            write_statistics=False,
        ) as writer:
            for _ in range(per_file):
                writer.write_table(pool, row_group_size=BIG_POOL_DOCUMENTS)
    size = sum(path.stat().st_size for path in data.glob("*.parquet"))
    groups = BIG_FILES * per_file
    return Corpus(
        corpus_spec(folder), BIG_FILES, groups * BIG_POOL_DOCUMENTS, groups, size
    )


def jpeg(rng: random.Random) -> bytes:
    """A 256x256 RGB JPEG (quality 90) of gradients and noise."""
    from PIL import Image, ImageFilter

    side = IMAGE_SIDE
    red = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize((side, side))
    green = Image.radial_gradient("L").resize((side, side))
    noise = Image.effect_noise((side, side), rng.uniform(20, 80))
    blue = noise.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_image_dataset(folder: Path, images: int, rows: int, seed: int) -> Path:
    """A Parquet of `rows` rows ({bytes, path} images, `images` distinct ones
    in turn, and a label), in row groups of 64; its spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pictures = [jpeg(rng) for _ in range(images)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    column = pa.array(
        [
            {"bytes": pictures[k % images], "path": f"image-{k}.jpg"}
            for k in range(rows)
        ],
        type=image_type,
    )
    labels = [rng.choice(["cat", "dog", "bird"]) for _ in range(rows)]
    folder.mkdir(parents=True)
    table = pa.table({"image": column, "label": labels})
    pq.write_table(table, folder / "images.parquet", row_group_size=64)
    spec = folder / "images.yaml"
    height, width = IMAGE_SIZE
    spec.write_text(
        "files: images.parquet\n"
        "inputs:\n"
        f"  picture: {{type: image, column: image, size: [{height}, {width}], "
        "mode: RGB}\n"
        "outputs:\n"
        "  label: {type: tabular, columns: [label]}\n"
    )
    return spec
