"""service.fhir_input.concepts + rules/concepts.yaml: codes, text synonyms, groups, verification status."""

from __future__ import annotations

import pytest
import yaml

from service.fhir_input.concepts import CODE_STATUSES, TextMatcher, build_terminology
from service.resources import rules_dir

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CARTOX_CS = "http://cartox.example.org/fhir/CodeSystem/cartox"

CAR_T_PRODUCTS = {
    "axicabtagene-ciloleucel",
    "tisagenlecleucel",
    "brexucabtagene-autoleucel",
    "lisocabtagene-maraleucel",
    "idecabtagene-vicleucel",
    "ciltacabtagene-autoleucel",
    "obecabtagene-autoleucel",
}


@pytest.fixture(scope="module")
def document():
    return yaml.safe_load((rules_dir() / "concepts.yaml").read_text(encoding="utf-8"))


# --- measurement and coded-observation codes ---------------------------------------------------------

@pytest.mark.parametrize("code", ["59408-5", "2708-6"])
def test_spo2_codes(terminology, code):
    assert terminology.measurement_by_code[(LOINC, code)] == "oxygen-saturation"


@pytest.mark.parametrize(
    "code, concept",
    [
        ("8310-5", "body-temperature"),
        ("8480-6", "systolic-bp"),
        ("8462-4", "diastolic-bp"),
        ("8478-0", "mean-arterial-pressure"),
        ("3151-8", "oxygen-flow"),
        ("3150-0", "inhaled-oxygen-concentration"),
        ("29463-7", "body-weight"),
        ("718-7", "hemoglobin"),
        ("777-3", "platelets"),
        ("26515-7", "platelets"),
        ("751-8", "neutrophils"),
        ("26499-4", "neutrophils"),
    ],
)
def test_spec_section_8_loinc_codes(terminology, code, concept):
    assert terminology.measurement_by_code[(LOINC, code)] == concept


@pytest.mark.parametrize("key", [(LOINC, "107117-4"), (LOINC, "41925-9"), (CARTOX_CS, "oxygen-delivery-device")])
def test_oxygen_delivery_device_codes(terminology, key):
    assert terminology.coded_by_code[key] == ("oxygen-delivery-device", "oxygen-devices")


def test_41925_9_is_only_an_unverified_alias(terminology):
    """Spec section 8: no source confirms 41925-9; accept it only as an alias."""
    statuses = {ref.code: ref.status for ref in terminology.all_codes["oxygen-delivery-device"]}
    assert statuses["41925-9"] == "u"
    assert statuses["107117-4"] == "s"


def test_cartox_system_resolved_against_canonical_base(document):
    other = build_terminology(document, "https://fhir.example.net/base")
    assert other.coded_by_code[("https://fhir.example.net/base/CodeSystem/cartox", "oxygen-delivery-device")][0] == "oxygen-delivery-device"


def test_blood_pressure_panel_is_a_panel(terminology):
    assert (LOINC, "85354-9") in terminology.panel_codes
    assert (LOINC, "85354-9") not in terminology.measurement_by_code


# --- oxygen devices -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "code, concept",
    [
        ("426854004", "high-flow-nasal-cannula"),
        ("336623009", "nasal-cannula"),
        ("466713001", "nasal-cannula"),
        ("425478008", "blow-by"),
        ("336602003", "oxygen-mask"),
        ("427591007", "non-rebreather-mask"),
        ("464233000", "partial-rebreather-mask"),
        ("428285009", "venturi-mask"),
        ("465433006", "venturi-mask"),
        ("706226000", "cpap-bipap-mask"),
        ("467645007", "cpap-bipap-mask"),
        ("425826004", "cpap-bipap-mask"),
        ("449071006", "mechanical-ventilation"),
        ("26412008", "mechanical-ventilation"),
    ],
)
def test_snomed_devices(terminology, code, concept):
    assert terminology.value_sets["oxygen-devices"].by_code[(SNOMED, code)] == concept


@pytest.mark.parametrize(
    "text, concept",
    [
        ("High flow nasal cannula 40 L", "high-flow-nasal-cannula"),
        ("high-flow nasal cannula", "high-flow-nasal-cannula"),
        ("HFNC 50 L/min FiO2 0.6", "high-flow-nasal-cannula"),
        ("Nasal cannula 2 L", "nasal-cannula"),
        ("Non-rebreather mask 15 L", "non-rebreather-mask"),
        ("Venturi 40%", "venturi-mask"),
        ("BiPAP 12/5", "cpap-bipap-mask"),
        ("Intubated, on ventilator", "mechanical-ventilation"),
        ("Room air", "room-air"),
    ],
)
def test_device_text(terminology, text, concept):
    assert terminology.value_sets["oxygen-devices"].text.match(text) == concept


