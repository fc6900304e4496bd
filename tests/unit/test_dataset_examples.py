"""The examples of examples/datasets/: EIR's three scaling tutorials on their
real data (FineWeb, a GPT on FineWeb, WikiArt diffusion).

Each spec is pointed at a tiny stand-in dataset with the real one's columns,
written with pyarrow (and Pillow, for the paintings) into tmp_path, and must
serve exactly the inputs and outputs that its EIR configs name, with samples
EIR accepts. The index cache lives in tmp_path too; nothing is downloaded.
"""

import random
import re
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
yaml = pytest.importorskip("yaml")
pytest.importorskip("PIL.Image")

import pyarrow.parquet as pq  # noqa: E402
from support import ROOT  # noqa: E402
from support.datasets import decoded, image_bytes  # noqa: E402

from eirstream import eirformat  # noqa: E402
from eirstream.datasets.source import load_dataset  # noqa: E402

EXAMPLES = ROOT / "examples" / "datasets"
URL = "ws://localhost:8000/ws"
CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}

pytestmark = pytest.mark.usefixtures("index_cache")


# =============================================================================
# Stand-ins for the real datasets, with their columns
# =============================================================================
def fineweb_text(rng: random.Random, number: int, words: int) -> str:
    """A web page of `words` words that say where they are, with the line
    breaks and double spaces of real pages between them."""
    out = []
    for k in range(words):
        out.append(f"p{number}w{k}")
        out.append(rng.choice([" ", " ", " ", "  ", "\n", "\n\n"]))
    return "".join(out[:-1]) if out else ""


def write_fineweb(folder: Path) -> Path:
    """A FineWeb shard's layout: `text` among FineWeb's other columns, pages
    from under 20 words to several 512-word chunks, in several row groups."""
    rng = random.Random(11)
    lengths = [3, 19, 20, 63, 64, 84, 83, 512, 531, 1100, 1600]
    lengths += [rng.randint(1, 1200) for _ in range(13)]
    count = len(lengths)
    table = pa.table(
        {
            "text": [fineweb_text(rng, n, w) for n, w in enumerate(lengths)],
            "id": [
                f"<urn:uuid:{n:08x}-0000-0000-0000-000000000000>" for n in range(count)
            ],
            "dump": ["CC-MAIN-2024-10"] * count,
            "url": [f"https://example.org/page/{n}" for n in range(count)],
            "date": ["2024-02-21T10:11:12Z"] * count,
            "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/x.warc.gz"]
            * count,
            "language": ["en"] * count,
            "language_score": pa.array([0.93] * count, pa.float64()),
            "token_count": pa.array([int(w * 1.3) for w in lengths], pa.int64()),
        }
    )
    path = folder / "000_00000.parquet"
    pq.write_table(table, path, row_group_size=5)
    return path


def painting(rng: random.Random, kind: str, size: tuple[int, int], mode: str) -> bytes:
    """A small picture as PNG or JPEG file bytes (size is width, height)."""
    colour = tuple(rng.randrange(256) for _ in range(CHANNELS.get(mode, 3)))
    return image_bytes(kind, size, mode, colour if mode != "L" else colour[0])


# Artificio/WikiArt's images are JPEG; PNGs of other modes test the decoding.
PAINTINGS = [
    ("JPEG", (40, 30), "RGB"),
    ("JPEG", (20, 52), "L"),
    ("PNG", (33, 33), "RGBA"),
    ("PNG", (256, 180), "RGB"),
]


def write_wikiart(folder: Path) -> Path:
    """Artificio/WikiArt's layout: the painting in Hugging Face's Image struct
    {bytes, path}, its `description`, labels, and an embedding column."""
    rng = random.Random(5)
    rows = 10
    styles = ["Impressionism", "Baroque", "Ukiyo-e", "Cubism"]
    genres = ["landscape", "portrait", "still life"]
    images = [
        {"bytes": painting(rng, *PAINTINGS[i % len(PAINTINGS)]), "path": f"{i}.jpg"}
        for i in range(rows)
    ]
    styles_of = [rng.choice(styles) for _ in range(rows)]
    genres_of = [rng.choice(genres) for _ in range(rows)]
    table = pa.table(
        {
            "title": [f"Study {i}" for i in range(rows)],
            "artist": [f"Painter {i % 3}" for i in range(rows)],
            "date": [str(1850 + i) for i in range(rows)],
            "genre": genres_of,
            "style": styles_of,
            "description": [
                f"Painter {i % 3} / Study {i} / {styles_of[i]} / {genres_of[i]}"
                for i in range(rows)
            ],
            "filename": [f"painter-{i % 3}_study-{i}.jpg" for i in range(rows)],
            "image": images,
            "embeddings_pca512": pa.array(
                [[rng.random() for _ in range(512)] for _ in range(rows)],
                pa.list_(pa.float32()),
            ),
        }
    )
    path = folder / "train-00000-of-00004.parquet"
    pq.write_table(table, path, row_group_size=4)
    return path


