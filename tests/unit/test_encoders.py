"""eirstream.encoders and eirformat: every modality decoded back by
independent code, and the checks of a sample's layout.

Arrays and omics are decoded with `struct`; PNGs with the small decoder in
support/encodings.py (PNG chunk walk, CRC check, zlib inflate, the five PNG
unfilters), written from the PNG specification and sharing nothing with the
encoder. EIR's own deserializers decode the same payloads in
tests/eirtrain/test_eir_decoders.py.
"""

import base64
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.encodings import (
    as_float32,
    decode_floats,
    decode_png,
    flat,
    gradient_image,
    pixel_tuples,
    random_image,
)

from data_simulator import SimulatedHealthData
from eirstream import eirformat
from eirstream import encoders as enc


# =============================================================================
# array
# =============================================================================
def test_array_is_float32_c_order_base64() -> None:
    values = [[0.1, 0.2, 0.3], [1.5, -2.25, 1e-8]]
    text = enc.encode_array(values)
    assert decode_floats(text) == [as_float32(v) for v in flat(values)]
    assert len(base64.b64decode(text)) == 6 * 4
    assert enc.infer_shape(values) == (2, 3)


def test_array_accepts_ints_tuples_and_a_flat_list_with_its_shape() -> None:
    nested = ((1, 2), (3, 4), (5, 6))
    assert enc.encode_array(nested) == enc.encode_array([1, 2, 3, 4, 5, 6], [3, 2])
    assert decode_floats(enc.encode_array(nested)) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert enc.encode_array(nested, shape=(3, 2)) == enc.encode_array(nested)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
)
def test_array_round_trips_any_shape(shape: list[int], data) -> None:
    count = math.prod(shape)
    values = data.draw(
        st.lists(
            st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=False).map(
                float
            ),
            min_size=count,
            max_size=count,
        )
    )
    nested = values
    for size in reversed(shape[1:]):
        nested = [nested[i : i + size] for i in range(0, len(nested), size)]
    assert enc.infer_shape(nested) == tuple(shape)
    assert decode_floats(enc.encode_array(nested)) == values


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([[1.0, 2.0], [3.0]], "array[1] has 1 entries, but array[0] has 2"),
        ([[1.0, 2.0], 3.0], "array[1] is a single value (3.0), but array[0] is a list"),
        ([[1.0, [2.0]], [3.0, 4.0]], "array[0][1] is a list, but array[0][0] is a"),
        ([[[1, 2], [3, 4]], [[5, 6], [7]]], "array[1][1] has 1 entries"),
        ([], "array has no values (shape (0,))"),
        ([[], []], "array has no values (shape (2, 0))"),
        (3.5, "must be a nested list (or tuple) of values, got float"),
        ("1,2,3", "got str"),
        ([[1.0, "2"]], "array[0][1] must be a number, got str '2'"),
        ([[1.0, None]], "array[0][1] must be a number, got NoneType"),
        ([True, False], "array[0] must be a number, got bool"),
        ([[0.0, math.nan]], "array[0][1] is nan, which float32 cannot hold"),
        ([math.inf], "array[0] is inf"),
        ([[1.0], [1e39]], "array[1][0] is 1e+39, which float32 cannot hold"),
    ],
)
def test_bad_arrays_are_rejected_with_the_position(values, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        enc.encode_array(values)
    assert fragment in str(caught.value)


def test_array_shape_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\) \(4 values\).*\(3, 2\)"):
        enc.encode_array([[1, 2], [3, 4]], shape=[3, 2])
    with pytest.raises(ValueError, match="positive integers"):
        enc.encode_array([1, 2], shape=[2, 0])


# =============================================================================
# omics
# =============================================================================
def test_omics_is_one_byte_per_bool() -> None:
    values = [[True, False, True], [False, False, True]]
    data = base64.b64decode(enc.encode_omics(values), validate=True)
    assert list(data) == [1, 0, 1, 0, 0, 1]
    assert enc.encode_omics([[1, 0, 1], [0, 0, 1]]) == enc.encode_omics(values)


