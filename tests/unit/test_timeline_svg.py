"""The course picture as a pure function of the evaluation (service/fhir_output/timeline_svg.py): what it draws
for a count that could not be graded, a long course, text that is not valid XML, and no regimen at all."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import timedelta

import orjson
import pytest

from service.fhir_input.times import parse_instant_parameter
from service.fhir_output.timeline_svg import timeline_svg
from service.pipeline import Engine, Outcome, RequestOptions
from service.resources import rules_dir
from service.rule_cases.cases import case_bundle, load_cases
from service.rules_engine.regimen import LineagePoint, RegimenFinding

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    directory = rules_dir()
    case = next(c for c in load_cases(directory / "prednisone_pht.cases.yaml", directory / "schema")
                if c.name == "reference-day-82-re-treatment-full-dose")
    return Engine().evaluate_bundle_bytes(orjson.dumps(case_bundle(case)), RequestOptions(parse_instant_parameter(case.spec["as_of"])))


def _regimen(outcome: Outcome) -> RegimenFinding:
    return next(f for f in outcome.evaluation.findings if isinstance(f, RegimenFinding))


def _with(outcome: Outcome, finding: RegimenFinding) -> ET.Element:
    findings = tuple(finding if isinstance(f, RegimenFinding) else f for f in outcome.evaluation.findings)
    return ET.fromstring(timeline_svg(replace(outcome.evaluation, findings=findings), outcome.timeline))


def _series(root: ET.Element, name: str) -> ET.Element:
    return next(g for g in root.iter(f"{SVG}g") if g.get("data-series") == name)


def test_a_count_not_graded_breaks_the_line_and_is_never_grade_0(outcome):
    finding = _regimen(outcome)
    points = list(finding.lineages["neutropenia-ctcae"])
    points[3] = LineagePoint(points[3].time, None, ())  # day 52
    root = _with(outcome, replace(finding, lineages={**finding.lineages, "neutropenia-ctcae": tuple(points)}))
    series = _series(root, "neutropenia-ctcae")
    grades = {int(e.get("data-day")): e.get("data-grade") for e in series if e.get("data-grade")}
    assert grades[52] == "not-assessable" and grades[45] == "3" and grades[59] == "2"
    assert series.find(f"{SVG}path").get("d").count("M") == 2  # the line stops before day 52 and starts again
    marker = next(e for e in series if e.get("data-day") == "52")
    assert marker.find(f"{SVG}title").text == "Neutropenia not assessable, day 52"


def test_a_long_course_labels_fewer_ticks_and_text_that_is_not_xml_is_replaced(outcome):
    finding = _regimen(outcome)
    states = {**finding.rule.states, "taper": replace(finding.rule.states["taper"], display="taper \x01 <b>")}
    later = replace(outcome.timeline, as_of=outcome.timeline.as_of + timedelta(days=200))
    findings = tuple(replace(finding, rule=replace(finding.rule, states=states)) if f is finding else f
                     for f in outcome.evaluation.findings)
    root = ET.fromstring(timeline_svg(replace(outcome.evaluation, findings=findings), later))
    days = [int(t.get("data-day")) for t in root.iter(f"{SVG}text") if t.get("data-day") and t.text.startswith("day ")]
    assert days[:3] == [0, 21, 42] and all(day % 21 == 0 for day in days)  # every 7 days is too dense at day 282
    taper = next(g for g in _series(root, "regimen-states") if g.get("data-state") == "taper")
    assert taper.find(f"{SVG}title").text == "taper \ufffd <b>, day 52 to 66"


def test_without_a_regimen_finding_the_svg_says_so(outcome):
    evaluation = replace(outcome.evaluation, findings=tuple(f for f in outcome.evaluation.findings if not isinstance(f, RegimenFinding)))
    root = ET.fromstring(timeline_svg(evaluation, outcome.timeline))
    message = next(t for t in root.iter(f"{SVG}text") if t.get("data-series") == "message")
    assert message.text == "No regimen rule in the rule set: no course to draw."