def test_high_flow_text_is_not_read_as_low_flow_nasal_cannula(terminology):
    """'nasal cannula' is inside 'high flow nasal cannula': the longer synonym (grade 3) must win."""
    assert terminology.value_sets["oxygen-devices"].text.match("High flow nasal cannula 40 L") != "nasal-cannula"


# --- medications ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, concept",
    [
        ("Noradrenaline 4mg/50ml", "norepinephrine"),
        ("NOREPINEPHRINE 8 mg in 250 mL", "norepinephrine"),
        ("Levophed infusion", "norepinephrine"),
        ("Epinephrine 1 mg", "epinephrine"),
        ("Argipressin 20 units", "vasopressin"),
        ("Methylprednisolone 1 g IV", "methylprednisolone"),
        ("Solu-Medrol 125 mg", "methylprednisolone"),
        ("Prednisolone 5 mg", "prednisolone"),
        ("Paracetamol 1 g", "acetaminophen"),
        ("Actemra 800 mg", "tocilizumab"),
        ("Yescarta", "axicabtagene-ciloleucel"),
        ("Kymriah suspension", "tisagenlecleucel"),
        ("sodium chloride 0.9% bolus 500 mL", "iv-fluid-bolus"),
    ],
)
def test_medication_text(terminology, text, concept):
    assert terminology.medication_text.match(text) == concept


@pytest.mark.parametrize(
    "text, not_concept",
    [
        ("Norepinephrine 4 mg", "epinephrine"),  # epinephrine is inside norepinephrine
        ("Methylprednisolone 40 mg", "prednisolone"),  # prednisolone is inside methylprednisolone
    ],
)
def test_ingredient_inside_a_longer_word_does_not_match(terminology, text, not_concept):
    assert terminology.medication_text.match(text) != not_concept


@pytest.mark.parametrize("text", ["dopaminergic agent", "predopamine", "dopamine2", "xdobutamine"])
def test_whole_words_only(terminology, text):
    assert terminology.medication_text.match(text) is None


def test_hyphen_joined_names_are_not_split(terminology):
    """TextMatcher treats '-' as part of a word. 'dobutamine-dopamine' therefore matches neither agent:
    it is never resolved to dobutamine (an inotrope, not a vasopressor) and the administration is reported
    as an unused code rather than silently classified."""
    matcher = terminology.medication_text
    assert matcher.match("dobutamine-dopamine") is None
    assert matcher.match("dobutamine") == "dobutamine"
    assert matcher.match("dopamine") == "dopamine"


def test_text_naming_an_inotrope_and_a_vasopressor_is_not_read_as_the_inotrope_alone(terminology):
    """Clinical safety: a free text naming dobutamine and dopamine must not be classified as dobutamine
    only, which would drop the vasopressor from hypotension grading (R4). Unresolved (None) would be safe;
    dopamine would be safe. Medication texts are read with match_all: every drug named counts."""
    assert terminology.medication_text.match_all("dobutamine 5 mcg/kg/min + dopamine 5 mcg/kg/min") == ("dobutamine", "dopamine")


def test_text_matcher_longest_synonym_wins():
    matcher = TextMatcher.build({"nasal cannula": "low", "high flow nasal cannula": "high"})
    assert matcher.match("on high flow nasal cannula") == "high"
    assert matcher.match("on nasal cannula") == "low"


def test_text_matcher_empty():
    matcher = TextMatcher.build({})
    assert matcher.match("anything") is None
    assert TextMatcher.build({"x": "y"}).match(None) is None
    assert TextMatcher.build({"x": "y"}).match("") is None


@pytest.mark.parametrize(
    "code, concept",
    [
        ("7512", "norepinephrine"),
        ("3992", "epinephrine"),
        ("8163", "phenylephrine"),
        ("3628", "dopamine"),
        ("11149", "vasopressin"),
        ("3616", "dobutamine"),
        ("3264", "dexamethasone"),
        ("6902", "methylprednisolone"),
        ("8640", "prednisone"),
        ("8638", "prednisolone"),
        ("5492", "hydrocortisone"),
        ("612865", "tocilizumab"),
        ("161", "acetaminophen"),
    ],
)
def test_rxnorm_ingredients(terminology, code, concept):
    assert terminology.medication_by_code[(RXNORM, code)] == concept