def test_one_hot_genotypes_is_eirs_four_row_layout() -> None:
    rows = enc.one_hot_genotypes([0, 2, None, 1, 3])
    assert rows == [
        [True, False, False, False, False],
        [False, False, False, True, False],
        [False, True, False, False, False],
        [False, False, True, False, True],
    ]
    data = base64.b64decode(enc.encode_omics(rows))
    assert len(data) == 4 * 5
    for column in range(5):  # exactly one True per SNP
        assert sum(data[row * 5 + column] for row in range(4)) == 1


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([[1, 2]], "omics[0][1] must be a bool (or 0/1), got int 2"),
        ([[True, "yes"]], "omics[0][1] must be a bool (or 0/1), got str"),
        ([[True, 0.0]], "got float"),
        (
            [True, False],
            "omics must be 2-D (EIR's layout: 4 rows x SNPs), got shape (2,)",
        ),
        ([[[True]]], "got shape (1, 1, 1)"),
        ([[True, False], [True]], "ragged omics: omics[1] has 1 entries"),
    ],
)
def test_bad_omics_are_rejected(values, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        enc.encode_omics(values)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("genotypes", "fragment"),
    [
        ([0, 4], "genotypes[1] must be 0, 1, 2 or None"),
        ([-1], "genotypes[0]"),
        ([0, "1"], "genotypes[1]"),
        ([True], "genotypes[0]"),
        ([], "non-empty list"),
    ],
)
def test_bad_genotypes_are_rejected(genotypes, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        enc.one_hot_genotypes(genotypes)
    assert fragment in str(caught.value)


# =============================================================================
# image
# =============================================================================
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("png_filter", [None, 0, 1, 2, 3, 4])
def test_png_round_trips_through_an_independent_decoder(
    channels: int, png_filter: int | None
) -> None:
    rng = random.Random(f"{channels}:{png_filter}")
    for height, width in ((1, 1), (5, 7), (16, 16)):
        for pixels in (
            random_image(rng, height, width, channels),
            gradient_image(height, width, channels),
        ):
            image = decode_png(enc.encode_image(pixels, png_filter=png_filter))
            assert (image["height"], image["width"]) == (height, width)
            assert image["channels"] == channels
            assert image["pixels"] == pixel_tuples(pixels)
            if png_filter is not None:
                assert set(image["filters"]) == {png_filter}
            assert enc.image_shape(pixels) == (height, width, channels)


def test_adaptive_filtering_uses_predicting_filters_and_shrinks_the_png() -> None:
    pixels = gradient_image(32, 32, 3)
    adaptive = enc.png_bytes(pixels)
    unfiltered = enc.png_bytes(pixels, png_filter=0)
    assert set(decode_png(adaptive)["filters"]) - {0}
    assert len(adaptive) < len(unfiltered)


def test_grey_pixels_may_be_plain_ints_or_one_channel_lists() -> None:
    plain = [[0, 128], [255, 7]]
    boxed = [[[0], [128]], [[255], [7]]]
    assert enc.encode_image(plain) == enc.encode_image(boxed)
    assert decode_png(enc.encode_image(plain))["channels"] == 1


@pytest.mark.parametrize(
    ("pixels", "fragment"),
    [
        ([[[1, 2], [3, 4]]], "1, 3 or 4 channels; got shape (1, 2, 2)"),
        ([[0, 256]], "image[0][1] must be an integer 0..255, got int 256"),
        ([[0, -1]], "image[0][1] must be an integer 0..255, got int -1"),
        ([[0, 1.5]], "got float 1.5"),
        ([[0, True]], "got bool"),
        ([[[1, 2, 3], [4, 5, 6]], [[1, 2, 3]]], "ragged image: image[1] has 1 entries"),
        ([1, 2, 3], "got shape (3,)"),
        ([[[[1]]]], "got shape (1, 1, 1, 1)"),
        ([], "image has no values"),
    ],
)
def test_bad_images_are_rejected(pixels, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        enc.encode_image(pixels)
    assert fragment in str(caught.value)


def test_bad_png_filter_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"png_filter must be None or 0\.\.4, got 5"):
        enc.png_bytes([[0]], png_filter=5)


def test_png_header_reads_our_pngs_and_rejects_other_files() -> None:
    assert enc.png_header(enc.png_bytes(gradient_image(3, 5, 4))) == (3, 5, 4)
    with pytest.raises(ValueError, match="not a PNG"):
        enc.png_header(b"GIF89a" + bytes(30))


# =============================================================================
# tabular and survival
# =============================================================================
def test_tabular_row_passes_strings_and_numbers_through() -> None:
    row = {"site": "north", "age": 42, "marker": 3.5}
    assert enc.tabular_row(row) == row
    assert enc.tabular_row(row) is not row


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ([("a", 1)], "tabular must be a dict of column -> value, got list"),
        ({}, "tabular has no columns"),
        ({1: "x"}, "column names must be non-empty strings, got 1"),
        ({"": "x"}, "column names must be non-empty strings"),
        ({"a": None}, "tabular['a'] must be a string (categorical) or a number"),
        ({"a": True}, "tabular['a'] must be a string (categorical) or a number"),
        ({"a": [1]}, "got list"),
        ({"a": {"b": 1}}, "got dict"),
        ({"a": math.nan}, "tabular['a'] is nan; missing or infinite values"),
        ({"a": -math.inf}, "tabular['a'] is -inf"),
    ],
)
def test_bad_tabular_rows_are_rejected(row, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        enc.tabular_row(row)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("event", "flag"), [(1, "1"), (True, "1"), ("1", "1"), (0, "0"), (False, "0")]
)
def test_survival_row_sends_the_event_as_a_string(event, flag: str) -> None:
    assert enc.survival_row(event, 2.5) == {"Event": flag, "Time": 2.5}
    assert enc.survival_row(event, 3, "died", "years") == {"died": flag, "years": 3}


