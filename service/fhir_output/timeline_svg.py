"""The regimen course as a picture (`cartox evaluate FILE --timeline out.svg`): pure, no I/O.

Drawn from the regimen finding of the same evaluation the cards and FHIR outputs come from: the lineages' grades
at each count (step lines), the drug given per day (bars) and the regimen's planned dose (dashed), and the
regimen's states as bands along the top. Every text from the input or the rules is XML-escaped; the SVG has no
scripts and no external resources. Each series is a <g> with a stable `data-series` so that tests (and a
reader's tools) can find it; each drawn value carries its day and value as data attributes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, time
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

from service.rules_engine.load import Evaluation
from service.rules_engine.regimen import LineagePoint, RegimenFinding
from service.timeline.facts import DayZero, Timeline

SVG_NS = "http://www.w3.org/2000/svg"
WIDTH = 900
_LEFT, _RIGHT = 64, 76
_PLOT_W = WIDTH - _LEFT - _RIGHT
_BAND_TOP, _BAND_H = 54, 24
_NA_Y = 104  # the row of counts that could not be graded, above the grades
_GRADE_BOTTOM, _GRADE_STEP = 284, 34
_DOSE_TOP, _DOSE_BOTTOM = 314, 414
_AXIS_LABEL_Y = 432
_LEGEND_Y = 462
_HEIGHT = 490
_MIN_TOP_GRADE = 4  # the axis always reaches grade 4 so that pictures compare; higher grades extend it
_TICK_DAYS = 7
_MIN_LABEL_GAP_PX = 46
_CHAR_PX = 6.2  # average glyph width of 11 px sans-serif, a little generous: legend spacing
_BAND_CHAR_PX = 5.6  # the same for the 10 px band labels: whether a state's name fits its band
# (stroke colour, dash pattern, marker) per lineage: distinct in colour and, in greyscale, in dash and marker
_LINEAGE_STYLES = (("#1f5fbf", "", "circle"), ("#c0392b", "7 4", "square"), ("#1e8c5a", "2 3", "triangle"))
_STATE_FILLS = ("#dfe7f2", "#fde2c4", "#d9f0d3", "#f6d5e5", "#fff1b3", "#cfe8ef", "#e8dcf5", "#f9d6d0",
                "#e1eed0", "#f2e3cf", "#d7d7d7", "#cde3f7")
_GIVEN_FILL = "#8a8f98"
_PLAN_STROKE = "#111111"
_FONT = "sans-serif"
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def timeline_svg(evaluation: Evaluation, timeline: Timeline) -> str:
    """The regimen course of the evaluation as a standalone SVG document (an explanatory one without a course)."""
    finding = next((f for f in evaluation.findings if isinstance(f, RegimenFinding)), None)
    patient = timeline.patient or "patient not identified"
    as_of = timeline.as_of.astimezone(timeline.display_offset).isoformat(timespec="minutes").replace("T", " ")
    if finding is None:
        return _message_svg(f"{patient}, as of {as_of}", "No regimen rule in the rule set: no course to draw.")
    zero = timeline.day_zero
    if zero is None or not finding.day_zero_known:
        return _message_svg(f"{finding.rule.long_name}: {patient}, as of {as_of}",
                            "No CAR-T infusion (day 0) in the record: the course cannot be drawn.")
    return _Course(finding, evaluation, timeline, zero).draw(f"{finding.rule.long_name}: {patient}",
                                                             f"day {finding.day}, as of {as_of}")


def _text(value: object) -> str:
    return escape(_XML_INVALID.sub("\ufffd", str(value)))


def _attr(value: object) -> str:
    return quoteattr(_XML_INVALID.sub("\ufffd", str(value)))


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _open(title: str, height: int) -> list[str]:
    return [f'<svg xmlns="{SVG_NS}" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            f'font-family="{_FONT}" font-size="11" role="img">',
            f"<title>{_text(title)}</title>",
            f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>']


def _message_svg(title: str, message: str) -> str:
    parts = _open(title, 90)
    parts.append(f'<text x="{_LEFT}" y="28" font-size="14" font-weight="bold">{_text(title)}</text>')
    parts.append(f'<text id="no-course" data-series="message" x="{_LEFT}" y="58">{_text(message)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class _Band:
    state: str
    start: float
    end: float


class _Course:
    """The drawing of one course: x is the fractional day after infusion (day N starts at N)."""

    def __init__(self, finding: RegimenFinding, evaluation: Evaluation, timeline: Timeline, zero: DayZero) -> None:
        self.finding = finding
        self.evaluation = evaluation
        self.timeline = timeline
        self.zero = zero
        self.origin = datetime.combine(zero.date, time(0), zero.offset)
        self.as_of_day = self.day_of(timeline.as_of)
        self.last_day = max(math.floor(self.as_of_day) + 1, _TICK_DAYS)
        grades = [p.grade for points in finding.lineages.values() for p in points if p.grade is not None]
        self.top_grade = max([_MIN_TOP_GRADE, *grades])

    def day_of(self, moment: datetime) -> float:
        return (moment - self.origin).total_seconds() / 86400

    def x(self, day: float) -> float:
        return _LEFT + max(0.0, min(day, self.last_day)) / self.last_day * _PLOT_W

    def grade_y(self, grade: int) -> float:
        return _GRADE_BOTTOM - grade * (_GRADE_BOTTOM - _NA_Y - _GRADE_STEP) / self.top_grade

    def draw(self, title: str, subtitle: str) -> str:
        parts = _open(f"{title}, {subtitle}", _HEIGHT)
        parts.append(f'<text x="{_LEFT}" y="22" font-size="14" font-weight="bold">{_text(title)}</text>')
        parts.append(f'<text x="{_LEFT}" y="40" font-size="12">{_text(subtitle)}</text>')
        parts += self.axes()
        parts += self.state_bands()
        dose_max = self.dose_max()
        parts += self.dose_axis(dose_max)
        parts += self.given(dose_max)
        parts += self.plan(dose_max)
        styles = dict(zip(self.finding.lineages, _LINEAGE_STYLES))
        offsets = _offsets(len(styles))
        for (rule_id, points), offset in zip(self.finding.lineages.items(), offsets):
            parts += self.lineage(rule_id, points, styles.get(rule_id, _LINEAGE_STYLES[0]), offset)
        parts += self.as_of_marker()
        parts += self.legend(styles)
        parts.append("</svg>")
        return "\n".join(parts) + "\n"

    # --- axes --------------------------------------------------------------------------------------------

    def axes(self) -> list[str]:
        right = _LEFT + _PLOT_W
        out = ['<g id="axes" stroke="#999999" stroke-width="0.6">']
        every = _TICK_DAYS * max(1, math.ceil(_MIN_LABEL_GAP_PX / (_TICK_DAYS * _PLOT_W / self.last_day)))
        labels = []
        for day in range(0, self.last_day + 1, _TICK_DAYS):
            x = _num(self.x(day))
            out.append(f'<line x1="{x}" y1="{_NA_Y - 12}" x2="{x}" y2="{_DOSE_BOTTOM}" stroke-dasharray="1 3"/>')
            if day % every == 0:
                labels.append(f'<text x="{x}" y="{_AXIS_LABEL_Y}" text-anchor="middle" data-day="{day}">day {day}</text>')
        for grade in range(self.top_grade + 1):
            y = _num(self.grade_y(grade))
            out.append(f'<line x1="{_LEFT}" y1="{y}" x2="{right}" y2="{y}"/>')
            labels.append(f'<text x="{_LEFT - 8}" y="{_num(self.grade_y(grade) + 4)}" text-anchor="end">{grade}</text>')
        labels.append(f'<text x="{_LEFT - 8}" y="{_NA_Y + 4}" text-anchor="end" fill="#666666">n/a</text>')
        out.append(f'<line x1="{_LEFT}" y1="{_DOSE_BOTTOM}" x2="{right}" y2="{_DOSE_BOTTOM}" stroke="#333333"/>')
        out.append("</g>")
        scales = sorted({f.rule.presentation.scale for f in self.evaluation.findings
                         if f.kind == "grading" and f.rule.rule_id in self.finding.lineages})
        y_mid = _num((_NA_Y + _GRADE_BOTTOM) / 2)
        label = f"{' / '.join(scales)} grade" if scales else "grade"
        out.append(f'<text x="16" y="{y_mid}" text-anchor="middle" transform="rotate(-90 16 {y_mid})">{_text(label)}</text>')
        return out + labels

    def dose_max(self) -> float:
        doses = [mg for _, mg in self.finding.given if mg is not None]
        doses += [step.dose_mg for step in self.finding.steps if step.dose_mg is not None]
        return max(10.0, math.ceil(max(doses, default=0.0) * 1.1 / 10) * 10)  # headroom above the highest dose

    def dose_y(self, mg: float, dose_max: float) -> float:
        return _DOSE_BOTTOM - mg / dose_max * (_DOSE_BOTTOM - _DOSE_TOP)

    def dose_axis(self, dose_max: float) -> list[str]:
        x = _LEFT + _PLOT_W
        out = [f'<line x1="{x}" y1="{_DOSE_TOP}" x2="{x}" y2="{_DOSE_BOTTOM}" stroke="#333333" stroke-width="0.8"/>']
        for mg in (0.0, dose_max / 2, dose_max):
            y = _num(self.dose_y(mg, dose_max))
            out.append(f'<line x1="{x}" y1="{y}" x2="{x + 4}" y2="{y}" stroke="#333333"/>')
            out.append(f'<text x="{x + 7}" y="{_num(self.dose_y(mg, dose_max) + 4)}">{_num(mg)}</text>')
        y_mid = _num((_DOSE_TOP + _DOSE_BOTTOM) / 2)
        out.append(f'<text x="{WIDTH - 16}" y="{y_mid}" text-anchor="middle" '
                   f'transform="rotate(90 {WIDTH - 16} {y_mid})">{_text(self.finding.rule.drug_name)} mg/day</text>')
        return out

    # --- series ------------------------------------------------------------------------------------------

    def bands(self) -> list[_Band]:
        """The states held over time: the initial state from day 0, then each step; a state left at the moment
        it was entered has no width and is not drawn; a state entered again at once continues its band."""
        starts = [(0.0, self.finding.rule.initial)] + [(self.day_of(s.time), s.state) for s in self.finding.steps]
        bands: list[_Band] = []
        for (start, state), (end, _) in zip(starts, starts[1:] + [(self.as_of_day, "")]):
            if end <= start:
                continue
            if bands and bands[-1].state == state:
                bands[-1] = _Band(state, bands[-1].start, end)
            else:
                bands.append(_Band(state, start, end))
        return bands

    def state_bands(self) -> list[str]:
        states = self.finding.rule.states
        order = list(states)
        out = ['<g id="regimen-states" data-series="regimen-states">']
        for band in self.bands():
            display = states[band.state].display
            fill = _STATE_FILLS[order.index(band.state) % len(_STATE_FILLS)]  # a colour per state of the rule
            x1, x2 = self.x(band.start), self.x(band.end)
            first, last = math.floor(band.start), math.floor(band.end)
            out.append(f'<g data-state={_attr(band.state)} data-from-day="{first}" data-to-day="{last}">')
            out.append(f"<title>{_text(f'{display}, day {first} to {last}')}</title>")
            out.append(f'<rect x="{_num(x1)}" y="{_BAND_TOP}" width="{_num(x2 - x1)}" height="{_BAND_H}" '
                       f'fill="{fill}" stroke="#ffffff" stroke-width="1"/>')
            if len(display) * _BAND_CHAR_PX + 6 <= x2 - x1:
                out.append(f'<text x="{_num((x1 + x2) / 2)}" y="{_BAND_TOP + 16}" text-anchor="middle" font-size="10">'
                           f"{_text(display)}</text>")
            out.append("</g>")
        out.append("</g>")
        return out

    def given(self, dose_max: float) -> list[str]:
        name = self.finding.rule.drug_name
        out = [f'<g id="series-given" data-series="{_slug(name)}-given" fill="{_GIVEN_FILL}">']
        for day, mg in self.finding.given:
            x = self.x(day) + 0.5
            width = _num(max(1.0, self.x(day + 1) - self.x(day) - 1))
            if mg is None:
                out.append(f'<text data-day="{day}" data-mg="unknown" x="{_num(x)}" y="{_DOSE_BOTTOM - 3}">?'
                           f"<title>{_text(f'{name} given on day {day}, amount not recorded')}</title></text>")
                continue
            y = self.dose_y(mg, dose_max)
            out.append(f'<rect data-day="{day}" data-mg="{_num(mg)}" x="{_num(x)}" y="{_num(y)}" width="{width}" '
                       f'height="{_num(_DOSE_BOTTOM - y)}"><title>{_text(f"{name} {_num(mg)} mg given on day {day}")}</title></rect>')
        out.append("</g>")
        return out

    def plan(self, dose_max: float) -> list[str]:
        """The state's planned daily dose from each step to the next (none drawn where the plan has no dose in mg)."""
        states = self.finding.rule.states
        steps = self.finding.steps
        out = [f'<g id="series-plan" data-series="{_slug(self.finding.rule.drug_name)}-plan" stroke="{_PLAN_STROKE}" stroke-width="2" '
               f'stroke-dasharray="6 4" fill="none">']
        for step, following in zip(steps, [*steps[1:], None]):
            if step.dose_mg is None or not states[step.state].prednisone:
                continue
            start = self.day_of(step.time)
            end = self.day_of(following.time) if following else self.as_of_day
            if end <= start:
                continue
            y = _num(self.dose_y(step.dose_mg, dose_max))
            out.append(f'<line data-state={_attr(step.state)} data-from-day="{step.day}" data-mg="{_num(step.dose_mg)}" '
                       f'x1="{_num(self.x(start))}" y1="{y}" x2="{_num(self.x(end))}" y2="{y}">'
                       f"<title>{_text(f'planned {_num(step.dose_mg)} mg/day from day {step.day}')}</title></line>")
        out.append("</g>")
        return out

    def lineage(self, rule_id: str, points: Sequence[LineagePoint], style: tuple[str, str, str], offset: float) -> list[str]:
        """A step line: each count's grade holds until the next count; a count that could not be graded breaks it."""
        colour, dash, marker = style
        name = self.finding.rule.lineage_names.get(rule_id, rule_id)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out = [f'<g id={_attr(f"series-{rule_id}")} data-series={_attr(rule_id)} data-name={_attr(name)}>']
        path: list[str] = []
        previous_y: float | None = None
        for point in points:
            x = self.x(self.day_of(point.time))
            if point.grade is None:
                previous_y = None
                continue
            y = self.grade_y(point.grade) + offset
            if previous_y is None:
                path.append(f"M{_num(x)} {_num(y)}")
            else:
                path.append(f"H{_num(x)}" if y == previous_y else f"H{_num(x)} V{_num(y)}")
            previous_y = y
        if path:
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        for point in points:
            day = self.zero.day_of(point.time)
            x = self.x(self.day_of(point.time))
            shown = "not assessable" if point.grade is None else f"grade {point.grade}"
            y = _NA_Y if point.grade is None else self.grade_y(point.grade) + offset
            grade = "not-assessable" if point.grade is None else str(point.grade)
            fill = "#ffffff" if point.grade is None else colour
            out.append(_marker(marker, x, y, colour, fill, f'data-day="{day}" data-grade="{grade}"',
                               f"{name} {shown}, day {day}"))
        out.append("</g>")
        return out

    def as_of_marker(self) -> list[str]:
        x = _num(self.x(self.as_of_day))
        return [f'<g id="as-of"><line x1="{x}" y1="{_BAND_TOP}" x2="{x}" y2="{_DOSE_BOTTOM}" stroke="#555555" '
                f'stroke-width="1" stroke-dasharray="3 2"/>'
                f'<text x="{x}" y="{_BAND_TOP - 4}" text-anchor="end" font-size="10">as of</text></g>']

    def legend(self, styles: dict[str, tuple[str, str, str]]) -> list[str]:
        out = ['<g id="legend">']
        x = float(_LEFT)
        y = _LEGEND_Y
        for rule_id, (colour, dash, marker) in styles.items():
            name = self.finding.rule.lineage_names.get(rule_id, rule_id)
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{_num(x)}" y1="{y}" x2="{_num(x + 28)}" y2="{y}" stroke="{colour}" stroke-width="2"{dash_attr}/>')
            out.append(_marker(marker, x + 14, y, colour, colour, "", name))
            out.append(f'<text x="{_num(x + 34)}" y="{y + 4}">{_text(name)}</text>')
            x += 40 + len(name) * _CHAR_PX + 16
        drug = self.finding.rule.drug_name
        out.append(f'<rect x="{_num(x)}" y="{y - 6}" width="12" height="12" fill="{_GIVEN_FILL}"/>')
        given_label = f"{drug} given (mg/day)"
        out.append(f'<text x="{_num(x + 18)}" y="{y + 4}">{_text(given_label)}</text>')
        x += 18 + len(given_label) * _CHAR_PX + 16
        out.append(f'<line x1="{_num(x)}" y1="{y}" x2="{_num(x + 28)}" y2="{y}" stroke="{_PLAN_STROKE}" stroke-width="2" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{_num(x + 34)}" y="{y + 4}">regimen dose (mg/day)</text>')
        out.append("</g>")
        return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "drug"


def _offsets(count: int) -> list[float]:
    """Series a few pixels apart so that lineages at the same grade stay visible side by side."""
    return [(i - (count - 1) / 2) * 3.5 for i in range(count)]


def _marker(shape: str, x: float, y: float, colour: str, fill: str, data: str, title: str) -> str:
    tip = f"<title>{_text(title)}</title>"
    common = f'{data} fill="{fill}" stroke="{colour}" stroke-width="1.5"'.lstrip()
    if shape == "square":
        return f'<rect {common} x="{_num(x - 3.5)}" y="{_num(y - 3.5)}" width="7" height="7">{tip}</rect>'
    if shape == "triangle":
        return (f'<polygon {common} points="{_num(x)},{_num(y - 4.5)} {_num(x + 4.5)},{_num(y + 3.5)} '
                f'{_num(x - 4.5)},{_num(y + 3.5)}">{tip}</polygon>')
    return f'<circle {common} cx="{_num(x)}" cy="{_num(y)}" r="3.8">{tip}</circle>'
