"""Runs of a series at or below a threshold (service.rules_engine.phased.find_runs), the counting behind early
ICAHT: fixed examples, and properties over random daily ANC series (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from service.rules_engine.phased import find_runs
from service.timeline.facts import DayZero, Measurement

CET = timezone(timedelta(hours=1))
DAY_ZERO = DayZero(datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc), CET, "MedicationAdministration/cart", "axicabtagene-ciloleucel")


def _series(values: dict[int, float]) -> tuple[Measurement, ...]:
    return tuple(
        Measurement("neutrophils", value, "10*9/L", DAY_ZERO.time + timedelta(days=day, hours=-2 if day else 2),
                    f"Observation/n{day}", f"{value} 10*9/L")
        for day, value in sorted(values.items()))


def _spans(values: dict[int, float], threshold: float = 0.5) -> list[tuple[int, int, bool]]:
    return [(r.first_day, r.last_day, r.continuing) for r in find_runs(_series(values), threshold, 3, DAY_ZERO)]


def test_a_recovery_of_two_days_is_bridged_and_three_end_the_run():
    low, high = 0.3, 1.2
    two = {**{d: low for d in range(0, 5)}, 5: high, 6: high, **{d: low for d in range(7, 10)}, **{d: high for d in range(10, 14)}}
    assert _spans(two) == [(0, 9, False)]
    three = {**{d: low for d in range(0, 5)}, 5: high, 6: high, 7: high, **{d: low for d in range(8, 10)}, 10: high}
    assert _spans(three) == [(0, 4, False), (8, 9, True)]


def test_day_numbers_follow_the_infusion_offset():
    # 23:30 UTC on day 0 is 00:30 of day 1 in UTC+01:00, the infusion's offset
    late_evening = Measurement("neutrophils", 0.2, "10*9/L", datetime(2026, 3, 2, 23, 30, tzinfo=timezone.utc), "Observation/x", "0.2")
    (run,) = find_runs((late_evening,), 0.5, 3, DAY_ZERO)
    assert (run.first_day, run.last_day, run.days) == (1, 1, 1)


def test_the_threshold_itself_counts_as_below():
    assert _spans({0: 0.5, 1: 0.51, 2: 0.51, 3: 0.51}) == [(0, 0, False)]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.integers(min_value=0, max_value=40), st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.6, 1.2, 2.0]), min_size=1))
def test_runs_cover_every_low_day_and_never_overlap(values):
    runs = find_runs(_series(values), 0.5, 3, DAY_ZERO)
    low_days = {d for d, v in values.items() if v <= 0.5}
    covered = {d for r in runs for d in range(r.first_day, r.last_day + 1)}
    assert low_days <= covered
    assert all(values[r.first_day] <= 0.5 and values[r.last_day] <= 0.5 for r in runs)  # runs start and end below
    assert all(a.last_day < b.first_day for a, b in zip(runs, runs[1:]))
    assert all(not r.continuing for r in runs[:-1])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.integers(min_value=0, max_value=40), st.sampled_from([0.05, 0.3, 0.6, 1.2, 2.0]), min_size=1),
       st.integers(min_value=0, max_value=40))
def test_a_lower_value_never_shortens_the_longest_run(values, day):
    """Clinical safety: a worse count never gives a milder grade."""
    worse = {**values, day: 0.05}
    longest = max((r.days for r in find_runs(_series(values), 0.5, 3, DAY_ZERO)), default=0)
    assert max(r.days for r in find_runs(_series(worse), 0.5, 3, DAY_ZERO)) >= longest
