"""The sample generator (single_sample_simulation.py) against the model of
docs/data-model.md.

Format and ranges are checked on every sample drawn. Distributions are checked
on samples made the way the server makes them (`SimulatedHealthData.samples`,
one seeded RNG per index: 6000 traces of 64 readings, 3000 of a day), and on
80,000 one-reading samples straight from `simulate_sample` for the sharpest
look at the start of a trace. Expected values come from the model itself,
worked out exactly (small discrete distributions convolved), not from the
code under test. Every statistical tolerance is 5 standard errors, computed
from the data (a correct model fails a check with odds below one in a
million), while a range off by one in any rule moves some statistic by more.
Last, the generator is compared field by field with an independent plain
`randint` version of the model (bench/plain_simulation.py), and that
comparison is shown to catch a model one value off.
"""

import itertools
import math
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import pytest

import single_sample_simulation
from bench.plain_simulation import plain_simulate_sample
from data_simulator import SimulatedHealthData
from single_sample_simulation import simulate_sample

N = 6000  # samples of 64 readings for the distribution tests
N_FIRST = 80_000  # samples of one reading for the tests of the first reading
Z = 5.0  # standard errors allowed by every statistical check

ACTIVITY_LEVELS = ("sedentary", "light", "moderate", "vigorous")

# The prompt of docs/data-model.md, field by field, as one exact pattern.
PROMPT = re.compile(
    r"<START> \|Time of HR monitoring start: (?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})\|"
    r" \|Biomarkers\| Cortisol_Morning: (?P<cortisol_morning>[1-9][0-9]*) -"
    r" Cortisol_Evening: (?P<cortisol_evening>[1-9][0-9]*) -"
    r" Sleep_Quality: (?P<sleep_quality>[1-9][0-9]*) -"
    r" \|Demographics\| Age: (?P<age>[1-9][0-9]*) -"
    r" Fitness_Score: (?P<fitness>(?:[1-9]|10)\.[0-9]) -"
    r" Activity: (?P<activity>sedentary|light|moderate|vigorous) -"
)
# "<START> |Time of HR monitoring start: HH:MM| |Biomarkers| ..." split on spaces.
PROMPT_TOKENS = 27


@dataclass(frozen=True)
class Person:
    hour: int
    minute: int
    cortisol_morning: int
    cortisol_evening: int
    sleep_quality: int
    age: int
    fitness: float
    activity: str


def parse_prompt(prompt: str) -> Person:
    match = PROMPT.fullmatch(prompt)
    assert match is not None, f"prompt does not follow docs/data-model.md: {prompt!r}"
    fields = match.groupdict()
    return Person(
        hour=int(fields["hour"]),
        minute=int(fields["minute"]),
        cortisol_morning=int(fields["cortisol_morning"]),
        cortisol_evening=int(fields["cortisol_evening"]),
        sleep_quality=int(fields["sleep_quality"]),
        age=int(fields["age"]),
        fitness=float(fields["fitness"]),
        activity=fields["activity"],
    )


def parse_trace(trace: str) -> list[int]:
    assert re.fullmatch(r"[0-9]+( [0-9]+)*", trace), f"bad trace text {trace!r}"
    return [int(token) for token in trace.split(" ")]


@dataclass(frozen=True)
class Drawn:
    people: list[Person]
    traces: list[list[int]]


def draw(pairs: Iterable[tuple[str, str]]) -> Drawn:
    people, traces = [], []
    for prompt, trace in pairs:
        people.append(parse_prompt(prompt))
        traces.append(parse_trace(trace))
    return Drawn(people, traces)


@pytest.fixture(scope="module")
def served() -> Drawn:
    """N samples exactly as the server makes them (seed 11, indices 0..N-1)."""
    source = SimulatedHealthData(seed=11, sequence_length=64)
    samples = source.samples(range(N))
    return draw(
        (s["inputs"]["text_input"], s["inputs"]["text_output"]) for s in samples
    )


@pytest.fixture(scope="module")
def first_readings() -> list[tuple[Person, int]]:
    """N_FIRST people with the one reading of a trace of sequence length 1."""
    rng = random.Random(12)
    pairs = (simulate_sample(rng, 1) for _ in range(N_FIRST))
    return [(parse_prompt(prompt), int(trace)) for prompt, trace in pairs]


