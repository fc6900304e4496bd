"""One simulated health sample: a text prompt and the heart-rate trace it predicts.

The model (see SIMULATION.md in the project docs) in brief: a person is drawn
(age, fitness, cortisol, sleep, monitoring start, activity level); the prompt
prints them; the heart-rate (HR) trace starts near a base rate shifted by the
person's traits and then takes one step every 5 minutes, with extra drift at
certain times of day. Each token of the trace is the HR rounded down to an
even number.

`simulate_sample` is a pure function of the `random.Random` it is given, so
the caller decides reproducibility (data_simulator.py seeds one RNG per sample
index). `bench/plain_simulation.py` holds the straightforward `randint`
version of the same model; the tests compare the two. This one draws from
the same distributions at a fraction of the cost, using three tricks:

* **One draw per step.** A step's change is a sum of independent uniform
  integers (-5..8, plus -15..-5 at night, ...). Listing every combination of
  those draws gives N equally likely sums (N = 14, 98, 140, 154 or 182), so a
  single uniform integer below N picks a step's whole change, with exactly the
  distribution of the sum. Which sums apply at each step depends only on the
  start hour and the activity, so each (start hour, vigorous, length) gets a
  precomputed plan, cached.
* **Bulk draws, mapped in C.** The changes are drawn as random bytes
  (`rng.randbytes`) and mapped to change codes with `bytes.translate`, one
  call for a run of steps with the same rule. Bytes at or above the largest
  multiple of N below 256 are deleted by the same call (rejection sampling),
  so the codes left are exactly uniform over the N combinations.
* **The clamp as a lookup.** Every HR value v in 45..200 has a row: entry
  `code` is the row of `clamp(v + change)`, and one extra entry holds v's
  token. `itertools.accumulate(codes, operator.getitem, initial=row)` walks
  the trace in C; the tokens are picked out and joined without a Python-level
  loop.

The person's draws use `rng.random()` scaled to each integer range: the same
uniform distribution as `randint` (up to the 2**-53 grain of a float).
"""

import math
import random
from functools import cache, lru_cache
from itertools import accumulate
from operator import getitem, itemgetter

ACTIVITY_LEVELS = ("sedentary", "light", "moderate", "vigorous")
START_MINUTES = (0, 15, 30, 45)

HR_MIN, HR_MAX = 45, 200  # every reading is clamped to this range
START_MIN, START_MAX = 50, 180  # the starting value is clamped to this range
BASE_RATE = 70

# Per-step random change, as (low, span): the draw is low + k with 0 <= k < span.
STEP_CHANGE = (-5, 14)  # -5 ... +8
MORNING_DRIFT = (3, 10)  # 6 <= t <= 9: +3 ... 12
MIDDAY_DRIFT = (2, 7)  # 12 <= t <= 14: +2 ... 8
NIGHT_DRIFT = (-15, 11)  # t >= 22 or t <= 5: -(5 ... 15)
VIGOROUS_EVENING_DRIFT = (8, 13)  # vigorous and 16 <= t <= 20: +8 ... 20

# Activity shift of the base rate, as (low, span).
ACTIVITY_SHIFT = {
    "vigorous": (20, 21),  # +20 ... 40
    "moderate": (10, 16),  # +10 ... 25
    "light": (0, 11),  # +0 ... 10
    "sedentary": (-5, 11),  # -5 ... +5
}

# At most one drift applies at any time of day (their windows do not overlap),
# so a step's change lies in this range: -5 - 15 at night up to 8 + 20 on a
# vigorous evening. A change is stored as its code, change - _CHANGE_LOW.
_DRIFTS = (MORNING_DRIFT, MIDDAY_DRIFT, NIGHT_DRIFT, VIGOROUS_EVENING_DRIFT)
_CHANGE_LOW = STEP_CHANGE[0] + min(0, *(low for low, _ in _DRIFTS))
_CHANGE_HIGH = sum(STEP_CHANGE) - 1 + max(0, *(low + span - 1 for low, span in _DRIFTS))
_CODES = _CHANGE_HIGH - _CHANGE_LOW + 1

