"""A `data` reply as slices of made tasks.

A request is usually a run of consecutive samples of one or two made tasks,
so its reply is a slice of each task's blob and no work per sample: the
samples' bytes are copied once, into the reply.
"""

from collections.abc import Callable

from eirstream.tasks import MADE, Task

DATA_HEAD, DATA_TAIL = b'{"type":"data","payload":[', b"]}"

Span = tuple[Task, int, int]  # positions start..stop-1 of a made task


def spans_of(
    indices: list[int], task_of: Callable[[int], Task | None]
) -> list[Span] | None:
    """`indices` as spans of consecutive samples of made tasks; None if one
    of them is not made (or not even asked for) yet."""
    spans: list[Span] = []
    at, wanted = 0, len(indices)
    while at < wanted:
        task = task_of(indices[at])
        if task is None or task.state is not MADE:
            return None
        start = task.position(indices[at])
        stop = min(len(task.indices), start + wanted - at)
        if task.indices[start:stop] != indices[at : at + stop - start]:
            stop = start + 1  # not in the task's order (after a rewind)
        spans.append((task, start, stop))
        at += stop - start
    return spans


def data_reply(spans: list[Span]) -> tuple[bytes, int]:
    """The `data` reply holding the made samples of `spans`, as UTF-8 JSON,
    and how many samples it holds (samples whose source raised are left
    out); no bytes when it holds none."""
    pieces: list[bytes | memoryview] = [DATA_HEAD]
    served = 0
    for task, start, stop in spans:
        piece, made = task.samples(start, stop)
        if made:
            pieces.append(piece)
            served += made
    if not served:
        return b"", 0
    pieces[-1] = pieces[-1][:-1]  # the last sample's comma
    pieces.append(DATA_TAIL)
    return b"".join(pieces), served  # the one copy of the samples