@pytest.fixture(scope="module")
def plain() -> Drawn:
    """N samples of the plain `randint` reference, bench/plain_simulation.py."""
    rng = random.Random(20240611)
    return draw(plain_simulate_sample(rng, 64) for _ in range(N))


# -- statistics helpers -------------------------------------------------------
def mean_and_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def assert_share(count: int, total: int, expected: float, what: str) -> None:
    share = count / total
    se = math.sqrt(expected * (1 - expected) / total)
    assert abs(share - expected) <= Z * se, (
        f"{what}: share {share:.4f}, expected {expected:.4f} ± {Z * se:.4f}"
    )


def assert_mean(values: list[float], expected: float, what: str, slack=0.0) -> None:
    mean, se = mean_and_se(values)
    assert abs(mean - expected) <= slack + Z * se, (
        f"{what}: mean {mean:.4f}, expected {expected:.4f} ± {slack + Z * se:.4f}"
    )


def assert_same_mean(a: list[float], b: list[float], what: str) -> None:
    (mean_a, se_a), (mean_b, se_b) = mean_and_se(a), mean_and_se(b)
    tolerance = Z * math.hypot(se_a, se_b)
    assert abs(mean_a - mean_b) <= tolerance, (
        f"{what}: {mean_a:.4f} vs {mean_b:.4f}, allowed difference {tolerance:.4f}"
    )


# -- exact distributions of the model, for expected values ---------------------
Pmf = dict[int, float]


def uniform(low: int, high: int) -> Pmf:
    return {v: 1 / (high - low + 1) for v in range(low, high + 1)}


def mixture(*parts: tuple[float, Pmf]) -> Pmf:
    out: Pmf = {}
    for weight, pmf in parts:
        for v, p in pmf.items():
            out[v] = out.get(v, 0.0) + weight * p
    return out


def add(a: Pmf, b: Pmf) -> Pmf:
    out: Pmf = {}
    for x, p in a.items():
        for y, q in b.items():
            out[x + y] = out.get(x + y, 0.0) + p * q
    return out


def apply(pmf: Pmf, fn: Callable[[int], int]) -> Pmf:
    out: Pmf = {}
    for v, p in pmf.items():
        out[fn(v)] = out.get(fn(v), 0.0) + p
    return out


NOTHING: Pmf = {0: 1.0}
ACTIVITY_SHIFT = {
    "vigorous": uniform(20, 40),
    "moderate": uniform(10, 25),
    "light": uniform(0, 10),
    "sedentary": uniform(-5, 5),
}
AGE_OVER_60, AGE_UNDER_30 = uniform(5, 15), uniform(-10, 0)
FIT_OVER_7, FIT_UNDER_4 = uniform(-20, -10), uniform(8, 18)
CORTISOL_OVER_20, SLEEP_UNDER_4 = uniform(5, 12), uniform(3, 8)
STEP, MORNING = uniform(-5, 8), uniform(3, 12)


