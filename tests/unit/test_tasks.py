"""The life of a task (eirstream/tasks.py), the held read-ahead, and the
`data` reply made of slices of made tasks (eirstream/replies.py).

Pure: a task's `done` is an asyncio future, so the tests run in a loop, but
nothing is made by an engine; made tasks are written here.
"""

import json

import pytest

from eirstream.making import MadeTask
from eirstream.replies import data_reply, spans_of
from eirstream.tasks import (
    FAILED,
    MADE,
    QUEUED,
    RUNNING,
    TASK_LIFE_CYCLE,
    HeldTasks,
    Task,
    TaskEvent,
    TaskState,
)


def made_for(indices: list[int], failed: frozenset[int] = frozenset()) -> MadeTask:
    """A made task whose sample k is {"i": k}, empty where k is in `failed`."""
    texts = [b"" if i in failed else b'{"i":%d},' % i for i in indices]
    offsets = [0]
    for text in texts:
        offsets.append(offsets[-1] + len(text))
    failures = {i: "ValueError: no" for i in indices if i in failed}
    return MadeTask(b"".join(texts), offsets, failures, 0.001)


def made_task(indices: list[int], failed: frozenset[int] = frozenset()) -> Task:
    """A task through its usual life: queued, at the engine, made."""
    task = Task(indices)
    task.enter(TaskEvent.SUBMITTED)
    task.enter(TaskEvent.FINISHED, made=made_for(indices, failed))
    return task


# -- the table -----------------------------------------------------------------
def test_every_state_has_a_row_and_made_and_failed_are_final() -> None:
    assert set(TASK_LIFE_CYCLE) == set(TaskState)
    for state in (MADE, FAILED):  # rule 5: giving up changes nothing there
        assert TASK_LIFE_CYCLE[state] == {TaskEvent.GIVEN_UP: state}
    reachable = {QUEUED} | {s for row in TASK_LIFE_CYCLE.values() for s in row.values()}
    assert reachable == set(TaskState)


async def test_a_transition_the_table_does_not_have_raises_and_changes_nothing() -> (
    None
):
    for state, row in TASK_LIFE_CYCLE.items():
        for event in TaskEvent:
            if event in row:
                continue
            task = Task([1, 2])
            task.state = state  # set by hand: only to reach each row
            with pytest.raises(RuntimeError, match="no transition"):
                task.enter(event, made=made_for([1, 2]))
            assert task.state is state and not task.done.done()


# -- a task's life -----------------------------------------------------------------
async def test_a_task_is_queued_then_running_then_made_and_done_once() -> None:
    task = Task([5, 6, 7])
    assert task.state is QUEUED and not task.done.done()
    task.enter(TaskEvent.SUBMITTED)
    assert task.state is RUNNING and not task.done.done()
    task.enter(TaskEvent.FINISHED, made=made_for([5, 6, 7], frozenset({6})))
    assert task.state is MADE and task.done.result() is None
    assert task.has_failures and task.samples(0, 3) == (b'{"i":5},{"i":7},', 2)
    task.enter(TaskEvent.GIVEN_UP, why="shutdown")  # rule 5: still made
    assert task.state is MADE and task.done.exception() is None


async def test_finishing_needs_the_samples() -> None:
    task = Task([1])
    task.enter(TaskEvent.SUBMITTED)
    with pytest.raises(RuntimeError, match="without its samples"):
        task.enter(TaskEvent.FINISHED)
    assert task.state is RUNNING


async def test_a_lost_task_is_queued_again_and_counts_its_attempts() -> None:
    # Rule 3: a lost engine task is made again, from the queue.
    task = Task([1, 2])
    for attempt in (1, 2):
        task.enter(TaskEvent.SUBMITTED)
        task.enter(TaskEvent.LOST)
        assert task.state is QUEUED and task.attempts == attempt
        assert not task.done.done()
    task.enter(TaskEvent.SUBMITTED)
    task.enter(TaskEvent.FINISHED, made=made_for([1, 2]))
    assert task.state is MADE and task.attempts == 2


