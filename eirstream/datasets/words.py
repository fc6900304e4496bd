"""Word chunks: a document cut into pieces of `chunk_words` words.

A spec entry with `chunk_words: n` makes each document (one row's text) into
samples of n whitespace-separated words each, the last piece kept only if it
has at least `min_words` words. Here: how many word chunks a document gives
(counted once per file and kept in the index), the text of one, and the JSON
of a document's word chunks, written through one template per document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eirstream.eirformat import SampleLayout, value_json

ChunkRule = tuple[str, int, int]  # (column, chunk_words, min_words)

# Where a word chunk's text and its sample id go in a template: value_json
# escapes every control character, so JSON text never holds either raw.
TEXT_MARK = "\x00"
ID_MARK = "\x01"


def chunk_count(text: str | None, words: int, min_words: int) -> int:
    """Samples of one document under `chunk_words: words`: its full word
    chunks of `words` whitespace-separated words, plus the rest if it has at
    least `min_words` words."""
    if not text:
        return 0
    full, rest = divmod(len(text.split()), words)
    return full + (1 if rest >= min_words else 0)


def chunk_text(words: Sequence[str], number: int, size: int) -> str:
    """The text of word chunk `number` of a document split into `words`."""
    return " ".join(words[number * size : (number + 1) * size])


def chunk_id(row: int, number: int) -> str:
    """The sample id of word chunk `number` of the document in global row
    `row` (letters and digits only, so it is its own JSON text in quotes)."""
    return f"r{row}c{number}"


class ChunkTemplate:
    """The JSON of one document's word chunks, written once by `SampleLayout`
    with holes where the chunk's text and its sample id go: each word
    chunk's JSON is then its escaped text dropped into the holes, the same
    bytes as `layout.json` of the chunk's sample."""

    def __init__(
        self,
        layout: SampleLayout,
        inputs: Mapping[str, str],
        outputs: Mapping[str, str],
    ) -> None:
        """`inputs`, `outputs`: each value written as JSON text, `TEXT_MARK`
        in the place of every value that is the word chunk's text."""
        head, tail = layout.write(ID_MARK, inputs, outputs).split(ID_MARK)
        if TEXT_MARK in tail:  # SampleLayout writes the id last
            raise ValueError("a template needs the sample id after every value")
        self._parts = head.split(TEXT_MARK)
        self._tail = tail

    def write(
        self, words: Sequence[str], size: int, row: int, numbers: Sequence[int]
    ) -> list[str]:
        """The JSON of word chunks `numbers` (of `size` words) of the document
        in global row `row`, split into `words`. This loop runs for every
        word chunk served, hence one comprehension, with `chunk_text` and
        `chunk_id` (in quotes, its JSON text) written inline."""
        parts, tail = self._parts, self._tail
        return [
            value_json(" ".join(words[number * size : (number + 1) * size])).join(parts)
            + f'"r{row}c{number}"{tail}'
            for number in numbers
        ]