# example folder -> (its spec, a writer of its stand-in data)
EXAMPLE_DATA = {
    "fineweb": ("fineweb.yaml", write_fineweb),
    "gpt": ("gpt.yaml", write_fineweb),
    "wikiart": ("wikiart.yaml", write_wikiart),
}


# =============================================================================
# Reading the examples
# =============================================================================
def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def example_spec(example: str) -> dict[str, Any]:
    return read_yaml(EXAMPLES / example / EXAMPLE_DATA[example][0])


def eir_configs(example: str) -> dict[str, dict[str, Any]]:
    """The example's EIR configs by kind: "globals", "fusion", and one key
    per input ("input:<name>") and output ("output:<name>")."""
    configs: dict[str, dict[str, Any]] = {}
    for path in sorted((EXAMPLES / example).glob("*.yaml")):
        if path.name == EXAMPLE_DATA[example][0]:
            continue
        config = read_yaml(path)
        if "input_info" in config:
            configs[f"input:{config['input_info']['input_name']}"] = config
        elif "output_info" in config:
            configs[f"output:{config['output_info']['output_name']}"] = config
        elif "basic_experiment" in config:
            configs["globals"] = config
        elif "model_type" in config:
            configs["fusion"] = config
        else:
            raise AssertionError(f"{path}: neither a spec nor an EIR config")
    return configs


def side(configs: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The input or output configs by name."""
    return {
        key.split(":", 1)[1]: config
        for key, config in configs.items()
        if key.startswith(f"{kind}:")
    }


def spec_on(example: str, data: Path, folder: Path, drop_inputs=()) -> Path:
    """The example's spec with `files` pointed at `data`, minus some inputs."""
    raw = example_spec(example)
    raw["files"] = str(data)
    for name in drop_inputs:
        del raw["inputs"][name]
    path = folder / f"{example}-standin.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load(example: str, tmp_path: Path, drop_inputs=()):
    data = EXAMPLE_DATA[example][1](tmp_path)
    spec = spec_on(example, data, tmp_path, drop_inputs)
    return load_dataset(str(spec))


def spread(count: int, few: int = 6) -> list[int]:
    """A few indices from first to last."""
    return sorted({round(k * (count - 1) / (few - 1)) for k in range(few)})


# =============================================================================
# Every example YAML parses; the README names files that exist
# =============================================================================
# (not what a download put under an example's data/ folder)
ALL_YAML = sorted(
    p for p in EXAMPLES.rglob("*.yaml") if "data" not in p.relative_to(EXAMPLES).parts
)


@pytest.mark.parametrize(
    "path", ALL_YAML, ids=[str(p.relative_to(EXAMPLES)) for p in ALL_YAML]
)
def test_every_example_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(read_yaml(path), dict)


def test_the_readme_names_example_files_that_exist() -> None:
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"examples/datasets/[\w./-]+\.(?:yaml|py)", text))
    assert len(named) >= 3 * 4
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing


# =============================================================================
# The spec serves what the EIR configs use
# =============================================================================
@pytest.mark.parametrize(
    "example",
    ["fineweb", "gpt", "wikiart"],
)
def test_spec_serves_exactly_what_its_eir_configs_use(
    example: str, tmp_path: Path
) -> None:
    configs = eir_configs(example)
    inputs, outputs = side(configs, "input"), side(configs, "output")
    source = load(example, tmp_path)
    try:
        info = source.dataset_info()
        eirformat.check_dataset_info(info)
        served_in = {name: entry["type"] for name, entry in info["inputs"].items()}
        served_out = {name: entry["type"] for name, entry in info["outputs"].items()}
        assert served_in == {
            n: c["input_info"]["input_type"] for n, c in inputs.items()
        }
        assert served_out == {
            n: c["output_info"]["output_type"] for n, c in outputs.items()
        }
        # an image's size and mode in the spec are its config's
        for kind, served, named in (
            ("input", info["inputs"], inputs),
            ("output", info["outputs"], outputs),
        ):
            for name, entry in served.items():
                if entry["type"] == "image":
                    typed = named[name][f"{kind}_type_info"]
                    assert entry["mode"] == typed["mode"]
                    assert entry["shape"] == [*typed["size"], CHANNELS[typed["mode"]]]
        assert source.num_samples > 0
        for sample in source.samples(spread(source.num_samples)):
            eirformat.check_sample(sample, info)
    finally:
        source.close()


def test_wikiart_input_and_output_read_the_same_painting_alike() -> None:
    """Whatever the spec ends up accepting, EIR's diffusion needs the input
    and the output to be the same picture: one column, one size, one mode."""
    spec = example_spec("wikiart")
    assert spec["inputs"]["image"] == spec["outputs"]["image"]
    assert spec["inputs"]["caption"] == {"type": "sequence", "column": "description"}
    configs = eir_configs("wikiart")
    typed_in = configs["input:image"]["input_type_info"]
    typed_out = configs["output:image"]["output_type_info"]
    assert typed_in["size"] == typed_out["size"] == spec["outputs"]["image"]["size"]
    assert typed_in["mode"] == typed_out["mode"] == spec["outputs"]["image"]["mode"]
    assert typed_in["auto_augment"] is False  # input and target stay one picture
    assert typed_out["loss"] == "diffusion"