@pytest.mark.parametrize("at_the_engine", [False, True])
async def test_a_task_given_up_fails_its_waiters_with_the_reason(
    at_the_engine: bool,
) -> None:
    # Rule 5: from the queue or from the engine, at once; rule 6: once.
    task = Task([1, 2])
    if at_the_engine:
        task.enter(TaskEvent.SUBMITTED)
    task.enter(TaskEvent.GIVEN_UP, why="read ahead for indices the stream left")
    assert task.state is FAILED
    with pytest.raises(RuntimeError, match="indices the stream left"):
        task.done.result()
    task.enter(TaskEvent.GIVEN_UP, why="server shutting down")  # no second result
    assert task.state is FAILED
    assert "stream left" in str(task.done.exception())
    with pytest.raises(RuntimeError, match="no transition"):
        task.enter(TaskEvent.FINISHED, made=made_for([1, 2]))  # comes too late


# -- the held read-ahead -----------------------------------------------------------
async def test_held_tasks_count_their_samples_and_let_go_of_a_task_served_in_full() -> (
    None
):
    held = HeldTasks()
    first, second = made_task([0, 1, 2, 3]), Task([4, 5])
    held.hold(first)
    held.hold(second)
    assert (held.samples, held.unserved) == (6, 6)
    assert held.where[5] is second
    held.served(first, 3)
    assert (held.samples, held.unserved) == (6, 3) and first in held.tasks
    held.served(first, 1)  # served in full: it goes
    assert (held.samples, held.unserved) == (2, 2)
    assert first not in held.tasks and 0 not in held.where
    held.served(first, 4)  # let go of already: nothing changes
    assert (held.samples, held.unserved) == (2, 2)


async def test_trimming_lets_go_of_the_oldest_made_tasks_only() -> None:
    held = HeldTasks()
    queued, old, new = Task([0, 1, 2]), made_task([3, 4, 5]), made_task([6, 7, 8])
    for task in (queued, old, new):
        held.hold(task)
    held.trim(6)
    assert list(held.tasks) == [queued, new]
    held.trim(0)  # a task in the making stays: a request may wait for it
    assert list(held.tasks) == [queued]
    assert held.samples == held.unserved == 3


# -- replies --------------------------------------------------------------------------
async def test_a_request_is_spans_of_made_tasks_and_its_reply_is_their_slices() -> None:
    first, second = made_task([0, 1, 2, 3]), made_task([4, 5, 6, 7], frozenset({5}))
    where = {i: task for task in (first, second) for i in task.indices}
    spans = spans_of([2, 3, 4, 5, 6], where.get)
    assert spans == [(first, 2, 4), (second, 0, 3)]
    reply, served = data_reply(spans)
    assert served == 4  # sample 5 failed: left out
    assert [s["i"] for s in json.loads(reply)["payload"]] == [2, 3, 4, 6]
    assert json.loads(reply)["type"] == "data"


async def test_samples_out_of_a_task_s_order_come_one_span_each() -> None:
    # After a rewind the stream may ask for a task's indices in another order.
    task = made_task([0, 1, 2, 3])
    spans = spans_of([3, 1, 2], {i: task for i in task.indices}.get)
    assert spans == [(task, 3, 4), (task, 1, 3)]
    reply, served = data_reply(spans)
    assert served == 3
    assert [s["i"] for s in json.loads(reply)["payload"]] == [3, 1, 2]


async def test_a_request_with_an_unmade_sample_has_no_spans() -> None:
    made, making = made_task([0, 1]), Task([2, 3])
    where = {0: made, 1: made, 2: making, 3: making}
    assert spans_of([0, 1, 2], where.get) is None
    assert spans_of([0, 9], where.get) is None  # nobody makes 9


async def test_a_reply_whose_samples_all_failed_is_empty() -> None:
    task = made_task([0, 1], frozenset({0, 1}))
    assert data_reply([(task, 0, 2)]) == (b"", 0)
