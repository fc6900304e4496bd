"""examples/multimodal: every EIR modality from one simulated source.

Each payload is decoded with independent code (struct and the PNG decoder of
support/encodings.py); the samples are deterministic and carry the hidden
signal a model is meant to learn. The server serves this source in
tests/server/test_multimodal_server.py, and the real eirtrain trains on it
in tests/eirtrain/test_multimodal_eirtrain.py.
"""

import base64
import statistics
import struct
from collections import Counter

import pytest
from support.encodings import decode_png

from eirstream import eirformat
from examples.multimodal.source import (
    CENSOR_AT,
    DATASET_INFO,
    GROUP_WORDS,
    GROUPS,
    N_SNPS,
    SEVERITY_WORDS,
    MultimodalSource,
    make_source,
    square_origin,
)


def decode(sample: dict) -> dict:
    """Every modality of a sample as plain Python values."""
    inputs, labels = sample["inputs"], sample["target_labels"]
    omics = base64.b64decode(inputs["genotypes"], validate=True)
    signal = base64.b64decode(inputs["signal"], validate=True)
    profile = base64.b64decode(labels["profile"]["profile"], validate=True)
    return {
        "notes": inputs["notes"].split(" "),
        "clinical": inputs["clinical"],
        "omics": [list(omics[row * N_SNPS : (row + 1) * N_SNPS]) for row in range(4)],
        "signal": struct.unpack(f"<{len(signal) // 4}f", signal),
        "scan": decode_png(inputs["scan"]),
        "diagnosis": labels["diagnosis"],
        "profile": struct.unpack(f"<{len(profile) // 4}f", profile),
        "mask": decode_png(labels["mask"]["mask"]),
        "summary": labels["summary"]["summary"].split(" "),
        "outcome": labels["outcome"],
    }


def genotypes_of(omics: list[list[int]]) -> list[int]:
    """One-hot columns back to genotypes (3 = missing)."""
    return [next(row for row in range(4) if omics[row][snp]) for snp in range(N_SNPS)]


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return make_source(seed=0, sequence_length=64, max_iterations=None).samples(
        range(300)
    )


def test_info_and_samples_are_what_eir_expects(samples: list[dict]) -> None:
    eirformat.check_dataset_info(DATASET_INFO)
    assert set(DATASET_INFO["inputs"]) == {
        "notes",
        "clinical",
        "genotypes",
        "signal",
        "scan",
    }
    assert {n: e["type"] for n, e in DATASET_INFO["outputs"].items()} == {
        "diagnosis": "tabular",
        "profile": "array",
        "mask": "image",
        "summary": "sequence",
        "outcome": "survival",
    }
    for sample in samples:
        eirformat.check_sample(sample, DATASET_INFO)


def test_each_payload_decodes_to_its_declared_shape(samples: list[dict]) -> None:
    for index, sample in enumerate(samples[:50]):
        assert sample["sample_id"] == f"sample_{index}"
        d = decode(sample)
        assert len(d["notes"]) == 8
        assert set(d["clinical"]) == {"site", "age", "marker"}
        assert isinstance(d["clinical"]["site"], str)
        assert all(sum(d["omics"][r][snp] for r in range(4)) == 1 for snp in range(32))
        assert len(d["signal"]) == 4 * 16
        assert (d["scan"]["height"], d["scan"]["width"], d["scan"]["channels"]) == (
            16,
            16,
            3,
        )
        assert set(d["diagnosis"]) == {"group", "score"}
        assert len(d["profile"]) == 16
        assert (d["mask"]["height"], d["mask"]["width"], d["mask"]["channels"]) == (
            16,
            16,
            1,
        )
        assert len(d["summary"]) == 3
        assert set(d["outcome"]) == {"event", "time"}
        # a sequence output also travels as an input of the same name
        assert sample["inputs"]["summary"] == " ".join(d["summary"])