def test_wikiart_paintings_and_captions_load(tmp_path: Path) -> None:
    """Everything of the WikiArt spec but the input copy of the painting:
    Image structs of JPEG and PNG in any mode become 128 x 128 RGB PNGs,
    captions come from `description`."""
    source = load("wikiart", tmp_path, drop_inputs=["image"])
    try:
        info = source.dataset_info()
        assert info == {
            "inputs": {"caption": {"type": "sequence"}},
            "outputs": {
                "image": {"type": "image", "shape": [128, 128, 3], "mode": "RGB"}
            },
        }
        table = pq.read_table(tmp_path / "train-00000-of-00004.parquet")
        descriptions = table.column("description").to_pylist()
        assert source.num_samples == len(descriptions)
        for sample in source.samples(range(source.num_samples)):
            eirformat.check_sample(sample, info)
            row = int(sample["sample_id"][1:])
            assert sample["inputs"]["caption"] == descriptions[row]
            picture = decoded(sample["target_labels"]["image"]["image"])
            assert (picture.format, picture.mode, picture.size) == (
                "PNG",
                "RGB",
                (128, 128),
            )
    finally:
        source.close()


# =============================================================================
# The text examples cut pages as the tutorials do
# =============================================================================
@pytest.mark.parametrize(("example", "words"), [("fineweb", 64), ("gpt", 512)])
def test_text_examples_cut_pages_into_chunks_of_words(
    example: str, words: int, tmp_path: Path
) -> None:
    entry = example_spec(example)["outputs"]["text_output"]
    assert (entry["chunk_words"], entry["min_words"]) == (words, 20)
    # as many words as the output's max_length has tokens
    output = eir_configs(example)["output:text_output"]
    assert output["output_type_info"]["max_length"] == words

    source = load(example, tmp_path)
    try:
        table = pq.read_table(tmp_path / "000_00000.parquet", columns=["text"])
        pages = [text.split() for text in table.column("text").to_pylist()]
        chunks = {
            (row, k): page[k * words : (k + 1) * words]
            for row, page in enumerate(pages)
            for k in range(-(-len(page) // words))
        }
        kept = {key: chunk for key, chunk in chunks.items() if len(chunk) >= 20}
        assert source.num_samples == len(kept)
        info = source.dataset_info()
        served = {}
        for sample in source.samples(range(source.num_samples)):
            eirformat.check_sample(sample, info)
            row, chunk = re.fullmatch(r"r(\d+)c(\d+)", sample["sample_id"]).groups()
            served[int(row), int(chunk)] = sample["inputs"]["text_output"].split()
        assert served == kept
    finally:
        source.close()


# =============================================================================
# The EIR configs keep to what eirtrain 0.25.0 accepts, and to the tutorials
# =============================================================================
# example -> (batch_size, dataloader_workers): the tutorials' (the GPT's two
# workers per rank are ours)
TUTORIAL_BATCHES = {"fineweb": (256, 4), "gpt": (64, 2), "wikiart": (128, 8)}


@pytest.mark.parametrize("example", sorted(EXAMPLE_DATA))
def test_eir_configs_keep_to_eirtrain_and_the_tutorial(example: str) -> None:
    configs = eir_configs(example)
    assert {"globals", "fusion"} <= set(configs)
    for key, config in configs.items():
        if key.startswith("input:"):
            assert config["input_info"]["input_source"] == URL
        if key.startswith("output:"):
            assert config["output_info"]["output_source"] == URL
            typed = config.get("output_type_info", {})
            assert "generated_sequence_length" not in typed  # eirtrain rejects it
    glob = configs["globals"]
    basic = glob["basic_experiment"]
    assert (basic["batch_size"], basic["dataloader_workers"]) == TUTORIAL_BATCHES[
        example
    ]
    checks = glob["evaluation_checkpoint"]
    assert checks["checkpoint_interval"] % checks["sample_interval"] == 0
    setup = glob.get("data_preparation", {}).get("streaming_setup_samples", 10000)
    assert basic["valid_size"] < setup
    assert basic["output_folder"].startswith("runs/")


def test_the_gpt_trains_on_two_gpus_and_stops_by_the_stream() -> None:
    glob = eir_configs("gpt")["globals"]
    assert glob["accelerator"]["strategy"] == "ddp"
    assert glob["accelerator"]["devices"] == 2
    # eir-dl early-stops on rank 0 alone; the bounded stream ends the run
    assert glob["training_control"]["early_stopping_patience"] >= 10**6
    output = eir_configs("gpt")["output:text_output"]["model_config"]
    assert output["embedding_dim"] == 512
    assert output["model_init_config"]["num_layers"] == 4
