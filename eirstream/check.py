"""Check a source before pointing EIR at it: its `getInfo` payload and samples.

`eirstream --check [N]` runs `check_source` on the source the command line
configures (`--source` or `--dataset`) instead of starting the server.
"""

from eirstream.eirformat import check_dataset_info, check_sample
from eirstream.sources import SampleSource


def check_source(source: SampleSource, samples: int) -> str:
    """Check the source's `getInfo` payload and its first `samples` samples
    (all of them when it has fewer) against EIR's layout; the "ok" line that
    says what was checked. ValueError (one line) names the first problem."""
    info = source.dataset_info()
    check_dataset_info(info)
    bound = source.num_samples
    count = samples if bound is None else min(samples, bound)
    for index in range(count):
        try:
            sample = source.sample(index)
        except Exception as exc:
            raise ValueError(
                f"sample({index}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        check_sample(sample, info)
    names = ", ".join(
        f"{side[:-1]} {name} ({entry['type']})"
        for side in ("inputs", "outputs")
        for name, entry in info[side].items()
    )
    return f"ok: {count} samples checked; {names}"
