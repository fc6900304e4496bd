"""Task sizing: how many samples a task makes and how many the read-ahead holds.

Pure arithmetic, no clock and no I/O: measurements in, sizes out. The
producer (readahead.py) feeds it what each made task cost and what each
request asked for, and keeps the `Sizes` it gets back. The rules:

1. A task makes about the engine's `task_seconds` of work: a cheap source
   gets big tasks (each task costs the engine a fixed amount of work), a
   heavy one small tasks that spread over every worker. A sample's time is a
   moving average over the tasks made so far.
2. A task holds at most `max_task_bytes` of samples: large samples get
   fewer per task.
3. Task sizes stay within `min_task`..`max_task`. Until a sample is
   measured, tasks are as small as they get: the first tasks of a slow
   source must not hold up the requests behind them.
4. The read-ahead holds at least two tasks per worker and twice the largest
   request, at most `max_read_ahead` samples; and, once a sample's size is
   known, at most `max_ahead_bytes` of samples, or the largest request if
   that is more (large samples such as images must not fill the memory).
5. Samples a request asks for that nobody makes yet are split into tasks
   so that every worker takes a share, each no larger than rule 1's size.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SizeBounds:
    """The limits of task sizes and of the read-ahead (rules 2 to 4)."""

    # Near-free samples want big tasks (a task costs a fixed amount of
    # shipping); much larger ones would hold the GIL for long in a thread.
    min_task: int = 8
    max_task: int = 16384
    max_task_bytes: int = 16 * 2**20
    max_read_ahead: int = 2 * 16384
    max_ahead_bytes: int = 64 * 2**20


@dataclass(frozen=True)
class Sizes:
    """The producer's sizes and what they were worked out from."""

    task_size: int  # samples per task
    read_ahead: int  # samples kept made or in the making ahead of the stream
    sample_seconds: float = 0.0  # moving average of a sample's making; 0: unknown
    sample_bytes: float = 0.0  # the largest average size of a task's samples
    largest_request: int = 0  # the most samples one request asked for


def first_sizes(read_ahead: int, bounds: SizeBounds) -> Sizes:
    """The sizes before anything is measured: the smallest tasks (rule 3)."""
    return Sizes(task_size=bounds.min_task, read_ahead=read_ahead)


def ahead_limit(sizes: Sizes, bounds: SizeBounds) -> int:
    """The most samples the read-ahead may hold (rule 4's byte limit)."""
    if not sizes.sample_bytes:
        return bounds.max_read_ahead
    by_bytes = int(bounds.max_ahead_bytes / sizes.sample_bytes)
    return max(
        bounds.min_task,
        sizes.largest_request,
        min(by_bytes, bounds.max_read_ahead),
    )


def after_request(sizes: Sizes, bounds: SizeBounds, count: int) -> Sizes:
    """The sizes once a request asked for `count` samples: the read-ahead
    grows to twice the request, within its limit (rule 4)."""
    if count > sizes.largest_request:
        sizes = replace(sizes, largest_request=count)
    if count * 2 <= sizes.read_ahead:
        return sizes  # the usual case: nothing to work out
    wanted = min(bounds.max_read_ahead, count * 2)
    return replace(sizes, read_ahead=min(wanted, ahead_limit(sizes, bounds)))


def after_task(
    sizes: Sizes,
    bounds: SizeBounds,
    *,
    seconds_each: float,
    bytes_each: float,
    task_seconds: float,
    workers: int,
) -> Sizes:
    """The sizes once a task was made whose samples took `seconds_each`
    and `bytes_each` on average, for an engine whose tasks should take
    `task_seconds` and that runs `workers` at once (rules 1 to 4)."""
    average = sizes.sample_seconds
    average = 0.8 * average + 0.2 * seconds_each if average else seconds_each
    size = int(task_seconds / max(average, 1e-9))
    size = min(size, int(bounds.max_task_bytes / max(bytes_each, 1.0)))
    task_size = max(bounds.min_task, min(bounds.max_task, size))
    sizes = replace(
        sizes,
        task_size=task_size,
        sample_seconds=average,
        sample_bytes=max(sizes.sample_bytes, bytes_each),
    )
    wanted = 2 * task_size * max(1, workers)
    read_ahead = max(sizes.read_ahead, min(bounds.max_read_ahead, wanted))
    return replace(sizes, read_ahead=min(read_ahead, ahead_limit(sizes, bounds)))


def request_task_size(
    sizes: Sizes, bounds: SizeBounds, missing: int, workers: int
) -> int:
    """Samples per task for `missing` samples a request waits for that
    nobody makes yet: a share for every worker (rule 5)."""
    share = -(-missing // max(1, workers))
    return min(sizes.task_size, max(bounds.min_task, share))
