"""What making and shipping a task of near-free samples costs, per sample.

The numbers behind the default workers' choice (engines.DefaultEngine),
measured in this process:

  1. making a task of 16,384 near-free samples (bench/pool_source.py) in
     this process: wall time per sample, median of --tasks tasks;
  2. `DefaultEngine.RECEIVE_SECONDS_PER_BYTE`: the CPU this process spends
     receiving tasks made by a ProcessPoolExecutor worker (the pool's
     result-reading thread and the unpickling), per sample and per byte,
     next to the wall time the worker took per sample (what each made task
     reports, and what the default workers compare with the receiving cost).

    python bench/making.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pool_source import make_source  # noqa: E402
from eirstream.making import encode_task, make_task  # noqa: E402

POOL_SOURCE = str(ROOT / "bench" / "pool_source.py") + ":make_source"
TASK = 16384


def making(tasks: int) -> float:
    """Median ns per sample of making a task in this process."""
    source = make_source()
    kept: list[object] = []  # a few made tasks alive, as in the read-ahead
    times = []
    start = 10**6
    for _ in range(tasks):
        began = time.perf_counter()
        made = encode_task(source, list(range(start, start + TASK)))
        times.append((time.perf_counter() - began) / TASK * 1e9)
        kept = [*kept[-3:], made]
        start += TASK
    return statistics.median(times)


def receiving(tasks: int) -> tuple[float, float, list[float]]:
    """(this process's CPU per sample received, its bytes per sample, the
    worker's wall time per sample of each task) for tasks made by one
    worker."""
    settings = (("max_iterations", None), ("seed", 0), ("sequence_length", 64))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(make_task, POOL_SOURCE, settings, [0]).result()  # started
        cpu_before = time.process_time()
        futures = [
            pool.submit(
                make_task,
                POOL_SOURCE,
                settings,
                list(range(k * TASK, (k + 1) * TASK)),
            )
            for k in range(tasks)
        ]
        results = [future.result() for future in futures]
        cpu = time.process_time() - cpu_before
    size = sum(len(result.blob) for result in results)
    made = [result.seconds / TASK * 1e6 for result in results]
    return cpu / (tasks * TASK), size / (tasks * TASK), made


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=15, help="tasks per measurement")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error(f"--tasks must be at least 1, got {args.tasks}")
    print(f"python bench/making.py --tasks {args.tasks}", flush=True)
    print(
        f"making a task of {TASK:,} near-free samples here: "
        f"{making(args.tasks):.0f} ns/sample"
    )
    cpu, size, made = receiving(args.tasks)
    print(
        f"receiving them from a worker process: {cpu * 1e6:.2f} us of this "
        f"process's CPU per sample of {size:.0f} bytes "
        f"({cpu / size * 1e9:.2f} ns per byte)"
    )
    print(
        "the worker's wall time per sample, by task: "
        f"min {min(made):.2f}, median {statistics.median(made):.2f}, "
        f"max {max(made):.2f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
