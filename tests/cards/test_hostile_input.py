"""A patient with CRS whose every input string is hostile: the cards show it only as escaped, literal text.

Every string field the decoder reads carries markup (ids, fullUrls, medication text, coding displays, units,
codes, statuses, times, the device text, an unused resource type), while the clinical content still reads
as CRS grade 3: fever, norepinephrine running, nasal cannula oxygen, and a tocilizumab dose history (one
3 h ago blocks the next), so drugs, evidence and dropped input all reach the card. The cards must render
with no HTML, link, image or emphasis coming from the input, and the input must appear only escaped.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.fhir_input.times import parse_instant_parameter
from service.pipeline import RequestOptions

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
AS_OF = "2026-03-05T12:00:00+01:00"

# No "/" in the patient id: it is matched against "Patient/<id>" references.
PATIENT_ID = "pat<img src=x onerror=alert(1)>_em_"
IDS = {
    "cart": "cart[x](javascript:alert(1))",
    "weight": "w1<script>alert(1)</script>",
    "t1": "t1**bold**`code`",
    "t2": "t2![i](http://e/x.png)",
    "t-status": "t3 ~~strike~~ | a | b |",
    "t-unit": "t4 <http://evil.com>",
    "t-time": "t5 # heading",
    "bp": "bp1 www.evil.com user@evil.com",
    "device": "dev1 - item",
    "flow": "flow1 1. item",
    "device-unknown": "dev2 > quote",
    "unknown-code": "lab1 &lt;b&gt; &amp;",
    "norepinephrine": "ne1 http://evil.example/ \\",
    "toci1": "toci1 [ref]: http://evil.com",
    "toci2": "toci2 <div>block</div>",
    "toci-status": "toci3 ---",
}
FULL_URL_NO_ID = "javascript:alert(1)//<img src=x onerror=alert(1)>"
TEXTS = {
    "cart": "axicabtagene ciloleucel **infused** <b>here</b>",
    "norepinephrine": "norepinephrine `drip` [link](http://evil.com)",
    "norepinephrine-display": "Levophed <script>alert(1)</script>",
    "toci1": "tocilizumab <img src=x onerror=alert(1)>",
    "toci2-display": "Actemra [click](javascript:alert(1))",
    "weight-display": "Body weight ![i](http://e/x.png)",
    "temp-display": "Body temperature <svg onload=alert(1)>",
    "temp-unit-text": "°C <sup>x</sup>",
    "bad-unit": "<img src=x onerror=alert(1)>",
    "device-display": "Nasal cannula <img src=x onerror=alert(1)>",
    "device-unknown-text": "www.evil.com cannula <script>alert(1)</script>",
    "device-unknown-code": "999<b>1</b>",
    "unknown-loinc": "<b>1234-5</b>",
    "obs-status": "<i>final</i>",
    "ma-status": "done<script>alert(1)</script>",
    "bad-time": "2026-03-05T08:00:00 <img src=x>",
    "resource-type": "Evil<img src=x onerror=alert(1)>",
    "flow-unit-text": "L/min _em_",
}
HOSTILE_INPUT = tuple(IDS.values()) + tuple(TEXTS.values()) + (PATIENT_ID, FULL_URL_NO_ID)


def _subject() -> dict[str, str]:
    return {"reference": f"Patient/{PATIENT_ID}"}


def _observation(key: str | None, loinc: str, at: str, *, display: str | None = None, status: str = "final",
                 **value: Any) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": LOINC, "code": loinc}
    if display:
        coding["display"] = display
    resource: dict[str, Any] = {
        "resourceType": "Observation", "status": status, "code": {"coding": [coding], "text": display or loinc},
        "subject": _subject(), "effectiveDateTime": at, **value,
    }
    if key is not None:
        resource["id"] = IDS[key]
    return resource


def _quantity(value: float, code: str, unit: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": unit or code, "system": UCUM, "code": code}


def _administration(key: str, concept: dict[str, Any], *, status: str = "completed", at: str | None = None,
                    period: dict[str, str] | None = None, dose_mg: float | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration", "id": IDS[key], "status": status,
        "medicationCodeableConcept": concept, "subject": _subject(),
    }
    if at is not None:
        resource["effectiveDateTime"] = at
    if period is not None:
        resource["effectivePeriod"] = period
    if dose_mg is not None:
        resource["dosage"] = {"text": TEXTS["toci1"], "dose": _quantity(dose_mg, "mg")}
    return resource


def hostile_bundle() -> dict[str, Any]:
    temperature = "8310-5"
    resources = [
        {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "1965-04-02", "gender": "female"},
        _administration("cart", {"text": TEXTS["cart"]}, at="2026-03-02T10:00:00+01:00"),
        _observation("weight", "29463-7", "2026-03-04T08:00:00+01:00", display=TEXTS["weight-display"],
                     valueQuantity=_quantity(70, "kg", "kg <b>x</b>")),
        _observation("t1", temperature, "2026-03-05T08:00:00+01:00", display=TEXTS["temp-display"],
                     valueQuantity=_quantity(39.2, "Cel", TEXTS["temp-unit-text"])),
        _observation("t2", temperature, "2026-03-05T10:00:00+01:00", display=TEXTS["temp-display"],
                     valueQuantity=_quantity(38.7, "Cel", TEXTS["temp-unit-text"])),
        # an unknown status (flagged), an unknown unit (dropped), a time without offset plus markup (dropped)
        _observation("t-status", temperature, "2026-03-05T09:00:00+01:00", status=TEXTS["obs-status"],
                     valueQuantity=_quantity(38.9, "Cel")),
        _observation("t-unit", temperature, "2026-03-05T09:30:00+01:00",
                     valueQuantity=_quantity(38.9, TEXTS["bad-unit"], TEXTS["bad-unit"])),
        _observation("t-time", temperature, TEXTS["bad-time"], valueQuantity=_quantity(38.9, "Cel")),
        {"resourceType": "Observation", "id": IDS["bp"], "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": TEXTS["temp-display"]}]},
         "subject": _subject(), "effectiveDateTime": "2026-03-05T08:00:00+01:00",
         "component": [
             {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _quantity(96, "mm[Hg]", "mmHg <b>")},
             {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _quantity(55, "mm[Hg]", "mmHg <b>")},
         ]},
        _observation("device", "107117-4", "2026-03-05T09:00:00+01:00", display=TEXTS["device-display"],
                     valueCodeableConcept={"coding": [{"system": SNOMED, "code": "336623009", "display": TEXTS["device-display"]}],
                                           "text": TEXTS["device-display"]}),
        _observation("flow", "3151-8", "2026-03-05T09:00:00+01:00", valueQuantity=_quantity(3, "L/min", TEXTS["flow-unit-text"])),
        _observation("device-unknown", "107117-4", "2026-03-05T10:30:00+01:00",
                     valueCodeableConcept={"coding": [{"system": SNOMED, "code": TEXTS["device-unknown-code"],
                                                       "display": TEXTS["device-unknown-text"]}],
                                           "text": TEXTS["device-unknown-text"]}),
        _observation("unknown-code", TEXTS["unknown-loinc"], "2026-03-05T07:00:00+01:00", display=TEXTS["unknown-loinc"],
                     valueQuantity=_quantity(1, "mg/dL")),
        _administration("norepinephrine", {"coding": [{"system": RXNORM, "code": "7512", "display": TEXTS["norepinephrine-display"]}],
                                           "text": TEXTS["norepinephrine"]},
                        status="in-progress", period={"start": "2026-03-05T06:00:00+01:00"}),
        _administration("toci1", {"text": TEXTS["toci1"]}, at="2026-03-04T19:00:00+01:00", dose_mg=560),
        _administration("toci2", {"coding": [{"system": RXNORM, "code": "612865", "display": TEXTS["toci2-display"]}],
                                  "text": TEXTS["toci2-display"]}, at="2026-03-05T09:00:00+01:00", dose_mg=560),
        _administration("toci-status", {"text": TEXTS["toci1"]}, status=TEXTS["ma-status"], at="2026-03-05T10:00:00+01:00",
                        dose_mg=560),
        {"resourceType": TEXTS["resource-type"], "id": IDS["cart"], "text": {"div": TEXTS["bad-unit"]}},
    ]
    entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r}
                                     for i, r in enumerate(resources)]
    # the latest temperature has no id: its source is the entry's fullUrl
    entries.append({"fullUrl": FULL_URL_NO_ID, "resource": _observation(
        None, temperature, "2026-03-05T11:30:00+01:00", valueQuantity=_quantity(38.8, "Cel", TEXTS["temp-unit-text"]))})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


@pytest.fixture(scope="module")
def outcome(engine):
    return engine.evaluate_bundle_bytes(orjson.dumps(hostile_bundle()), RequestOptions(as_of=parse_instant_parameter(AS_OF)))


def test_the_hostile_patient_has_crs_and_the_input_was_read(outcome):
    """The bundle means what it says: grade 3, drugs known, the hostile resources were read or noted."""
    (finding,) = [f for f in outcome.evaluation.findings if f.rule.rule_id == "crs-astct"]
    assert finding.current.grade == 3
    assert outcome.timeline.patient == f"Patient/{PATIENT_ID}"
    concepts = set(outcome.timeline.administrations)
    assert {"norepinephrine", "tocilizumab"} <= concepts
    codes = {note.code for note in outcome.timeline.notes}
    assert {"flagged-status", "dropped-unit", "dropped-time", "ignored-code", "ignored-resource-type"} <= codes
    assert outcome.cards


def test_cards_render_the_hostile_input_only_as_escaped_text(outcome, assert_card_markdown, assert_plain_summary,
                                                            hostile_strings):
    hostile = HOSTILE_INPUT + tuple(hostile_strings)
    for card in outcome.cards:
        assert_card_markdown(card["detail"], hostile)
        assert_plain_summary(card["summary"], hostile)


def test_cards_show_drugs_and_evidence_as_literal_text(outcome, assert_card_markdown, markdown_check):
    """Escaping keeps the input readable: the drugs are named and the evidence cites the hostile sources as the
    exact text that was sent."""
    card, icans = outcome.cards  # CRS carries the plan; ICANS cannot be assessed (no neurological assessment)
    assert icans["source"]["topic"]["code"] == "icans-grade-astct" and icans["indicator"] == "info"
    blocks = assert_card_markdown(card["detail"], HOSTILE_INPUT)
    text = "\n".join(line for block in blocks for line in block.lines)
    lowered = text.lower()
    assert "tocilizumab" in lowered and "norepinephrine" in lowered
    cited = [source for source in (f"Observation/{IDS['t2']}", FULL_URL_NO_ID, f"Observation/{IDS['t1']}",
                                   f"MedicationAdministration/{IDS['norepinephrine']}")
             if markdown_check.normalise(source) in text]
    assert cited, f"no hostile source cited literally in the evidence:\n{text}"


def test_no_input_markup_anywhere_in_the_card_text_fields(outcome):
    """Plain-text card fields (source label, suggestion and action labels) carry no input at all."""
    for card in outcome.cards:
        fields = [card["summary"], card["source"]["label"], card["source"]["topic"]["display"]]
        for suggestion in card["suggestions"]:
            fields.append(suggestion["label"])
            fields += [action["description"] for action in suggestion["actions"]]
        fields += [reason["display"] for reason in card["overrideReasons"]]
        for field in fields:
            assert not any(c in field for c in "<>`*[]\\|~"), field
            assert not any(text in field for text in HOSTILE_INPUT), field
