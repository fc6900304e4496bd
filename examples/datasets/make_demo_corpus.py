"""Write a small text corpus to serve with --dataset, with no download.

    python examples/datasets/make_demo_corpus.py
    python simulation_streamer.py --dataset examples/datasets/demo/corpus.yaml --shuffle
    eirtrain --global_configs examples/datasets/demo/globals.yaml \
      --fusion_configs examples/datasets/demo/fusion.yaml \
      --output_configs examples/datasets/demo/output.yaml

The corpus is two Parquet files of documents (5 to 2,000 words each, in
several row groups), laid out as a FineWeb shard is: one `text` column, one
document per row. The words come from a seeded generator, so every run writes
the same files. corpus.yaml cuts each document into chunks of words, one
sample per chunk, for the sequence output `text_output`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBJECTS = ["the river", "a heart", "the runner", "my sister", "the old town", "a bird"]
VERBS = ["beats", "runs", "sleeps", "waits", "sings", "climbs", "rests", "grows"]
PLACES = ["at dawn", "in the rain", "by the sea", "after lunch", "all night"]


def document(rng: random.Random, words: int) -> str:
    """A document of about `words` words, in short sentences."""
    out: list[str] = []
    while len(out) < words:
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}."
        out += sentence.split()
    return " ".join(out[:words])


def write_corpus(folder: Path, files: int, documents: int, seed: int) -> int:
    """`files` Parquet files of `documents` documents each; the words written."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        sys.exit(
            "needs pyarrow: pip install 'eirstream[datasets]' (or pip install pyarrow)"
        )
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for number in range(files):
        lengths = [rng.randint(5, 2000) for _ in range(documents)]
        texts = [document(rng, n) for n in lengths]
        total += sum(lengths)
        table = pa.table(
            {"text": texts, "id": [f"{number}-{k}" for k in range(documents)]}
        )
        pq.write_table(table, folder / f"part-{number}.parquet", row_group_size=16)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--documents", type=int, default=64, help="per file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "demo" / "data")
    args = parser.parse_args(argv)
    words = write_corpus(args.out, args.files, args.documents, args.seed)
    print(
        f"wrote {args.files} Parquet files of {args.documents} documents "
        f"({words:,} words) to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