def test_vasopressor_group_includes_vasopressin_but_not_dobutamine(terminology):
    group = terminology.members(["vasopressor"])
    assert {"norepinephrine", "epinephrine", "phenylephrine", "dopamine", "vasopressin"} <= group
    assert "dobutamine" not in group


def test_car_t_group_has_all_named_products_and_investigational(terminology):
    group = terminology.members(["car-t-product"])
    assert CAR_T_PRODUCTS | {"investigational-car-t"} <= group
    assert group <= CAR_T_PRODUCTS | {"investigational-car-t"}


def test_car_t_products_are_matched_by_name(terminology):
    for concept in CAR_T_PRODUCTS:
        name = concept.replace("-", " ")
        assert terminology.medication_text.match(name) == concept, name


def test_waiver_groups(terminology):
    assert terminology.members(["anti-cytokine"]) == {"tocilizumab", "siltuximab", "anakinra"}
    assert terminology.members(["systemic-corticosteroid"]) == {
        "dexamethasone", "methylprednisolone", "prednisone", "prednisolone", "hydrocortisone"
    }
    assert "acetaminophen" in terminology.members(["antipyretic"])


def test_members_passes_plain_concepts_through(terminology):
    assert terminology.members(["norepinephrine", "anti-cytokine"]) == {"norepinephrine", "tocilizumab", "siltuximab", "anakinra"}


def test_every_group_member_is_a_medication(terminology):
    for name, members in terminology.groups.items():
        assert members <= set(terminology.medication_codes), name


def test_output_coding_prefers_ingredient_code(terminology):
    ref = terminology.output_coding("tocilizumab")
    assert (ref.code, ref.level) == ("612865", "ingredient")
    assert terminology.output_coding("tisagenlecleucel") is None  # name match only
    assert terminology.output_coding("norepinephrine").status == "v"


# --- verification status on every code ---------------------------------------------------------------------

def _all_code_entries(document):
    for concept, spec in document["measurements"].items():
        for entry in spec["codes"]:
            yield f"measurements.{concept}", entry
    for entry in document.get("panels", []):
        yield "panels", entry
    for concept, spec in document.get("coded_observations", {}).items():
        for entry in spec["codes"]:
            yield f"coded_observations.{concept}", entry
    for name, members in document.get("value_sets", {}).items():
        for concept, spec in members.items():
            for entry in spec.get("codes", []):
                yield f"value_sets.{name}.{concept}", entry
    for concept, spec in document["medications"].items():
        for entry in spec.get("codes", []):
            yield f"medications.{concept}", entry
    for section in ("scores", "findings", "procedures", "routes"):
        for concept, spec in document.get(section, {}).items():
            for entry in spec["codes"]:
                yield f"{section}.{concept}", entry


def test_every_code_in_concepts_yaml_has_a_status(document):
    entries = list(_all_code_entries(document))
    assert len(entries) > 80
    missing = [(where, entry) for where, entry in entries if entry.get("status") not in CODE_STATUSES]
    assert not missing, missing


def test_every_code_has_a_known_system(document):
    systems = set(document["systems"])
    unknown = [(where, entry) for where, entry in _all_code_entries(document) if entry["system"] not in systems]
    assert not unknown, unknown


def test_loaded_code_refs_keep_status(terminology):
    for refs in list(terminology.all_codes.values()) + list(terminology.medication_codes.values()):
        for ref in refs:
            assert ref.status in CODE_STATUSES, ref


def test_spec_unverified_codes_not_marked_verified(document):
    """Spec section 8: CAR-T products and siltuximab have no verified RxNorm code."""
    meds = document["medications"]
    for concept in CAR_T_PRODUCTS | {"siltuximab"}:
        assert all(entry["status"] != "v" for entry in meds[concept].get("codes", [])), concept


# --- crystalloids (R6), plausible doses, fluid units, panels ---------------------------------------------------

@pytest.mark.parametrize(
    "code, concept",
    [("313002", "normal-saline"), ("1807639", "normal-saline"), ("1807632", "normal-saline"), ("847630", "lactated-ringers")],
)
def test_crystalloid_codes(terminology, code, concept):
    assert terminology.medication_by_code[(RXNORM, code)] == concept


def test_crystalloid_codes_are_products_and_not_marked_verified(document):
    """No NLM page confirmed them: secondary at best, and clinical-drug codes, not the ingredient."""
    for concept in ("normal-saline", "lactated-ringers", "balanced-crystalloid"):
        for entry in document["medications"][concept]["codes"]:
            assert entry["status"] != "v", (concept, entry)
            assert entry.get("level") == "product", (concept, entry)


