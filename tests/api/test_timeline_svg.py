"""`cartox evaluate FILE --timeline out.svg`: the reference prednisone course (rules/prednisone_pht.cases.yaml)
drawn as an SVG from the same findings as the cards: lineage grades per count, prednisone given per day, the
regimen's planned dose and its states. Checked by parsing the SVG, not by looking at it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli import main
from service.resources import rules_dir
from service.rule_cases.cases import PATIENT_ID, Case, case_bundle, load_cases

SVG = "{http://www.w3.org/2000/svg}"
DAY_82 = "reference-day-82-re-treatment-full-dose"


def _case(name: str) -> Case:
    directory = rules_dir()
    return next(c for c in load_cases(directory / "prednisone_pht.cases.yaml", directory / "schema") if c.name == name)


def _run(tmp_path: Path, bundle: dict[str, Any], as_of: str, *extra: str) -> tuple[Any, ET.Element | None]:
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(bundle))
    out = tmp_path / "course.svg"
    result = CliRunner().invoke(main, ["evaluate", str(source), "--as-of", as_of, "--timeline", str(out), *extra])
    return result, ET.parse(out).getroot() if out.exists() else None


def _series(root: ET.Element, name: str) -> ET.Element:
    found = [g for g in root.iter(f"{SVG}g") if g.get("data-series") == name]
    assert len(found) == 1, name
    return found[0]


def _points(series: ET.Element) -> dict[int, str]:
    return {int(e.get("data-day")): e.get("data-grade") for e in series if e.get("data-grade") is not None}


def _doses(series: ET.Element) -> dict[int, str]:
    return {int(e.get("data-day")): e.get("data-mg") for e in series if e.get("data-mg") is not None}


@pytest.fixture(scope="module")
def day_82(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ET.Element]:
    case = _case(DAY_82)
    result, root = _run(tmp_path_factory.mktemp("svg"), case_bundle(case), case.spec["as_of"])
    assert result.exit_code == 0, result.output
    assert root is not None
    return result, root


def test_reference_course_is_an_svg_and_the_cards_still_go_to_stdout(day_82):
    result, root = day_82
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == "0 0 900 490" and root.get("font-family") == "sans-serif"
    assert not list(root.iter(f"{SVG}script")) and not list(root.iter(f"{SVG}image"))
    assert not any(k.endswith("href") for e in root.iter() for k in e.attrib)  # no external resources
    title = root.find(f"{SVG}title").text
    assert "Patient/case-patient" in title and "day 82" in title and "2026-03-28 14:00+01:00" in title
    cards = json.loads(result.output)["cards"]
    assert any("prednisone" in card["summary"].lower() for card in cards)


def test_three_lineages_with_their_grades_per_count(day_82):
    _, root = day_82
    platelets = _series(root, "thrombocytopenia-ctcae")
    neutrophils = _series(root, "neutropenia-ctcae")
    anemia = _series(root, "anemia-ctcae")
    assert platelets.get("data-name") == "Thrombocytopenia" and anemia.get("data-name") == "Anemia"
    # counts on days 28, 38, 45, 52, 59, 66, 73, 80 of the reference course
    assert _points(platelets) == {28: "4", 38: "4", 45: "3", 52: "3", 59: "2", 66: "1", 73: "1", 80: "3"}
    assert _points(neutrophils) == {28: "4", 38: "4", 45: "3", 52: "3", 59: "2", 66: "1", 73: "1", 80: "1"}
    assert _points(anemia) == {28: "3", 38: "3", 45: "3", 52: "2", 59: "2", 66: "2", 73: "1", 80: "1"}
    styles = {(s.find(f"{SVG}path").get("stroke"), s.find(f"{SVG}path").get("stroke-dasharray"))
              for s in (platelets, neutrophils, anemia)}
    assert len(styles) == 3 and len({dash for _, dash in styles}) == 3  # colour and dash differ (greyscale)
    legend = " ".join(t.text or "" for t in root.find(f"{SVG}g[@id='legend']").iter(f"{SVG}text"))
    assert "Anemia" in legend and "Thrombocytopenia" in legend and "Neutropenia" in legend
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "CTCAE grade" in texts and "day 28" in texts and "day 77" in texts


def test_prednisone_given_per_day_and_the_planned_dose(day_82):
    _, root = day_82
    given = _doses(_series(root, "prednisone-given"))
    assert given[31] == "40" and given[45] == "40" and given[46] == "20" and given[53] == "10" and given[66] == "5"
    assert given[81] == "40" and given[82] == "40"
    assert 30 not in given and not any(day in given for day in range(67, 81))
    assert len(given) == 38
    plan = [(int(line.get("data-from-day")), line.get("data-mg")) for line in _series(root, "prednisone-plan")]
    assert plan == [(28, "40"), (31, "40"), (45, "20"), (52, "10"), (59, "5"), (80, "40"), (81, "40")]


def test_regimen_states_as_bands_with_full_names(day_82):
    _, root = day_82
    bands = [(g.get("data-state"), int(g.get("data-from-day")), int(g.get("data-to-day")), g.find(f"{SVG}title").text)
             for g in _series(root, "regimen-states")]
    assert [b[:3] for b in bands] == [
        ("monitor", 0, 28), ("candidate", 28, 31), ("prednisone-full", 31, 45), ("prednisone-half", 45, 52),
        ("taper", 52, 66), ("off", 66, 80), ("recurrence", 80, 81), ("prednisone-full", 81, 82)]
    assert bands[4][3] == "Prednisone taper, day 52 to 66"
    labels = {g.get("data-state"): g.find(f"{SVG}text") for g in _series(root, "regimen-states")}
    assert labels["monitor"].text == "Monitoring before day 28" and labels["taper"].text == "Prednisone taper"
    assert labels["recurrence"] is None  # one day is too narrow for its name: the tooltip carries it


def test_hostile_patient_id_is_escaped(tmp_path):
    case = _case(DAY_82)
    hostile = "<script>alert(1)<svg onload=x>&x"  # no "/": the id is matched in "Patient/<id>" references
    bundle = json.loads(json.dumps(case_bundle(case)).replace(PATIENT_ID, hostile))
    result, root = _run(tmp_path, bundle, case.spec["as_of"])
    assert result.exit_code == 0, result.output
    raw = (tmp_path / "course.svg").read_text()
    assert "<script>" not in raw and "<svg onload" not in raw
    assert "&lt;script&gt;alert(1)&lt;svg onload=x&gt;&amp;x" in raw
    assert not list(root.iter(f"{SVG}script"))
    assert hostile in root.find(f"{SVG}title").text


def test_without_day_zero_the_svg_says_why(tmp_path):
    case = _case(DAY_82)
    bundle = case_bundle(case)
    bundle["entry"] = [e for e in bundle["entry"] if "tisagenlecleucel" not in json.dumps(e).lower()]
    result, root = _run(tmp_path, bundle, case.spec["as_of"])
    assert result.exit_code == 0, result.output
    assert root.tag == f"{SVG}svg"
    message = next(t for t in root.iter(f"{SVG}text") if t.get("data-series") == "message")
    assert "day 0" in message.text and "cannot be drawn" in message.text
    assert not [g for g in root.iter(f"{SVG}g") if g.get("data-series")]


def test_unwritable_path_is_one_line_and_exit_2(tmp_path):
    case = _case(DAY_82)
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(case_bundle(case)))
    target = tmp_path / "missing-directory" / "course.svg"
    result = CliRunner().invoke(main, ["evaluate", str(source), "--as-of", case.spec["as_of"], "--timeline", str(target)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot write the timeline" in result.stderr
    assert str(target) in result.stderr and "Traceback" not in result.output
