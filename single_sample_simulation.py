"""One simulated health sample: a prompt describing a person, and the heart-rate
(HR) trace a model learns to generate from it. Edit this file to change the data;
docs/data-model.md describes the model.

`simulate_sample` depends only on the `random.Random` it is given (data_simulator.py
seeds one per sample index), so every sample can be made again. Ranges are
inclusive (low, high) and drawn uniformly.
"""

import random
from dataclasses import dataclass

# The person.
AGE = (18, 80)
FITNESS = (1.0, 10.0)  # a real number, rounded to one decimal
CORTISOL_MORNING = (10, 25)
CORTISOL_EVENING = (3, 12)
SLEEP_QUALITY = (1, 10)
START_HOUR = (6, 10)
START_MINUTES = (0, 15, 30, 45)
ACTIVITY_LEVELS = ("sedentary", "light", "moderate", "vigorous")

# The starting HR: a base rate, shifted by the person's traits, plus a jitter.
BASE_RATE = 70
AGE_OVER_60 = (5, 15)
AGE_UNDER_30 = (-10, 0)
FITNESS_OVER_7 = (-20, -10)
FITNESS_UNDER_4 = (8, 18)
ACTIVITY_SHIFT = {
    "sedentary": (-5, 5),
    "light": (0, 10),
    "moderate": (10, 25),
    "vigorous": (20, 40),
}
CORTISOL_OVER_20 = (5, 12)
SLEEP_UNDER_4 = (3, 8)
START_JITTER = (-8, 8)
START_CLAMP = (50, 180)

# The trace: one reading every 5 minutes, each a random step from the last.
MINUTES_PER_READING = 5
STEP_CHANGE = (-5, 8)
MORNING_DRIFT = (3, 12)  # added from 6:00 to 9:00
MIDDAY_DRIFT = (2, 8)  # from 12:00 to 14:00
NIGHT_DRIFT = (-15, -5)  # from 22:00 to 5:00
VIGOROUS_EVENING_DRIFT = (8, 20)  # vigorous activity only, from 16:00 to 20:00
HR_CLAMP = (45, 200)


def draw(rng: random.Random, bounds: tuple[int, int]) -> int:
    """A uniform integer in [low, high]: as `rng.randint`, at a third of the cost."""
    low, high = bounds
    return low + int(rng.random() * (high - low + 1))


@dataclass
class Person:
    age: int
    fitness: float
    cortisol_morning: int
    cortisol_evening: int
    sleep_quality: int
    start_hour: int
    start_minute: int
    activity: str

    def prompt(self) -> str:
        return (
            f"<START> |Time of HR monitoring start: "
            f"{self.start_hour:02d}:{self.start_minute:02d}| |Biomarkers| "
            f"Cortisol_Morning: {self.cortisol_morning} - "
            f"Cortisol_Evening: {self.cortisol_evening} - "
            f"Sleep_Quality: {self.sleep_quality} - |Demographics| "
            f"Age: {self.age} - Fitness_Score: {self.fitness:.1f} - "
            f"Activity: {self.activity} -"
        )


def draw_person(rng: random.Random) -> Person:
    return Person(
        age=draw(rng, AGE),
        fitness=round(rng.uniform(*FITNESS), 1),
        cortisol_morning=draw(rng, CORTISOL_MORNING),
        cortisol_evening=draw(rng, CORTISOL_EVENING),
        sleep_quality=draw(rng, SLEEP_QUALITY),
        start_hour=draw(rng, START_HOUR),
        start_minute=rng.choice(START_MINUTES),
        activity=rng.choice(ACTIVITY_LEVELS),
    )


def starting_rate(rng: random.Random, person: Person) -> int:
    """The base rate shifted by the person's traits, plus a jitter, clamped."""
    rate = BASE_RATE
    if person.age > 60:
        rate += draw(rng, AGE_OVER_60)
    elif person.age < 30:
        rate += draw(rng, AGE_UNDER_30)
    if person.fitness > 7:  # the fitness as printed, after rounding
        rate += draw(rng, FITNESS_OVER_7)
    elif person.fitness < 4:
        rate += draw(rng, FITNESS_UNDER_4)
    rate += draw(rng, ACTIVITY_SHIFT[person.activity])
    if person.cortisol_morning > 20:
        rate += draw(rng, CORTISOL_OVER_20)
    if person.sleep_quality < 4:
        rate += draw(rng, SLEEP_UNDER_4)
    low, high = START_CLAMP
    return max(low, min(high, rate + draw(rng, START_JITTER)))


def walk_trace(rng: random.Random, person: Person, length: int) -> list[int]:
    """`length` HR readings; each step's change depends on the time of day."""
    vigorous = person.activity == "vigorous"
    low, high = HR_CLAMP
    rate = starting_rate(rng, person)
    readings = []
    for step in range(length):
        # Time of day in whole minutes (the start minute is not used), so
        # that a reading at exactly 9:00 is compared exactly with 9 * 60.
        minute = (person.start_hour * 60 + step * MINUTES_PER_READING) % (24 * 60)
        change = draw(rng, STEP_CHANGE)
        if 6 * 60 <= minute <= 9 * 60:
            change += draw(rng, MORNING_DRIFT)
        if 12 * 60 <= minute <= 14 * 60:
            change += draw(rng, MIDDAY_DRIFT)
        if minute >= 22 * 60 or minute <= 5 * 60:
            change += draw(rng, NIGHT_DRIFT)
        if vigorous and 16 * 60 <= minute <= 20 * 60:
            change += draw(rng, VIGOROUS_EVENING_DRIFT)
        rate += change
        if rate < low:  # two comparisons: faster than max() and min()
            rate = low
        elif rate > high:
            rate = high
        readings.append(rate)
    return readings


def simulate_sample(rng: random.Random, sequence_length: int = 64) -> tuple[str, str]:
    """One person's (prompt, HR trace); each token of the trace is a reading
    rounded down to an even number."""
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be at least 1, got {sequence_length}")
    person = draw_person(rng)
    readings = walk_trace(rng, person, sequence_length)
    return person.prompt(), " ".join([str(r - r % 2) for r in readings])