def first_token_pmf(shifts: list[Pmf], morning: float) -> Pmf:
    """The first token, given the base-rate shifts and P(start hour in 6..9)."""
    base = {70: 1.0}
    for shift in [*shifts, uniform(-8, 8)]:  # the last one is the jitter
        base = add(base, shift)
    start = apply(base, lambda v: min(max(v, 50), 180))
    change = mixture((morning, add(STEP, MORNING)), (1 - morning, STEP))
    return apply(add(start, change), lambda v: 2 * (min(max(v, 45), 200) // 2))


def moments(pmf: Pmf) -> tuple[float, float]:
    mean = sum(v * p for v, p in pmf.items())
    return mean, sum((v - mean) ** 2 * p for v, p in pmf.items())


@dataclass(frozen=True)
class Expected:
    mean: float
    variance: float
    support: frozenset[int]


def expected_first_token(activity: str) -> tuple[float, float]:
    """Mean and standard deviation of the first token of one activity level."""
    # P(printed fitness > 7) = P(U[1, 10] >= 7.05); P(< 4) = P(U < 3.95).
    fit_tail = 2.95 / 9
    shifts = [
        mixture((20 / 63, AGE_OVER_60), (12 / 63, AGE_UNDER_30), (31 / 63, NOTHING)),
        mixture(
            (fit_tail, FIT_OVER_7), (fit_tail, FIT_UNDER_4), (1 - 2 * fit_tail, NOTHING)
        ),
        ACTIVITY_SHIFT[activity],
        mixture((5 / 16, CORTISOL_OVER_20), (11 / 16, NOTHING)),
        mixture((3 / 10, SLEEP_UNDER_4), (7 / 10, NOTHING)),
    ]
    # Step 0 is at the start hour, 6..10: the morning drift applies to 6..9.
    mean, variance = moments(first_token_pmf(shifts, 4 / 5))
    return mean, math.sqrt(variance)


@cache
def _conditional(
    age: str, fit: str, activity: str, cortisol: bool, sleep: bool, morning: bool
) -> Expected:
    shifts = [
        {"over 60": AGE_OVER_60, "under 30": AGE_UNDER_30, "": NOTHING}[age],
        {"over 7": FIT_OVER_7, "under 4": FIT_UNDER_4, "": NOTHING}[fit],
        ACTIVITY_SHIFT[activity],
        CORTISOL_OVER_20 if cortisol else NOTHING,
        SLEEP_UNDER_4 if sleep else NOTHING,
    ]
    pmf = first_token_pmf(shifts, 1.0 if morning else 0.0)
    return Expected(*moments(pmf), frozenset(v for v, p in pmf.items() if p > 0))


RULES = ("age", "fitness", "activity", "cortisol over 20", "sleep under 4", "morning")


def rules_of(p: Person) -> tuple[str, str, str, bool, bool, bool]:
    """Which base-rate rules of the model apply to this person (see RULES)."""
    return (
        "over 60" if p.age > 60 else "under 30" if p.age < 30 else "",
        "over 7" if p.fitness > 7 else "under 4" if p.fitness < 4 else "",
        p.activity,
        p.cortisol_morning > 20,
        p.sleep_quality < 4,
        6 <= p.hour <= 9,
    )


# -- format --------------------------------------------------------------------
def test_prompt_follows_the_template_exactly() -> None:
    source = SimulatedHealthData(seed=11)
    for index in (0, 1, 2, 500, 5999):
        prompt = source.sample(index)["inputs"]["text_input"]
        person = parse_prompt(prompt)
        rebuilt = (
            f"<START> |Time of HR monitoring start: "
            f"{person.hour:02d}:{person.minute:02d}| |Biomarkers| "
            f"Cortisol_Morning: {person.cortisol_morning} - "
            f"Cortisol_Evening: {person.cortisol_evening} - "
            f"Sleep_Quality: {person.sleep_quality} - |Demographics| "
            f"Age: {person.age} - Fitness_Score: {person.fitness:.1f} - "
            f"Activity: {person.activity} -"
        )
        assert prompt == rebuilt
        assert len(prompt.split(" ")) == PROMPT_TOKENS
        assert prompt.split() == prompt.split(" ")  # single spaces, no padding


def test_prompt_token_count_is_fixed() -> None:
    source = SimulatedHealthData(seed=2)
    counts = {
        len(s["inputs"]["text_input"].split()) for s in source.samples(range(300))
    }
    assert counts == {PROMPT_TOKENS}


def test_every_field_is_within_its_range(served: Drawn) -> None:
    for p in served.people:
        assert 6 <= p.hour <= 10, p
        assert p.minute in (0, 15, 30, 45), p
        assert 10 <= p.cortisol_morning <= 25, p
        assert 3 <= p.cortisol_evening <= 12, p
        assert 1 <= p.sleep_quality <= 10, p
        assert 18 <= p.age <= 80, p
        assert 1.0 <= p.fitness <= 10.0, p
        assert p.activity in ACTIVITY_LEVELS, p


def test_every_value_of_the_integer_fields_occurs(served: Drawn) -> None:
    # With 6000 draws, a value of probability >= 1/63 is missed with odds < e^-90.
    people = served.people
    assert {p.hour for p in people} == set(range(6, 11))
    assert {p.minute for p in people} == {0, 15, 30, 45}
    assert {p.cortisol_morning for p in people} == set(range(10, 26))
    assert {p.cortisol_evening for p in people} == set(range(3, 13))
    assert {p.sleep_quality for p in people} == set(range(1, 11))
    assert {p.age for p in people} == set(range(18, 81))
    assert {p.activity for p in people} == set(ACTIVITY_LEVELS)


@pytest.mark.parametrize("length", [1, 2, 64, 100, 512])
def test_trace_has_sequence_length_even_tokens_in_range(length: int) -> None:
    source = SimulatedHealthData(seed=5, sequence_length=length)
    for sample in source.samples(range(40)):
        tokens = parse_trace(sample["inputs"]["text_output"])
        assert len(tokens) == length
        assert all(t % 2 == 0 and 44 <= t <= 200 for t in tokens), tokens
    rng = random.Random(9)
    for _ in range(40):
        prompt, trace = simulate_sample(rng, length)
        parse_prompt(prompt)
        assert len(parse_trace(trace)) == length


def test_consecutive_readings_move_at_most_one_step() -> None:
    # One step changes the value by -(5+15) at night up to 8+20 on a vigorous
    # evening; rounding down to even adds at most 1 either way. 512 readings
    # span more than a day, so every time-of-day rule is exercised.
    source = SimulatedHealthData(seed=8, sequence_length=512)
    for sample in source.samples(range(60)):
        tokens = parse_trace(sample["inputs"]["text_output"])
        steps = [b - a for a, b in itertools.pairwise(tokens)]
        assert min(steps) >= -21 and max(steps) <= 29, (min(steps), max(steps))


def test_sequence_length_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="sequence_length"):
        simulate_sample(random.Random(0), 0)


# -- determinism ---------------------------------------------------------------
def test_sample_is_a_function_of_seed_and_index() -> None:
    first = SimulatedHealthData(seed=3).sample(17)
    random.seed(999)  # the global random state must not matter
    random.random()
    again = SimulatedHealthData(seed=3)
    assert again.sample(17) == first
    assert again.sample(17) == first
    # Order and batching do not matter either.
    batch = again.samples([40, 17, 3])
    assert batch[1] == first
    assert batch == [again.sample(40), again.sample(17), again.sample(3)]


def test_simulate_sample_depends_only_on_its_rng() -> None:
    assert simulate_sample(random.Random(42), 64) == simulate_sample(
        random.Random(42), 64
    )
    assert simulate_sample(random.Random(42), 64) != simulate_sample(
        random.Random(43), 64
    )


def test_different_indices_and_seeds_give_different_samples() -> None:
    def content(sample: dict) -> tuple[str, str]:
        return sample["inputs"]["text_input"], sample["inputs"]["text_output"]

    a = [content(s) for s in SimulatedHealthData(seed=0).samples(range(100))]
    b = [content(s) for s in SimulatedHealthData(seed=1).samples(range(100))]
    assert len(set(a)) == 100  # no two indices alike
    assert all(x != y for x, y in zip(a, b, strict=True))  # seed changes each one
    assert len(set(a) & set(b)) == 0


# -- distributions of the prompt ----------------------------------------------
def test_activity_levels_are_equally_likely(served: Drawn) -> None:
    counts = Counter(p.activity for p in served.people)
    for level in ACTIVITY_LEVELS:
        assert_share(counts[level], N, 0.25, f"activity {level}")


def test_age_is_uniform_over_18_to_80(served: Drawn) -> None:
    ages = [p.age for p in served.people]
    assert_mean(ages, 49.0, "age")
    # Thirds of the range: 18..38, 39..59, 60..80.
    for low in (18, 39, 60):
        inside = sum(low <= a <= low + 20 for a in ages)
        assert_share(inside, N, 21 / 63, f"age {low}..{low + 20}")
    # The thresholds of the HR model: over 60 and under 30.
    assert_share(sum(a > 60 for a in ages), N, 20 / 63, "age over 60")
    assert_share(sum(a < 30 for a in ages), N, 12 / 63, "age under 30")


def test_start_hour_and_minute_are_uniform(served: Drawn) -> None:
    hours = Counter(p.hour for p in served.people)
    minutes = Counter(p.minute for p in served.people)
    for hour in range(6, 11):
        assert_share(hours[hour], N, 1 / 5, f"start hour {hour}")
    for minute in (0, 15, 30, 45):
        assert_share(minutes[minute], N, 1 / 4, f"start minute {minute}")


def test_fitness_is_uniform_over_1_to_10(served: Drawn) -> None:
    fitness = [p.fitness for p in served.people]
    assert min(fitness) < 1.2 and max(fitness) > 9.8
    assert_mean(fitness, 5.5, "fitness")
    assert_share(sum(f > 7 for f in fitness), N, 2.95 / 9, "fitness over 7")
    assert_share(sum(f < 4 for f in fitness), N, 2.95 / 9, "fitness under 4")


def test_biomarkers_are_uniform(served: Drawn) -> None:
    people = served.people
    assert_mean([p.cortisol_morning for p in people], 17.5, "morning cortisol")
    assert_mean([p.cortisol_evening for p in people], 7.5, "evening cortisol")
    assert_mean([p.sleep_quality for p in people], 5.5, "sleep quality")
    assert_share(sum(p.cortisol_morning > 20 for p in people), N, 5 / 16, "cortisol>20")
    assert_share(sum(p.sleep_quality < 4 for p in people), N, 3 / 10, "sleep<4")


# -- distributions of the trace -----------------------------------------------
def test_first_reading_by_activity_level_matches_the_model(
    first_readings: list[tuple[Person, int]],
) -> None:
    first: dict[str, list[float]] = {level: [] for level in ACTIVITY_LEVELS}
    for person, token in first_readings:
        first[person.activity].append(token)
    for level in ACTIVITY_LEVELS:
        expected, sd = expected_first_token(level)
        assert_mean(first[level], expected, f"first reading, {level}")
        assert statistics.stdev(first[level]) == pytest.approx(sd, rel=0.05)
    # The vigorous - sedentary shift: +20..40 against -5..+5 is 30, a bit
    # less because sedentary starts are clamped up to 50 more often.
    expected_shift = (
        expected_first_token("vigorous")[0] - expected_first_token("sedentary")[0]
    )
    (vig, se_vig), (sed, se_sed) = (
        mean_and_se(first["vigorous"]),
        mean_and_se(first["sedentary"]),
    )
    tolerance = Z * math.hypot(se_vig, se_sed)
    assert abs((vig - sed) - expected_shift) <= tolerance, (
        f"vigorous - sedentary first reading {vig - sed:.2f}, expected "
        f"{expected_shift:.2f} ± {tolerance:.2f}"
    )


def test_first_reading_given_the_prompt_matches_the_model(
    first_readings: list[tuple[Person, int]],
) -> None:
    # Every prompt fixes which base-rate rules apply; the model then gives the
    # exact distribution of the first token. The token must lie in its
    # support, and residuals are summed per rule that applies and per value
    # of each field, so a rule firing at the wrong threshold (say age 60
    # counted as "over 60") or a range one too wide or narrow shows up.
    groups: dict[tuple[str, object], list[tuple[float, float]]] = {}
    for person, token in first_readings:
        rules = rules_of(person)
        expected = _conditional(*rules)
        assert token in expected.support, (person, token, sorted(expected.support))
        row = (token - expected.mean, expected.variance)
        for rule, applies in zip(RULES, rules, strict=True):
            groups.setdefault((rule, applies), []).append(row)
        for field in ("hour", "cortisol_morning", "sleep_quality", "age", "fitness"):
            groups.setdefault((field, getattr(person, field)), []).append(row)
        groups.setdefault(("activity", person.activity), []).append(row)
        groups.setdefault(("all", None), []).append(row)
    for key, rows in groups.items():
        residual = sum(r for r, _ in rows)
        se = math.sqrt(sum(v for _, v in rows))
        assert abs(residual) <= Z * se, (
            f"first reading for {key[0]}={key[1]}: mean residual "
            f"{residual / len(rows):+.3f} over {len(rows)} samples, allowed "
            f"±{Z * se / len(rows):.3f}"
        )


def minute_of_day(start_hour: int, step: int) -> int:
    return (start_hour * 60 + 5 * step) % 1440


@dataclass(frozen=True)
class StepModel:
    low: int  # smallest change
    high: int  # largest change
    mean: float
    p_not_down: float  # P(change >= 0): the chance a reading at 200 stays there
    p_not_up: float  # P(change <= 0): the chance a reading at 45 stays there


@cache
def step_model(minute: int, vigorous: bool) -> StepModel:
    """The change of one step at this minute of the day, from the model."""
    change = STEP
    if 6 * 60 <= minute <= 9 * 60:
        change = add(change, uniform(3, 12))
    if 12 * 60 <= minute <= 14 * 60:
        change = add(change, uniform(2, 8))
    if minute >= 22 * 60 or minute <= 5 * 60:
        change = add(change, uniform(-15, -5))
    if vigorous and 16 * 60 <= minute <= 20 * 60:
        change = add(change, uniform(8, 20))
    return StepModel(
        low=min(change),
        high=max(change),
        mean=moments(change)[0],
        p_not_down=sum(p for v, p in change.items() if v >= 0),
        p_not_up=sum(p for v, p in change.items() if v <= 0),
    )


def test_step_changes_follow_the_time_of_day() -> None:
    # A day of readings (288) from 3000 people covers every time-of-day rule.
    # Each step is judged from the previous token alone (known before the
    # change is drawn, so no selection bias):
    # - where no clamp can act, the difference of two tokens
    #   is the change up to the rounding to even, so its range and mean are
    #   those of the hour's rule;
    # - at 200 the trace stays at 200 exactly when the change is >= 0, and at
    #   45 (token 44) exactly when it is <= 0. Traces saturate within hours,
    #   so this is where the rules of the afternoon and night can be seen;
    #   it is checked minute by minute, which pins each rule's boundaries.
    length = 288
    source = SimulatedHealthData(seed=21, sequence_length=length)
    by_rule: dict[tuple[bool, bool, bool], list[int]] = {}
    by_minute: dict[int, list[int]] = {}
    at_clamp: dict[int, list[tuple[bool, float]]] = {}
    vigorous_evening_steps = 0
    for sample in source.samples(range(3000)):
        person = parse_prompt(sample["inputs"]["text_input"])
        tokens = parse_trace(sample["inputs"]["text_output"])
        vigorous = person.activity == "vigorous"
        for step in range(1, length):
            minute = minute_of_day(person.hour, step)
            before, after = tokens[step - 1], tokens[step]
            model = step_model(minute, vigorous)
            if before == 200:
                at_clamp.setdefault(minute, []).append((after == 200, model.p_not_down))
            elif before == 44:
                at_clamp.setdefault(minute, []).append((after == 44, model.p_not_up))
            if vigorous and 16 * 60 <= minute <= 20 * 60:
                vigorous_evening_steps += 1  # change >= -5 + 8: never down
                assert after - before >= 2 or after == 200, (person, step)
            # The value is `before` or `before + 1`; no clamp can act if:
            elif before + model.low >= 45 and before + 1 + model.high <= 200:
                rule = (
                    6 * 60 <= minute <= 9 * 60,
                    12 * 60 <= minute <= 14 * 60,
                    minute >= 22 * 60 or minute <= 5 * 60,
                )
                by_rule.setdefault(rule, []).append(after - before)
                by_minute.setdefault(minute, []).append(after - before)
    assert vigorous_evening_steps > 10_000

    rules = {  # (low, high) of the change: -5..8 plus the drift of the hour
        (False, False, False): (-5, 8),
        (True, False, False): (-5 + 3, 8 + 12),
        (False, True, False): (-5 + 2, 8 + 8),
        (False, False, True): (-5 - 15, 8 - 5),
    }
    assert set(by_rule) == set(rules)
    for rule, (low, high) in rules.items():
        diffs = by_rule[rule]
        assert len(diffs) > 5_000, (rule, len(diffs))
        # Rounding down to even moves a difference by at most 1 either way.
        assert low - 1 <= min(diffs) <= low + 1, (rule, min(diffs))
        assert high - 1 <= max(diffs) <= high + 1, (rule, max(diffs))
        # The mean of a uniform change is the middle of its range (the
        # rounding of the two tokens cancels up to a few hundredths).
        assert_mean(diffs, (low + high) / 2, f"step change {rule}", slack=0.05)

    checked_minutes = set()
    for minute, diffs in by_minute.items():
        if len(diffs) >= 200:
            expected = step_model(minute, False).mean
            assert_mean(diffs, expected, f"step change at minute {minute}", 0.1)
            checked_minutes.add(minute)
    for minute, rows in at_clamp.items():
        if len(rows) >= 200:
            stayed = sum(s for s, _ in rows)
            expected = sum(p for _, p in rows)
            se = math.sqrt(sum(p * (1 - p) for _, p in rows))
            assert abs(stayed - expected) <= Z * se + 1, (
                f"at minute {minute}: {stayed} of {len(rows)} readings stayed at "
                f"the clamp, the model expects {expected:.1f} ± {Z * se:.1f}"
            )
            checked_minutes.add(minute)
    # Every boundary of a rule, and the minutes on either side, was checked.
    for hour in (5, 6, 9, 12, 14, 16, 20, 22):
        for minute in (hour * 60 - 5, hour * 60, hour * 60 + 5):
            assert minute in checked_minutes, minute


def test_saturation_matches_the_data_model_page(served: Drawn) -> None:
    # docs/data-model.md: with 64 steps about 43% of readings are 200 and about
    # two thirds of traces end at 200. Readings within a trace are correlated, so
    # the standard error is taken over per-trace shares. The slack covers the
    # rounding of "about 43%" and "about two thirds" (the model gives 0.65).
    at_200 = [sum(t == 200 for t in trace) / len(trace) for trace in served.traces]
    assert_mean(at_200, 0.43, "share of readings at 200", slack=0.01)
    ends = [float(trace[-1] == 200) for trace in served.traces]
    assert_mean(ends, 2 / 3, "share of traces ending at 200", slack=0.03)


# -- the model against an independent reading of it ---------------------------
# bench/plain_simulation.py writes the same model the most obvious way, one
# `randint` per draw. Two samples, one from each, are compared field by field
# with two-sample tests whose false-alarm rate is at most ALPHA each; the
# checks that follow show that they do catch a model one value off.
ALPHA = 1e-6
Z_UPPER = statistics.NormalDist().inv_cdf(1 - ALPHA)  # one-sided, for chi-square


def chi_square_critical(dof: int) -> float:
    """Upper ALPHA quantile of chi-square(dof) by the Wilson-Hilferty
    approximation; checked by numerical integration to exceed no more than
    ALPHA of the distribution for dof 1 ... 60 (it errs on the safe side)."""
    h = 2 / (9 * dof)
    return dof * (1 - h + Z_UPPER * math.sqrt(h)) ** 3


def homogeneity(a: Iterable[object], b: Iterable[object]) -> tuple[float, int]:
    """Two-sample chi-square statistic of two categorical samples, and its dof.

    Categories expected fewer than 5 times in either sample are pooled.
    """
    count_a, count_b = Counter(a), Counter(b)
    n_a, n_b = sum(count_a.values()), sum(count_b.values())
    cells: list[tuple[int, int]] = []
    pool_a = pool_b = 0
    for category in sorted(set(count_a) | set(count_b), key=str):
        x, y = count_a[category], count_b[category]
        total = x + y
        if min(total * n_a, total * n_b) / (n_a + n_b) < 5:
            pool_a, pool_b = pool_a + x, pool_b + y
        else:
            cells.append((x, y))
    if pool_a + pool_b:
        cells.append((pool_a, pool_b))
    chi2 = 0.0
    for x, y in cells:
        total = x + y
        for observed, n in ((x, n_a), (y, n_b)):
            expected = total * n / (n_a + n_b)
            chi2 += (observed - expected) ** 2 / expected
    return chi2, len(cells) - 1


def same_distribution(a: list[object], b: list[object], what: str) -> list[str]:
    chi2, dof = homogeneity(a, b)
    limit = chi_square_critical(max(dof, 1))
    if chi2 > limit:
        return [f"{what}: chi-square {chi2:.1f} with {dof} dof, limit {limit:.1f}"]
    return []


def same_mean(a: list[float], b: list[float], what: str) -> list[str]:
    (mean_a, se_a), (mean_b, se_b) = mean_and_se(a), mean_and_se(b)
    tolerance = Z * math.hypot(se_a, se_b)
    if abs(mean_a - mean_b) > tolerance:
        return [f"{what}: {mean_a:.3f} vs {mean_b:.3f}, allowed ±{tolerance:.3f}"]
    return []


PERSON_FIELDS = (
    "hour",
    "minute",
    "cortisol_morning",
    "cortisol_evening",
    "sleep_quality",
    "age",
    "fitness",
    "activity",
)


def compare(ours: Drawn, plain: Drawn) -> list[str]:
    """Every check of `ours` against `plain`; the list of those that failed."""
    failures: list[str] = []
    for name in PERSON_FIELDS:
        a = [getattr(p, name) for p in ours.people]
        b = [getattr(p, name) for p in plain.people]
        # Same values: every value of every field is expected over 25 times
        # in a few thousand samples, so one is missing by chance with odds
        # below e**-25.
        if set(a) != set(b):
            failures.append(f"{name}: values {sorted(set(a) ^ set(b))} in one only")
        failures += same_distribution(a, b, name)
    pairs = [list(zip(d.people, d.traces, strict=True)) for d in (ours, plain)]

    def both(stat: Callable[[Person, list[int]], float]) -> tuple[list, list]:
        """The statistic of every sample of ours, and of plain."""
        a, b = ([stat(p, t) for p, t in side] for side in pairs)
        return a, b

    failures += same_distribution(*both(lambda p, t: t[0]), "first reading")
    failures += same_mean(*both(lambda p, t: t[0]), "first reading")
    # The trace by activity level (the trace's strongest driver) and overall.
    for level in ACTIVITY_LEVELS:
        a, b = (
            [statistics.fmean(t) for p, t in side if p.activity == level]
            for side in pairs
        )
        failures += same_mean(a, b, f"mean trace, {level}")
    for name, stat in (
        ("mean trace", lambda p, t: statistics.fmean(t)),
        ("eighth reading", lambda p, t: t[7]),
        ("reading 24", lambda p, t: t[24]),
        ("share of readings at 200", lambda p, t: t.count(200) / len(t)),
        ("lowest reading", lambda p, t: min(t)),
        ("last reading", lambda p, t: t[-1]),
    ):
        failures += same_mean(*both(stat), name)
    failures += same_distribution(
        *both(lambda p, t: t[-1] // 10), "last reading (tens)"
    )
    # Every even value 44 ... 200 is reachable, and a few thousand traces of
    # 64 readings reach each of them.
    values = [{x for trace in side.traces for x in trace} for side in (ours, plain)]
    if values[0] != values[1]:
        failures.append(f"readings {sorted(values[0] ^ values[1])} in one only")
    return failures


def seeded_samples(seed: str, n: int = N) -> Drawn:
    """n samples of simulate_sample, one RNG per index as the server seeds it."""
    return draw(simulate_sample(random.Random(f"{seed}:{i}"), 64) for i in range(n))


def test_every_field_is_distributed_as_in_the_plain_reference(
    served: Drawn, plain: Drawn
) -> None:
    assert compare(served, plain) == []


def test_the_comparison_catches_a_step_range_one_value_short(
    plain: Drawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # -5 ... +7 instead of -5 ... +8: every step's mean change drops by 0.5.
    monkeypatch.setattr(single_sample_simulation, "STEP_CHANGE", (-5, 7))
    failures = compare(seeded_samples("short step"), plain)
    assert any("mean trace" in f for f in failures), failures
    assert any("200" in f for f in failures), failures


def test_the_comparison_catches_fitness_rounded_down(
    plain: Drawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rounding the uniform score down instead of to nearest: 1.0 at twice its
    # weight and 10.0 never drawn, every other score as likely as before.
    def round_down(x: float, digits: int) -> float:
        return math.floor(x * 10**digits) / 10**digits

    monkeypatch.setattr(single_sample_simulation, "round", round_down, raising=False)
    failures = compare(seeded_samples("rounded down"), plain)
    assert [f for f in failures if f.startswith("fitness: values")], failures
