"""EIR's own deserializers read what eirstream.encoders writes.

The functions EIR's streaming setup and training loop call on each value run
in eirtrain's environment (a subprocess of its Python) on arrays, omics and
PNG images of every mode, and give back exactly the values and pixels given.
"""

import json
import random

from support.commands import run
from support.eirtrain_support import eir_python
from support.encodings import (
    as_float32,
    flat,
    gradient_image,
    pixel_tuples,
    random_image,
)
from support.required import needs_eirtrain

from eirstream import encoders as enc

EIR_DECODE = r"""
import json, sys
import numpy as np
from eir.serve_modules.serve_network_utils import deserialize_array
from eir.setup.streaming_data_setup.streaming_data_adapters import process_single_data

cases = json.load(sys.stdin)
out = {}
for name, case in cases.items():
    info = case["info"]
    # What the setup step stores for every modality ...
    value = process_single_data(data=case["value"], info=info)
    if info["type"] == "image":
        out[name] = {"mode": value.mode, "size": list(value.size),
                     "pixels": [list(p) if isinstance(p, tuple) else [p]
                                for p in value.getdata()]}
    else:
        out[name] = {"dtype": str(value.dtype), "shape": list(value.shape),
                     "values": value.ravel().tolist()}
        # ... and the deserializer its training loop calls on each sample.
        dtype = np.bool_ if info["type"] == "omics" else np.float32
        again = deserialize_array(array_str=case["value"], dtype=dtype,
                                  shape=tuple(info["shape"]))
        assert (again == value).all()
print(json.dumps(out))
"""


def test_eirs_own_deserializers_read_our_encodings() -> None:
    eirtrain = needs_eirtrain()
    rng = random.Random(7)
    array_values = [[rng.uniform(-5, 5) for _ in range(5)] for _ in range(3)]
    genotypes = [rng.choice([0, 1, 2, None]) for _ in range(20)]
    omics = enc.one_hot_genotypes(genotypes)
    images = {
        "grey": (random_image(rng, 6, 9, 1), "L"),
        "rgb": (gradient_image(5, 4, 3), "RGB"),
        "rgba": (random_image(rng, 4, 7, 4), "RGBA"),
    }
    cases = {
        "array": {
            "info": {"type": "array", "shape": [3, 5]},
            "value": enc.encode_array(array_values),
        },
        "omics": {
            "info": {"type": "omics", "shape": [4, 20]},
            "value": enc.encode_omics(omics),
        },
    }
    for name, (pixels, mode) in images.items():
        for png_filter in (None, 4):
            cases[f"{name}-{png_filter}"] = {
                "info": {"type": "image", "mode": mode},
                "value": enc.encode_image(pixels, png_filter=png_filter),
            }
    decode = [eir_python(eirtrain), "-c", EIR_DECODE]
    done = run(decode, stdin=json.dumps(cases), timeout=180)  # imports torch
    assert done.returncode == 0, done.stderr[-3000:]
    decoded = json.loads(done.stdout.strip().splitlines()[-1])

    assert decoded["array"]["dtype"] == "float32"
    assert decoded["array"]["shape"] == [3, 5]
    assert decoded["array"]["values"] == [as_float32(v) for v in flat(array_values)]
    assert decoded["omics"]["dtype"] == "bool"
    assert decoded["omics"]["shape"] == [4, 20]
    assert decoded["omics"]["values"] == flat(omics)
    for name, (pixels, mode) in images.items():
        for png_filter in (None, 4):
            image = decoded[f"{name}-{png_filter}"]
            assert image["mode"] == mode
            assert image["size"] == [len(pixels[0]), len(pixels)]  # PIL: (w, h)
            assert image["pixels"] == [
                list(p) for row in pixel_tuples(pixels) for p in row
            ]