# Fitness: uniform on [1, 10], rounded to one decimal. In steps of 0.05 there
# are 180 equally likely cells of the real line; cell k rounds to
# 1.0 + 0.1 * ((k + 1) // 2), so 1.0 and 10.0 get half the weight of the others.
# Stored as (printed text, value in tenths) for exact comparisons.
_FITNESS = tuple(
    (f"{tenths // 10}.{tenths % 10}", tenths)
    for tenths in (10 + (k + 1) // 2 for k in range(180))
)


def _prompt_head(hour: int, minute: int) -> str:
    return (
        f"<START> |Time of HR monitoring start: {hour:02d}:{minute:02d}| "
        "|Biomarkers| Cortisol_Morning: "
    )


# The prompt up to the morning cortisol, for every start hour and minute.
_PROMPT_HEADS = {
    (hour, minute): _prompt_head(hour, minute)
    for hour in range(6, 11)
    for minute in START_MINUTES
}


def _build_rows() -> list[list]:
    """Row v (45 <= v <= 200): row[code] is the row of the value after a
    change of code + _CHANGE_LOW, clamped to 45 ... 200; row[_CODES] is v's
    token (v rounded down to even)."""
    rows: list[list] = [[] for _ in range(HR_MAX + 1)]
    for value in range(HR_MIN, HR_MAX + 1):
        row = rows[value]
        for code in range(_CODES):
            target = value + code + _CHANGE_LOW
            row.append(rows[min(HR_MAX, max(HR_MIN, target))])
        row.append(str(value - (value & 1)))
    return rows


_ROWS = _build_rows()
_TOKEN = itemgetter(_CODES)


def time_of_day(start_hour: int, step: int) -> float:
    """Hour of the day at reading `step` (one reading every 5 minutes)."""
    return (start_hour + step * 5 / 60) % 24


def step_draws(
    start_hour: int, vigorous: bool, step: int
) -> tuple[tuple[int, int], ...]:
    """The (low, span) draws whose sum is the change at reading `step`."""
    t = time_of_day(start_hour, step)
    draws = [STEP_CHANGE]
    if 6 <= t <= 9:
        draws.append(MORNING_DRIFT)
    if 12 <= t <= 14:
        draws.append(MIDDAY_DRIFT)
    if t >= 22 or t <= 5:
        draws.append(NIGHT_DRIFT)
    if vigorous and 16 <= t <= 20:
        draws.append(VIGOROUS_EVENING_DRIFT)
    return tuple(draws)


@cache
def _byte_table(draws: tuple[tuple[int, int], ...]) -> tuple[bytes, bytes, float]:
    """(translation table, bytes to delete, acceptance rate) for one rule.

    Every combination of the draws (N of them, equally likely) becomes one
    byte value below the largest multiple of N that fits in a byte; the
    table maps it to the code of its summed change. Larger bytes are deleted.
    """
    sums = [0]
    for low, span in draws:
        sums = [s + low + k for s in sums for k in range(span)]
    n = len(sums)
    if min(sums) < _CHANGE_LOW or max(sums) > _CHANGE_HIGH:
        raise ValueError(f"step changes {min(sums)}..{max(sums)} outside the rows")
    if n > 256:
        raise ValueError(f"a step with {n} equally likely changes needs > 1 byte")
    usable = 256 // n * n
    table = bytes(sums[b % n] - _CHANGE_LOW if b < usable else 0 for b in range(256))
    return table, bytes(range(usable, 256)), usable / 256


@lru_cache(maxsize=128)
def _trace_plan(
    start_hour: int, vigorous: bool, sequence_length: int
) -> tuple[tuple[bytes, bytes, int, int], ...]:
    """Runs of steps under the same rule: (table, delete, steps, bytes to draw).

    The byte count is chosen so that the accepted bytes suffice about 999
    times in 1000 (mean minus 3 standard deviations); otherwise more are
    drawn.
    """
    runs: list[list] = []
    for step in range(sequence_length):
        draws = step_draws(start_hour, vigorous, step)
        if runs and runs[-1][0] == draws:
            runs[-1][1] += 1
        else:
            runs.append([draws, 1])
    plan = []
    for draws, steps in runs:
        table, delete, p = _byte_table(draws)
        n = steps
        while n * p - 3 * math.sqrt(n * p * (1 - p)) < steps:
            n += 1
        plan.append((table, delete, steps, n))
    return tuple(plan)


def _trace(
    rng: random.Random, start_hour: int, vigorous: bool, length: int, value: int
) -> str:
    randbytes = rng.randbytes
    plan = _trace_plan(start_hour, vigorous, length)
    if len(plan) == 1:
        table, delete, steps, n = plan[0]
        codes = randbytes(n).translate(table, delete)
        while len(codes) < steps:
            codes += randbytes(n).translate(table, delete)
        codes = codes[:steps]
    else:
        parts = []
        for table, delete, steps, n in plan:
            part = randbytes(n).translate(table, delete)
            while len(part) < steps:
                part += randbytes(n).translate(table, delete)
            parts.append(part[:steps])
        codes = b"".join(parts)
    rows = accumulate(codes, getitem, initial=_ROWS[value])
    next(rows)  # the starting value is not a reading
    return " ".join(map(_TOKEN, rows))


def simulate_sample(rng: random.Random, sequence_length: int = 64) -> tuple[str, str]:
    """Draw one person and return (prompt, HR trace) as space-separated strings."""
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
    r = rng.random

    age = 18 + int(r() * 63)  # 18 ... 80
    fitness_text, fitness_tenths = _FITNESS[int(r() * 180)]  # 1.0 ... 10.0
    cortisol_morning = 10 + int(r() * 16)  # 10 ... 25
    cortisol_evening = 3 + int(r() * 10)  # 3 ... 12
    sleep_quality = 1 + int(r() * 10)  # 1 ... 10
    start_hour = 6 + int(r() * 5)  # 6 ... 10
    start_minute = START_MINUTES[int(r() * 4)]
    activity = ACTIVITY_LEVELS[int(r() * 4)]

    prompt = (
        f"{_PROMPT_HEADS[start_hour, start_minute]}{cortisol_morning} - "
        f"Cortisol_Evening: {cortisol_evening} - Sleep_Quality: {sleep_quality} - "
        f"|Demographics| Age: {age} - Fitness_Score: {fitness_text} - "
        f"Activity: {activity} -"
    )

    base = BASE_RATE
    if age > 60:
        base += 5 + int(r() * 11)  # +5 ... 15
    elif age < 30:
        base -= int(r() * 11)  # -(0 ... 10)
    if fitness_tenths > 70:
        base -= 10 + int(r() * 11)  # -(10 ... 20)
    elif fitness_tenths < 40:
        base += 8 + int(r() * 11)  # +8 ... 18
    low, span = ACTIVITY_SHIFT[activity]
    base += low + int(r() * span)
    if cortisol_morning > 20:
        base += 5 + int(r() * 8)  # +5 ... 12
    if sleep_quality < 4:
        base += 3 + int(r() * 6)  # +3 ... 8

    value = base - 8 + int(r() * 17)  # jitter -8 ... +8
    value = (
        START_MIN if value < START_MIN else START_MAX if value > START_MAX else value
    )
    trace = _trace(rng, start_hour, activity == "vigorous", sequence_length, value)
    return prompt, trace