def test_samples_depend_on_seed_and_index_only() -> None:
    first = make_source(seed=4, sequence_length=64, max_iterations=50)
    again = make_source(seed=4, sequence_length=512, max_iterations=None)
    assert [first.sample(i) for i in (7, 3, 7)] == [again.sample(i) for i in (7, 3, 7)]
    assert first.samples([3, 7]) == [again.sample(3), again.sample(7)]
    other = make_source(seed=5, sequence_length=64, max_iterations=50)
    differing = sum(first.sample(i) != other.sample(i) for i in range(20))
    assert differing == 20


def test_sample_ids_map_to_indices_only_within_the_bound() -> None:
    bounded = MultimodalSource(seed=0, max_iterations=10)
    assert bounded.num_samples == 10
    assert bounded.index_of("sample_9") == 9
    assert bounded.index_of("sample_10") is None
    assert bounded.index_of("row-3") is None
    ids = ["sample_0", "sample_9", "sample_10", "sample_3", "x", "sample_03"]
    assert bounded.indices_of(ids) == {0, 9, 3}
    assert bounded.indices_of(ids) == {bounded.index_of(i) for i in ids} - {None}
    assert MultimodalSource(seed=0).num_samples is None
    with pytest.raises(ValueError, match="max_iterations must be 0 or more"):
        MultimodalSource(max_iterations=-1)


def test_outputs_follow_from_the_inputs(samples: list[dict]) -> None:
    """The hidden group and severity are recoverable from the inputs and set
    the outputs: what makes the example learnable."""
    snp_agreement = []
    markers, scores = [], []
    for sample in samples:
        d = decode(sample)
        group = GROUPS.index(d["diagnosis"]["group"])
        # scan: the bright square sits where the group puts it, and the mask
        # output is exactly that square
        top, left = square_origin(group)
        square = {(y, x) for y in range(top, top + 4) for x in range(left, left + 4)}
        bright = {
            (y, x)
            for y, row in enumerate(d["scan"]["pixels"])
            for x, (r, g, _) in enumerate(row)
            if r >= 120 and g >= 120
        }
        assert bright == square
        lit = {
            (y, x)
            for y, row in enumerate(d["mask"]["pixels"])
            for x, (v,) in enumerate(row)
            if v == 255
        }
        assert lit == square
        # notes and summary name the same group and severity
        summary = d["summary"]
        assert summary[:2] == ["group", GROUPS[group].lower()]
        assert summary[2] in SEVERITY_WORDS and summary[2] in d["notes"]
        assert {w for w in d["notes"] if w in GROUP_WORDS} <= {GROUP_WORDS[group]}
        # omics: SNPs 0-7 mostly carry the group index
        genotypes = genotypes_of(d["omics"])
        snp_agreement += [g == group for g in genotypes[:8]]
        markers.append(d["clinical"]["marker"])
        scores.append(d["diagnosis"]["score"] - 2 * group)
        # survival: censored at CENSOR_AT, events only before it
        time, event = d["outcome"]["time"], d["outcome"]["event"]
        assert 0 <= time <= CENSOR_AT
        assert event in ("0", "1")
        assert (event == "0") == (time == CENSOR_AT)
    assert sum(snp_agreement) / len(snp_agreement) > 0.8
    assert statistics.correlation(markers, scores) > 0.9
    groups = Counter(s["target_labels"]["diagnosis"]["group"] for s in samples)
    assert set(groups) == set(GROUPS) and min(groups.values()) > 60


def test_severity_shortens_survival(samples: list[dict]) -> None:
    by_severity: dict[str, list[float]] = {w: [] for w in SEVERITY_WORDS}
    for sample in samples:
        d = decode(sample)
        by_severity[d["summary"][2]].append(d["outcome"]["time"])
    means = [statistics.mean(by_severity[w]) for w in SEVERITY_WORDS]
    assert means[0] > means[1] > means[2]
