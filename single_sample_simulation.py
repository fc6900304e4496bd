"""One simulated health sample: a text prompt and the heart-rate trace it predicts.

The model (see SIMULATION.md in the project docs) in brief: a person is drawn
(age, fitness, cortisol, sleep, monitoring start, activity level); the prompt
prints them; the heart-rate (HR) trace starts near a base rate shifted by the
person's traits and then takes one step every 5 minutes, with extra drift at
certain times of day. Each token of the trace is the HR rounded down to an
even number.

`simulate_sample` is a pure function of the `random.Random` it is given, so
the caller decides reproducibility (data_simulator.py seeds one RNG per sample
index). It is written for speed: every draw is `rng.random()` scaled to an
integer range (the same uniform distribution as `randint`, at a fifth of the
cost), and everything that depends only on the monitoring start hour is worked
out once and cached. `bench/plain_simulation.py` holds the straightforward
`randint` version of the same model; the tests compare the two.
"""

import random
from functools import lru_cache

ACTIVITY_LEVELS = ("sedentary", "light", "moderate", "vigorous")
START_MINUTES = (0, 15, 30, 45)

HR_MIN, HR_MAX = 45, 200  # every reading is clamped to this range
START_MIN, START_MAX = 50, 180  # the starting value is clamped to this range
BASE_RATE = 70

# Token text for every value the clamp allows: the value rounded down to even.
_TOKENS = {v: str(v - (v & 1)) for v in range(HR_MIN, HR_MAX + 1)}

# Per-step random change, as (low, span) with the draw being low + k, 0 <= k < span.
_STEP = (-5, 14)  # -5 ... +8
_MORNING = (3, 10)  # 6 <= t <= 9: +3 ... 12
_MIDDAY = (2, 7)  # 12 <= t <= 14: +2 ... 8
_NIGHT = (-15, 11)  # t >= 22 or t <= 5: -(5 ... 15)
_EVENING_VIGOROUS = (8, 13)  # vigorous and 16 <= t <= 20: +8 ... 20

# Activity shift of the base rate, as (low, span).
_ACTIVITY_SHIFT = {
    "vigorous": (20, 21),  # +20 ... 40
    "moderate": (10, 16),  # +10 ... 25
    "light": (0, 11),  # +0 ... 10
    "sedentary": (-5, 11),  # -5 ... +5
}


def time_of_day(start_hour: int, step: int) -> float:
    """Hour of the day at reading `step` (one reading every 5 minutes)."""
    return (start_hour + step * 5 / 60) % 24


@lru_cache(maxsize=64)
def _step_plan(
    start_hour: int, vigorous: bool, sequence_length: int
) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each step, the (low, span) draws whose sum is that step's change."""
    plan = []
    for step in range(sequence_length):
        t = time_of_day(start_hour, step)
        draws = [_STEP]
        if 6 <= t <= 9:
            draws.append(_MORNING)
        if 12 <= t <= 14:
            draws.append(_MIDDAY)
        if t >= 22 or t <= 5:
            draws.append(_NIGHT)
        if vigorous and 16 <= t <= 20:
            draws.append(_EVENING_VIGOROUS)
        plan.append(tuple(draws))
    return tuple(plan)


def simulate_sample(rng: random.Random, sequence_length: int = 64) -> tuple[str, str]:
    """Draw one person and return (prompt, HR trace) as space-separated strings."""
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
    r = rng.random

    age = 18 + int(r() * 63)  # 18 ... 80
    fitness = round(rng.uniform(1.0, 10.0), 1)
    cortisol_morning = 10 + int(r() * 16)  # 10 ... 25
    cortisol_evening = 3 + int(r() * 10)  # 3 ... 12
    sleep_quality = 1 + int(r() * 10)  # 1 ... 10
    start_hour = 6 + int(r() * 5)  # 6 ... 10
    start_minute = START_MINUTES[int(r() * 4)]
    activity = ACTIVITY_LEVELS[int(r() * 4)]

    prompt = (
        f"<START> |Time of HR monitoring start: {start_hour:02d}:{start_minute:02d}| "
        f"|Biomarkers| Cortisol_Morning: {cortisol_morning} - "
        f"Cortisol_Evening: {cortisol_evening} - Sleep_Quality: {sleep_quality} - "
        f"|Demographics| Age: {age} - Fitness_Score: {fitness:.1f} - "
        f"Activity: {activity} -"
    )

    base = BASE_RATE
    if age > 60:
        base += 5 + int(r() * 11)  # +5 ... 15
    elif age < 30:
        base -= int(r() * 11)  # -(0 ... 10)
    if fitness > 7:
        base -= 10 + int(r() * 11)  # -(10 ... 20)
    elif fitness < 4:
        base += 8 + int(r() * 11)  # +8 ... 18
    low, span = _ACTIVITY_SHIFT[activity]
    base += low + int(r() * span)
    if cortisol_morning > 20:
        base += 5 + int(r() * 8)  # +5 ... 12
    if sleep_quality < 4:
        base += 3 + int(r() * 6)  # +3 ... 8

    value = base - 8 + int(r() * 17)  # jitter -8 ... +8
    value = (
        START_MIN if value < START_MIN else START_MAX if value > START_MAX else value
    )

    tokens = _TOKENS
    trace = []
    append = trace.append
    for draws in _step_plan(start_hour, activity == "vigorous", sequence_length):
        for low, span in draws:
            value += low + int(r() * span)
        if value < HR_MIN:
            value = HR_MIN
        elif value > HR_MAX:
            value = HR_MAX
        append(tokens[value])
    return prompt, " ".join(trace)