@pytest.mark.parametrize(
    ("event", "time", "fragment"),
    [
        (2, 1.0, "survival event must be 0/1"),
        ("yes", 1.0, "got str 'yes'"),
        (1.0, 1.0, "got float"),
        (None, 1.0, "got NoneType"),
        (1, -0.5, "survival time must be a finite number >= 0, got -0.5"),
        (1, math.nan, "got nan"),
        (1, "3", "got '3'"),
        (1, True, "got True"),
    ],
)
def test_bad_survival_values_are_rejected(event, time, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        enc.survival_row(event, time)
    assert fragment in str(caught.value)


def test_survival_columns_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ, both 'T'"):
        enc.survival_row(1, 1.0, "T", "T")


# =============================================================================
# dataset info and samples
# =============================================================================
INFO = {
    "inputs": {
        "text": {"type": "sequence"},
        "table": {"type": "tabular"},
        "snps": {"type": "omics", "shape": [4, 3]},
        "values": {"type": "array", "shape": [2, 2]},
        "picture": {"type": "image", "shape": [2, 3, 3], "mode": "RGB"},
    },
    "outputs": {
        "label": {"type": "tabular"},
        "curve": {"type": "array", "shape": [3]},
        "mask": {"type": "image", "shape": [2, 3, 1]},
        "reply": {"type": "sequence"},
        "risk": {"type": "survival"},
    },
}


def good_values() -> tuple[dict, dict]:
    """(inputs, outputs): one encoded value of every modality, keyed by name."""
    inputs = {
        "text": "a b c",
        "table": enc.tabular_row({"x": 1.0, "y": "k"}),
        "snps": enc.encode_omics(enc.one_hot_genotypes([0, 1, 2])),
        "values": enc.encode_array([[1, 2], [3, 4]]),
        "picture": enc.encode_image(gradient_image(2, 3, 3)),
    }
    outputs = {
        "label": {"c": "yes"},
        "curve": enc.encode_array([0.5, 0.25, 0.125]),
        "mask": enc.encode_image([[0, 255, 0], [255, 0, 255]]),
        "reply": "ok then",
        "risk": enc.survival_row(1, 4.0),
    }
    return inputs, outputs


def good_sample() -> dict:
    return eirformat.build_sample(INFO, "s1", *good_values())


def test_build_sample_nests_outputs_per_modality() -> None:
    sample = good_sample()
    assert sorted(sample) == ["inputs", "sample_id", "target_labels"]
    labels = sample["target_labels"]
    assert labels["label"] == {"c": "yes"}
    assert labels["risk"] == {"Event": "1", "Time": 4.0}
    assert labels["curve"] == {"curve": enc.encode_array([0.5, 0.25, 0.125])}
    assert list(labels["mask"]) == ["mask"]
    assert labels["reply"] == {"reply": "ok then"}
    assert sample["inputs"]["reply"] == "ok then"  # sequence outputs go in twice
    assert set(sample["inputs"]) == {*INFO["inputs"], "reply"}
    eirformat.check_dataset_info(INFO)
    eirformat.check_sample(sample, INFO)
    json.dumps(sample)


def test_build_sample_rejects_names_missing_from_the_info() -> None:
    with pytest.raises(ValueError, match=r"input 'txt' is not in the dataset info"):
        eirformat.build_sample(INFO, "s", {"txt": "a"}, {})
    with pytest.raises(ValueError, match=r"output 'lable' is not in the dataset info"):
        eirformat.build_sample(INFO, "s", {}, {"lable": {"c": "x"}})


def test_sample_layout_json_is_json_dumps_of_the_sample() -> None:
    layout = eirformat.SampleLayout(INFO)
    inputs, outputs = good_values()
    for _ in range(2):  # written once, then by the writer kept for these names
        written = layout.json("s1", inputs, outputs)
        assert written == json.dumps(good_sample(), separators=(",", ":"))
    # The same values named in another order: a sample in that order.
    backwards = dict(reversed(outputs.items()))
    assert json.loads(layout.json("s1", inputs, backwards)) == good_sample()
    assert layout.json("s1", inputs, backwards) == json.dumps(
        layout.sample("s1", inputs, backwards), separators=(",", ":")
    )


def test_sample_layout_rejects_names_missing_from_the_info_or_named_twice() -> None:
    layout = eirformat.SampleLayout(INFO)
    with pytest.raises(ValueError, match=r"input 'txt' is not in the dataset info"):
        layout.json("s", {"txt": "a"}, {})
    with pytest.raises(ValueError, match=r"output 'lable' is not in the dataset info"):
        layout.writer([], ["lable"])
    with pytest.raises(
        ValueError, match=r"inputs name a value twice: \['text', 'text'\]"
    ):
        layout.writer(["text", "text"], [])


def test_the_tutorial_source_passes_the_checks() -> None:
    source = SimulatedHealthData(seed=3, sequence_length=16)
    info = source.dataset_info()
    eirformat.check_dataset_info(info)
    for index in range(5):
        eirformat.check_sample(source.sample(index), info)


def _replace(info: dict, side: str, name: str, entry) -> dict:
    copy = json.loads(json.dumps(info))
    copy[side][name] = entry
    return copy


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ([], "dataset info must be a dict with 'inputs' and 'outputs', got list"),
        ({"outputs": {}}, "dataset info needs 'inputs'"),
        ({"inputs": {}, "outputs": []}, "dataset info needs 'outputs'"),
        ({"inputs": {}, "outputs": {}}, "dataset info has no outputs"),
        (_replace(INFO, "inputs", "x", "array"), "inputs['x'] must be a dict with"),
        (_replace(INFO, "inputs", "x", {"type": "video"}), "inputs['x'] has type"),
        (_replace(INFO, "inputs", "x", {"type": "survival"}), "has type 'survival'"),
        (_replace(INFO, "outputs", "x", {"type": "omics", "shape": [4, 2]}), "type"),
        (_replace(INFO, "inputs", "x", {"type": "array"}), "needs 'shape'"),
        (
            _replace(INFO, "inputs", "x", {"type": "array", "shape": [2, -1]}),
            "needs 'shape', a list of positive integers, got [2, -1]",
        ),
        (
            _replace(INFO, "inputs", "x", {"type": "omics", "shape": [4, 2, 1]}),
            "omics shape must be 2-D",
        ),
        (
            _replace(INFO, "inputs", "x", {"type": "image", "shape": [4, 4, 2]}),
            "image shape must be [height, width, channels]",
        ),
        (
            _replace(INFO, "inputs", "x", {"type": "image", "mode": "CMYK"}),
            "mode must be one of L, RGB, RGBA",
        ),
    ],
)
def test_bad_dataset_info_is_rejected(info, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        eirformat.check_dataset_info(info)
    assert fragment in str(caught.value)


def _broken(change) -> dict:
    sample = good_sample()
    change(sample)
    return sample


@pytest.mark.parametrize(
    ("sample", "fragment"),
    [
        ("text", "a sample must be a dict with exactly the keys"),
        (_broken(lambda s: s.update(extra=1)), "exactly the keys"),
        (_broken(lambda s: s.pop("sample_id")), "exactly the keys"),
        (_broken(lambda s: s.update(sample_id="")), "sample_id must be a non-empty"),
        (_broken(lambda s: s.update(inputs=[])), "s1: inputs must be a dict"),
        (
            _broken(lambda s: s["inputs"].update(other="x")),
            "s1: inputs['other'] is neither an input nor a sequence output",
        ),
        (
            _broken(lambda s: s["inputs"].update(text=["a", "b"])),
            "s1: inputs['text'] must be a string",
        ),
        (
            _broken(lambda s: s["inputs"].update(values=enc.encode_array([1, 2, 3]))),
            "inputs['values'] holds 12 bytes; shape [2, 2] of float32 needs 16",
        ),
        (
            _broken(lambda s: s["inputs"].update(values="***")),
            "inputs['values'] is not valid base64",
        ),
        (
            _broken(lambda s: s["inputs"].update(snps=base64.b64encode(b"\2" * 12))),
            "inputs['snps'] must be a base64 string, got bytes",
        ),
        (
            _broken(
                lambda s: s["inputs"].update(snps=base64.b64encode(b"\2" * 12).decode())
            ),
            "inputs['snps'] has bytes other than 0 and 1",
        ),
        (
            _broken(
                lambda s: s["inputs"].update(
                    picture=base64.b64encode(b"JFIF" * 10).decode()
                )
            ),
            "inputs['picture']: not a PNG file",
        ),
        (
            _broken(
                lambda s: s["inputs"].update(
                    picture=enc.encode_image(gradient_image(3, 3, 3))
                )
            ),
            "is a 3x3 PNG with 3 channel(s); the dataset info says shape [2, 3, 3]",
        ),
        (
            _broken(lambda s: s["inputs"].update(table={"x": None})),
            "s1: inputs['table']['x'] must be a string",
        ),
        (
            _broken(lambda s: s["target_labels"].update(curve=enc.encode_array([1]))),
            "target_labels['curve'] must be nested as {'curve': value}",
        ),
        (
            _broken(lambda s: s["target_labels"].update(other={"a": 1})),
            "target_labels['other'] is not an output of the dataset info",
        ),
        (
            _broken(lambda s: s["inputs"].pop("reply")),
            "sequence output 'reply' must also be sent as inputs['reply']",
        ),
        (
            _broken(lambda s: s["target_labels"]["mask"].update(mask="")),
            "target_labels['mask']['mask']: not a PNG file",
        ),
    ],
)
def test_bad_samples_are_rejected(sample, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        eirformat.check_sample(sample, INFO)
    assert fragment in str(caught.value)
