"""Sample ids of the form `sample_<index>`, and reading them back.

The simulator names its samples so, and so may any source whose ids are its
indices. EIR sends validation ids back by the tens of thousands in one
message, so `indices_of_sample_ids` parses a whole list at once.
"""

import json
import re
from collections.abc import Sequence

SAMPLE_ID_PREFIX = "sample_"
_SAMPLE_ID = re.compile(r"sample_(0|[1-9][0-9]*)")


def sample_id(index: int) -> str:
    """The id of sample `index`: `sample_<index>`."""
    return f"{SAMPLE_ID_PREFIX}{index}"


def index_of_sample_id(sample_id: str, num_samples: int | None) -> int | None:
    """Parse `sample_<k>` back to k; None for anything else or k out of range."""
    if not isinstance(sample_id, str) or not _SAMPLE_ID.fullmatch(sample_id):
        return None
    try:
        index = int(sample_id[len(SAMPLE_ID_PREFIX) :])
    except ValueError:  # more digits than int() parses: an index never reached
        return None
    if num_samples is not None and index >= num_samples:
        return None
    return index


_ID_CHARS = b"0123456789,"


def indices_of_sample_ids(
    sample_ids: Sequence[str], num_samples: int | None
) -> set[int]:
    """The distinct indices k < num_samples of those ids that are `sample_<k>`.

    The same as calling `index_of_sample_id` on each id and dropping the Nones,
    but for a list of canonical ids it works on one joined string (no Python
    work per id apart from making the ints), so half a million ids take tens
    of milliseconds instead of a few hundred. Anything unusual in the list
    (other names, leading zeros, stray characters) falls back to one id at a
    time, with the same result.
    """
    found = _canonical_sample_indices(sample_ids)
    if found is None:
        found = {
            index
            for sample_id in sample_ids
            if (index := index_of_sample_id(sample_id, None)) is not None
        }
    if num_samples is not None and found and max(found) >= num_samples:
        found = {index for index in found if index < num_samples}
    return found


def _canonical_sample_indices(sample_ids: Sequence[str]) -> set[int] | None:
    """Bulk parse of ids that are all exactly `sample_<k>`; None otherwise.

    Joined by newlines, with every "newline + prefix" turned into a comma, a
    list of canonical ids becomes a JSON array body of plain integers: only
    digits and commas, no empty item, no leading zero (JSON rejects those),
    one item per id. Any id that is not canonical breaks one of these checks.
    """
    if not sample_ids:
        return set()
    try:
        joined = "\n".join(sample_ids)
    except TypeError:
        return None
    if not joined.startswith(SAMPLE_ID_PREFIX):
        return None
    body = joined[len(SAMPLE_ID_PREFIX) :].replace("\n" + SAMPLE_ID_PREFIX, ",")
    if not body.isascii():
        return None
    raw = body.encode("ascii")
    if raw.translate(None, _ID_CHARS):  # anything left is not a digit or comma
        return None
    try:
        numbers = json.loads(b"[" + raw + b"]")
    except ValueError:  # empty item, leading zero, or too many digits for int()
        return None
    if len(numbers) != len(sample_ids):  # an id held a comma or a second id
        return None
    return set(numbers)
