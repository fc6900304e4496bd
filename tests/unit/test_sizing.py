"""Task sizing (eirstream/sizing.py): measurements in, sizes out.

Pure: no clock, no engine, no loop. The rules are numbered in the module's
docstring; each test names the rule it checks.
"""

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from eirstream.sizing import (
    SizeBounds,
    Sizes,
    after_request,
    after_task,
    ahead_limit,
    first_sizes,
    request_task_size,
)

BOUNDS = SizeBounds()
MS = 1e-3


def made(
    sizes: Sizes, seconds_each: float, bytes_each: float, workers: int = 2
) -> Sizes:
    """The sizes after one task of a local engine (50 ms of work a task)."""
    return after_task(
        sizes,
        BOUNDS,
        seconds_each=seconds_each,
        bytes_each=bytes_each,
        task_seconds=0.05,
        workers=workers,
    )


def test_tasks_are_as_small_as_they_get_until_a_sample_is_measured() -> None:
    # Rule 3: the first tasks of a slow source must not hold up requests.
    sizes = first_sizes(1024, BOUNDS)
    assert sizes == Sizes(task_size=BOUNDS.min_task, read_ahead=1024)
    assert ahead_limit(sizes, BOUNDS) == BOUNDS.max_read_ahead


def test_a_task_makes_about_the_engine_s_task_seconds_of_work() -> None:
    # Rule 1: 1 ms a sample and 50 ms a task: 50 samples a task.
    sizes = made(first_sizes(1024, BOUNDS), seconds_each=1 * MS, bytes_each=800)
    assert sizes.task_size == 50
    # Heavy samples get the smallest tasks, near-free ones the largest.
    heavy = made(first_sizes(1024, BOUNDS), seconds_each=1.0, bytes_each=800)
    cheap = made(first_sizes(1024, BOUNDS), seconds_each=1e-9, bytes_each=800)
    assert (heavy.task_size, cheap.task_size) == (BOUNDS.min_task, BOUNDS.max_task)


def test_a_sample_s_time_is_a_moving_average() -> None:
    # Rule 1: one odd task moves the size a fifth of the way.
    sizes = made(first_sizes(1024, BOUNDS), seconds_each=1 * MS, bytes_each=800)
    sizes = made(sizes, seconds_each=2 * MS, bytes_each=800)
    assert abs(sizes.sample_seconds - 1.2 * MS) < 1e-12
    assert sizes.task_size == int(0.05 / (1.2 * MS))


def test_large_samples_get_fewer_per_task() -> None:
    # Rule 2: near-free samples of 1 MiB: 16 MiB a task, 16 samples.
    sizes = made(first_sizes(1024, BOUNDS), seconds_each=1e-9, bytes_each=2**20)
    assert sizes.task_size == BOUNDS.max_task_bytes // 2**20 == 16


def test_the_read_ahead_holds_two_tasks_per_worker_and_never_shrinks_by_time() -> None:
    # Rule 4: 4 workers x 2 tasks of 500 samples = 4,000; a slower source
    # later (smaller tasks) keeps the read-ahead as large as it was.
    sizes = made(first_sizes(64, BOUNDS), 0.1 * MS, 800, workers=4)
    assert (sizes.task_size, sizes.read_ahead) == (500, 4000)
    sizes = made(sizes, 100 * MS, 800, workers=4)
    assert sizes.read_ahead == 4000
    cheap = made(first_sizes(64, BOUNDS), 1e-9, 800, workers=64)
    assert cheap.read_ahead == BOUNDS.max_read_ahead


def test_large_samples_bound_the_read_ahead_in_bytes_but_not_below_a_request() -> None:
    # Rule 4: 1 MiB samples: 64 of them in 64 MiB, unless a request asked
    # for more; then the read-ahead may hold that request.
    sizes = made(first_sizes(1024, BOUNDS), 1e-9, 2**20)
    assert sizes.read_ahead == ahead_limit(sizes, BOUNDS) == 64
    asked = after_request(sizes, BOUNDS, 200)
    assert asked.largest_request == 200
    assert asked.read_ahead == ahead_limit(asked, BOUNDS) == 200


def test_a_request_grows_the_read_ahead_to_twice_its_size() -> None:
    # Rule 4: twice the largest request, at most max_read_ahead.
    sizes = first_sizes(1024, BOUNDS)
    assert after_request(sizes, BOUNDS, 500).read_ahead == 1024  # room enough
    assert after_request(sizes, BOUNDS, 4096).read_ahead == 8192
    huge = after_request(sizes, BOUNDS, 10**6)
    assert huge.read_ahead == BOUNDS.max_read_ahead
    assert huge.largest_request == 10**6
    smaller_later = after_request(huge, BOUNDS, 16)
    assert smaller_later.largest_request == 10**6


def test_a_request_s_missing_samples_are_shared_among_the_workers() -> None:
    # Rule 5: a share per worker, at least min_task, at most the task size.
    sizes = replace(first_sizes(1024, BOUNDS), task_size=500)
    assert request_task_size(sizes, BOUNDS, missing=400, workers=4) == 100
    assert request_task_size(sizes, BOUNDS, missing=401, workers=4) == 101
    assert request_task_size(sizes, BOUNDS, missing=10, workers=4) == BOUNDS.min_task
    assert request_task_size(sizes, BOUNDS, missing=9000, workers=4) == 500
    assert request_task_size(sizes, BOUNDS, missing=100, workers=0) == 100


events = st.lists(
    st.one_of(
        st.tuples(
            st.just("task"),
            st.floats(1e-9, 10.0),  # seconds a sample
            st.floats(1.0, 64 * 2**20),  # bytes a sample
            st.integers(0, 256),  # workers
        ),
        st.tuples(st.just("request"), st.integers(1, 10**6)),
    ),
    max_size=40,
)


@given(events, st.integers(1, BOUNDS.max_read_ahead))
def test_sizes_stay_within_their_bounds_whatever_is_measured(
    happened: list[tuple], read_ahead: int
) -> None:
    sizes = first_sizes(read_ahead, BOUNDS)
    for event in happened:
        if event[0] == "task":
            _, seconds_each, bytes_each, workers = event
            sizes = made(sizes, seconds_each, bytes_each, workers)
            if sizes.task_size > BOUNDS.min_task:  # rule 2
                assert sizes.task_size * bytes_each <= BOUNDS.max_task_bytes
        else:
            sizes = after_request(sizes, BOUNDS, event[1])
        assert BOUNDS.min_task <= sizes.task_size <= BOUNDS.max_task  # rule 3
        assert sizes.read_ahead <= ahead_limit(sizes, BOUNDS)  # rule 4
        assert sizes.read_ahead <= BOUNDS.max_read_ahead
        if sizes.sample_bytes:  # rule 4, in bytes
            at_least = max(sizes.largest_request, BOUNDS.min_task)
            assert sizes.read_ahead * sizes.sample_bytes <= max(
                BOUNDS.max_ahead_bytes, at_least * sizes.sample_bytes
            )
