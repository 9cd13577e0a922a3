"""FHIR dateTime / instant parsing: timezone-aware instants only; date-only values are told apart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone


@dataclass(frozen=True, slots=True)
class DateOnly:
    """A FHIR date or partial date (YYYY, YYYY-MM, YYYY-MM-DD): no place in hour-based windows."""

    day: date


class TimeError(ValueError):
    pass


# Instants outside these years cannot be clinical data, and near datetime's limits window arithmetic
# (24 h back, UTC conversion) would overflow.
EARLIEST_YEAR = 1900
LATEST_YEAR = 2999


def parse_fhir_datetime(text: str) -> datetime | DateOnly:
    """Parse a FHIR dateTime. A time without a UTC offset is invalid FHIR and raises TimeError."""
    if len(text) <= 10:
        parts = text.split("-")
        try:
            year = int(parts[0])
            month = int(parts[1]) if len(parts) > 1 else 1
            day = int(parts[2]) if len(parts) > 2 else 1
            if not EARLIEST_YEAR <= year <= LATEST_YEAR:
                raise ValueError("year out of range")
            return DateOnly(date(year, month, day))
        except (ValueError, IndexError) as exc:
            raise TimeError(f"{text!r} is not a FHIR date") from exc
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimeError(f"{text!r} is not a FHIR dateTime") from exc
    if moment.tzinfo is None:
        raise TimeError(f"{text!r} has a time but no UTC offset")
    if not EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
        raise TimeError(f"{text!r} is outside the years {EARLIEST_YEAR}-{LATEST_YEAR}")
    return moment


def parse_instant_parameter(text: str) -> datetime:
    """A request parameter that must be a full ISO 8601 instant with a UTC offset (asOf)."""
    parsed = parse_fhir_datetime(text.replace(" ", "+") if "T" in text else text)
    if isinstance(parsed, DateOnly):
        raise TimeError(f"{text!r} is a date: give a date and time with a UTC offset, e.g. 2026-03-05T12:00:00+01:00")
    return parsed


def parse_infusion_date(text: str) -> tuple[datetime, bool]:
    """Day 0 given by the caller: a date (True: the timeline places it in the caller's offset) or a
    dateTime with a UTC offset. A '+' turned into a space by URL decoding is read back as '+'."""
    parsed = parse_fhir_datetime(text.replace(" ", "+") if "T" in text else text)
    if isinstance(parsed, DateOnly):
        return date_start(parsed.day), True
    return parsed, False


def date_start(day: date, tz: timezone | None = None) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz or timezone.utc)
