"""service.fhir_input.times and DayZero.day_of: aware instants only; dates told apart."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from service.fhir_input.times import DateOnly, TimeError, date_start, parse_fhir_datetime, parse_instant_parameter
from service.timeline.facts import DayZero

CET = timezone(timedelta(hours=1))


def test_z_suffix_parsed_as_utc():
    parsed = parse_fhir_datetime("2026-03-02T10:00:00Z")
    assert isinstance(parsed, datetime)
    assert parsed.tzinfo is not None
    assert parsed.utcoffset() == timedelta(0)
    assert parsed == datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "text, offset",
    [
        ("2026-03-02T10:00:00+01:00", timedelta(hours=1)),
        ("2026-03-02T10:00:00-05:00", timedelta(hours=-5)),
        ("2026-03-02T10:00:00+05:30", timedelta(hours=5, minutes=30)),
        ("2026-03-02T10:00:00.250+00:00", timedelta(0)),
    ],
)
def test_offsets_parsed_aware(text, offset):
    parsed = parse_fhir_datetime(text)
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == offset


def test_same_instant_in_two_offsets_compares_equal():
    assert parse_fhir_datetime("2026-03-02T23:30:00Z") == parse_fhir_datetime("2026-03-03T00:30:00+01:00")


def test_fractional_seconds_kept():
    parsed = parse_fhir_datetime("2026-03-02T10:00:00.250+01:00")
    assert parsed.microsecond == 250000


@pytest.mark.parametrize("text", ["2026-03-02T10:00:00", "2026-03-02T10:00", "2026-03-02T10:00:00.123"])
def test_time_without_offset_raises(text):
    with pytest.raises(TimeError, match="no UTC offset"):
        parse_fhir_datetime(text)


@pytest.mark.parametrize(
    "text, day",
    [("2026-03-02", date(2026, 3, 2)), ("2026-03", date(2026, 3, 1)), ("2026", date(2026, 1, 1))],
)
def test_date_only_and_partial_dates_give_date_only(text, day):
    parsed = parse_fhir_datetime(text)
    assert isinstance(parsed, DateOnly)
    assert parsed.day == day


@pytest.mark.parametrize("text", ["2026-13", "2026-02-30", "not-a-date", "2026-03-02T25:00:00Z", "yesterday at noon"])
def test_invalid_values_raise(text):
    with pytest.raises(TimeError):
        parse_fhir_datetime(text)


def test_time_error_is_a_value_error():
    assert issubclass(TimeError, ValueError)


def test_instant_parameter_accepts_url_decoded_plus():
    """'+' in a query string arrives as a space."""
    assert parse_instant_parameter("2026-03-05T12:00:00 01:00") == datetime(2026, 3, 5, 12, tzinfo=CET)


def test_instant_parameter_rejects_a_date():
    with pytest.raises(TimeError, match="is a date"):
        parse_instant_parameter("2026-03-05")


def test_instant_parameter_rejects_missing_offset():
    with pytest.raises(TimeError):
        parse_instant_parameter("2026-03-05T12:00:00")


def test_date_start_defaults_to_utc_midnight():
    assert date_start(date(2026, 3, 2)) == datetime(2026, 3, 2, tzinfo=timezone.utc)
    assert date_start(date(2026, 3, 2), CET) == datetime(2026, 3, 2, tzinfo=CET)


# --- DayZero.day_of ---------------------------------------------------------------------------------

# Day 0 as build_timeline makes it: the instant (held in UTC) and the offset the infusion was recorded in.
INFUSION = DayZero(
    time=datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc),
    offset=CET,
    source="MedicationAdministration/cart",
    product="axicabtagene-ciloleucel",
)


def test_day_of_uses_the_infusion_offset():
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-03T00:30:00+01:00")) == 1


def test_day_of_same_instant_seen_in_utc_is_still_day_1():
    """2026-03-02T23:30Z is 00:30 on 3 March at the infusion's offset: day 1, not day 0."""
    moment = parse_fhir_datetime("2026-03-02T23:30:00Z")
    assert moment.date() == date(2026, 3, 2)  # a naive calendar difference in UTC would say day 0
    assert INFUSION.day_of(moment) == 1


def test_day_of_infusion_day_and_before():
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-02T23:59:00+01:00")) == 0
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-02T08:00:00+01:00")) == 0
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-01T23:00:00Z")) == 0  # 00:00 on 2 March CET
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-01T22:59:00Z")) == -1


def test_day_of_later_days():
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-05T08:00:00+01:00")) == 3
    assert INFUSION.day_of(parse_fhir_datetime("2026-03-16T12:00:00-05:00")) == 14
    assert INFUSION.date == date(2026, 3, 2)


def test_day_of_counts_in_the_infusion_offset_not_utc():
    """An infusion at 00:30 local time (+01:00) is 23:30 UTC the day before: its day 0 is the local date."""
    late = DayZero(
        time=datetime(2026, 3, 1, 23, 30, tzinfo=timezone.utc), offset=CET, source="x", product="unspecified"
    )
    assert late.date == date(2026, 3, 2)
    assert late.day_of(parse_fhir_datetime("2026-03-02T22:00:00Z")) == 0  # 23:00 local, same day
    assert late.day_of(parse_fhir_datetime("2026-03-02T23:10:00Z")) == 1  # 00:10 local on 3 March
