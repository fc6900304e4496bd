"""The simulation model written the most obvious way, one `randint` per draw.

A second, independent reading of docs/data-model.md: the distribution tests
(tests/unit/test_generator.py) check that single_sample_simulation.py draws from
the same model, field by field, and bench/throughput.py and
bench/executors.py time it as the rate that bounds the tutorial's server,
whose generator is written this way. It lives in bench/ with the sample
sources that the tests and the benchmarks share.
"""

import random


def plain_simulate_sample(
    rng: random.Random, sequence_length: int = 64
) -> tuple[str, str]:
    """Draw one person and return (prompt, HR trace), one `randint` per draw."""
    age = rng.randint(18, 80)
    fitness = round(rng.uniform(1.0, 10.0), 1)
    cortisol_morning = rng.randint(10, 25)
    cortisol_evening = rng.randint(3, 12)
    sleep_quality = rng.randint(1, 10)
    start_hour = rng.randint(6, 10)
    start_minute = rng.choice([0, 15, 30, 45])
    activity = rng.choice(["sedentary", "light", "moderate", "vigorous"])

    prompt = (
        f"<START> |Time of HR monitoring start: {start_hour:02d}:{start_minute:02d}| "
        f"|Biomarkers| Cortisol_Morning: {cortisol_morning} - "
        f"Cortisol_Evening: {cortisol_evening} - Sleep_Quality: {sleep_quality} - "
        f"|Demographics| Age: {age} - Fitness_Score: {fitness:.1f} - "
        f"Activity: {activity} -"
    )

    base = 70
    if age > 60:
        base += rng.randint(5, 15)
    elif age < 30:
        base -= rng.randint(0, 10)
    if fitness > 7:
        base -= rng.randint(10, 20)
    elif fitness < 4:
        base += rng.randint(8, 18)
    if activity == "vigorous":
        base += rng.randint(20, 40)
    elif activity == "moderate":
        base += rng.randint(10, 25)
    elif activity == "light":
        base += rng.randint(0, 10)
    else:
        base += rng.randint(-5, 5)
    if cortisol_morning > 20:
        base += rng.randint(5, 12)
    if sleep_quality < 4:
        base += rng.randint(3, 8)

    value = max(50, min(180, base + rng.randint(-8, 8)))
    readings = []
    for step in range(sequence_length):
        hour = (start_hour + step * 5 / 60) % 24
        change = rng.randint(-5, 8)
        if 6 <= hour <= 9:
            change += rng.randint(3, 12)
        if 12 <= hour <= 14:
            change += rng.randint(2, 8)
        if hour >= 22 or hour <= 5:
            change -= rng.randint(5, 15)
        if activity == "vigorous" and 16 <= hour <= 20:
            change += rng.randint(8, 20)
        value = max(45, min(200, value + change))
        readings.append(str(2 * (value // 2)))
    return prompt, " ".join(readings)