def test_crystalloid_group(terminology):
    assert terminology.members(["crystalloid"]) == {"normal-saline", "lactated-ringers", "balanced-crystalloid"}
    assert "iv-fluid-bolus" not in terminology.members(["crystalloid"])


@pytest.mark.parametrize(
    "text, concept",
    [
        ("Sodium chloride 0.9% 1000 mL IV at 80 mL/h", "normal-saline"),
        ("0.9 % sodium chloride 500 mL", "normal-saline"),
        ("Normal saline", "normal-saline"),
        ("Lactated Ringer's 1000 mL", "lactated-ringers"),
        ("Ringer's lactate", "lactated-ringers"),
        ("Hartmann's solution 1 L", "lactated-ringers"),
        ("Plasma-Lyte 148", "balanced-crystalloid"),
        # a bolus documented as such stays the text bolus (longest synonym wins)
        ("Sodium chloride 0.9% bolus 500 mL", "iv-fluid-bolus"),
        ("NS bolus 1 L", "iv-fluid-bolus"),
        ("Lactated Ringer's bolus 500 mL", "iv-fluid-bolus"),
    ],
)
def test_crystalloid_text(terminology, text, concept):
    assert terminology.medication_text.match_all(text) == (concept,)


def test_saline_flush_is_no_crystalloid_by_name(terminology):
    assert terminology.medication_text.match_all("flush 10 mL") == ()


def test_plausible_maximum_doses(terminology, document):
    assert terminology.plausible_max_mg["tocilizumab"] == 1200.0  # the 800 mg label cap fits
    assert terminology.plausible_max_mg["dexamethasone"] == 100.0
    assert terminology.plausible_max_mg["methylprednisolone"] == 2000.0
    assert set(terminology.plausible_max_mg) <= set(document["medications"])
    assert "norepinephrine" not in terminology.plausible_max_mg  # infusion doses vary with the bag


def test_fluid_volume_rate_and_duration_units(terminology):
    assert terminology.volume_conversions["L"].apply(0.5) == 500.0
    assert terminology.rate_conversions["mL/min"].apply(10) == 600.0
    assert terminology.duration_conversions["min"].apply(30) == pytest.approx(0.5)
    assert terminology.unit_aliases["mL/hr"] == "mL/h"
    assert "mL" not in terminology.dose_conversions  # a volume is never read as mg


def test_panels_are_read_only_for_a_component_some_rule_reads(terminology):
    bp_panel = (LOINC, "85354-9")
    assert terminology.panel_components[bp_panel] == {"systolic-bp", "diastolic-bp"}
    assert bp_panel in terminology.restricted_to(frozenset({"systolic-bp"})).panel_codes
    assert bp_panel not in terminology.restricted_to(frozenset({"body-temperature"})).panel_codes


def test_observation_codes_of_the_input_terminology(rule_set):
    codes = rule_set.input_terminology.observation_codes()
    assert (LOINC, "8310-5") in codes and (LOINC, "3150-0") in codes and (LOINC, "107117-4") in codes
    assert (LOINC, "85354-9") in codes
    assert (LOINC, "8462-4") not in codes  # diastolic pressure: no rule reads it


# --- ICANS inputs: scores, coded assessments, findings, procedures, routes --------------------------------------

@pytest.mark.parametrize(
    "concept, low, high",
    [("ice-total", 0, 10), ("ice-orientation", 0, 4), ("ice-naming", 0, 3), ("ice-commands", 0, 1), ("ice-writing", 0, 1),
     ("ice-attention", 0, 1), ("capd-total", 0, 32)],
)
def test_scores_are_whole_number_measurements_with_their_range(terminology, concept, low, high):
    spec = terminology.measurements[concept]
    assert (spec.plausible_min, spec.plausible_max, spec.canonical_unit, spec.integer) == (low, high, "{score}", True)
    assert terminology.measurement_by_code[(CARTOX_CS, concept)] == concept
    assert concept in terminology.assessments
    assert terminology.display(concept) != concept.replace("-", " ")  # a display of its own


def test_ice_items_add_up_to_the_total(terminology):
    items = ("ice-orientation", "ice-naming", "ice-commands", "ice-writing", "ice-attention")
    assert sum(terminology.measurements[item].plausible_max for item in items) == terminology.measurements["ice-total"].plausible_max


def test_measurements_are_not_scores(terminology):
    assert not any(spec.integer for concept, spec in terminology.measurements.items() if concept not in terminology.assessments)
    assert "oxygen-delivery-device" not in terminology.assessments


@pytest.mark.parametrize(
    "concept, value_set, answers",
    [
        ("loc-astct", "consciousness-levels", {"alert", "awakens-spontaneously", "awakens-to-voice", "awakens-to-tactile", "unarousable"}),
        ("seizure-astct", "seizure-kinds", {"rapidly-resolving", "eeg-resolved-with-intervention", "prolonged-or-repetitive"}),
        ("motor-weakness-astct", "motor-findings", {"focal-deep-weakness"}),
        ("cerebral-edema-astct", "cerebral-edema-signs", {"focal-local-edema", "diffuse-edema", "decerebrate-or-decorticate-posturing",
                                                          "cranial-nerve-vi-palsy", "papilledema", "cushings-triad"}),
    ],
)
def test_icans_coded_assessments_answer_from_the_cartox_code_system(terminology, concept, value_set, answers):
    assert terminology.coded_by_code[(CARTOX_CS, concept)] == (concept, value_set)
    assert concept in terminology.assessments
    by_code = terminology.value_sets[value_set].by_code
    assert {answer: by_code[(CARTOX_CS, answer)] for answer in answers} == {answer: answer for answer in answers}
    assert set(by_code.values()) == answers
    assert all(terminology.display(answer) for answer in answers)


@pytest.mark.parametrize(
    "code, concept",
    [("91175000", "seizure"), ("423341008", "optic-disc-edema"), ("2032001", "cerebral-edema"),
     ("26079004", "tremor"), ("17450006", "myoclonus"), ("1386000", "intracranial-hemorrhage")],
)
def test_snomed_findings_are_concepts_of_their_own(terminology, document, code, concept):
    assert terminology.finding_by_code[(SNOMED, code)] == concept
    assert [entry["status"] for entry in document["findings"][concept]["codes"]] == ["s"]
    assert terminology.display(concept) == document["findings"][concept]["display"]


def test_finding_observation_codes_are_observation_codes(terminology):
    assert (SNOMED, "91175000") in terminology.observation_codes()
    assert terminology.observation_targets[(SNOMED, "91175000")] == ("finding", "seizure", "presence")
    assert terminology.observation_targets[(CARTOX_CS, "ice-total")] == ("measurement", "ice-total", None)


def test_presence_answers(terminology):
    assert set(terminology.presence.by_code.values()) == {"present", "absent"}
    assert terminology.presence.text.match("No") == "absent"
    assert terminology.presence.text.match("not present") == "absent"
    assert terminology.presence.text.match("present") == "present"


def test_procedures_and_routes(terminology):
    assert terminology.procedure_by_code[(SNOMED, "54550000")] == "electroencephalography"
    assert {terminology.route_by_code[(SNOMED, code)] for code in ("47625008", "26643006", "34206005", "78421000")} == {
        "intravenous", "oral", "subcutaneous", "intramuscular"}
    assert terminology.route_text.match("IV bolus") == "intravenous"


def test_new_concepts_are_cut_from_the_input_terminology_until_a_rule_reads_them(rule_set):
    """ICANS reads the scores, answers and SNOMED CT findings; the prednisone regimen reads MDS and CHIP, the
    transfusions and its exclusions; no rule reads the EEG or the ICE items: those are cut (and listed as ignored
    input)."""
    terms = rule_set.input_terminology
    assert {(CARTOX_CS, "ice-total"), (CARTOX_CS, "capd-total"), (CARTOX_CS, "loc-astct")} <= terms.observation_codes()
    assert (CARTOX_CS, "ice-orientation") not in terms.observation_codes()
    assert set(terms.finding_by_code.values()) == {"seizure", "cerebral-edema", "optic-disc-edema",
                                                   "myelodysplastic-syndrome", "clonal-hematopoiesis"}
    assert (SNOMED, "26079004") not in terms.finding_by_code  # tremor never counts toward ICANS
    assert set(terms.procedure_by_code.values()) == {
        "blood-product-transfusion", "red-cell-transfusion", "platelet-transfusion", "stem-cell-transplant", "radiotherapy", "chemotherapy"}
    read = rule_set.terminology.restricted_to(frozenset({"ice-total", "seizure", "electroencephalography"}))
    assert {(CARTOX_CS, "ice-total"), (SNOMED, "91175000")} <= read.observation_codes()
    assert read.procedure_by_code == {(SNOMED, "54550000"): "electroencephalography"}
    assert read.route_by_code == rule_set.terminology.route_by_code  # an attribute of administrations, always read
