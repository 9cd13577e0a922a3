"""service.fhir_input.decode: only the used resource types are decoded; wrong shapes located in FHIRPath."""

from __future__ import annotations

import json

import pytest

from service.errors import InputError
from service.fhir_input.decode import USED_TYPES, decode_bundle, decode_resource


def _raises(body: bytes, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        decode_bundle(body, **kwargs)
    assert len(info.value.issues) == 1
    return info.value


def _valid(fhir) -> bytes:
    return fhir.bundle(
        fhir.patient(),
        {"resourceType": "Encounter", "id": "e1", "status": "in-progress"},
        fhir.observation("t1", "8310-5", "2026-03-05T08:00:00+01:00", fhir.quantity(38.4, "Cel", "Cel")),
        {"resourceType": "AllergyIntolerance", "id": "al1"},
        fhir.administration("cart", "2026-03-02T10:00:00+01:00", text="Yescarta"),
        fhir.medication("m1", "tocilizumab"),
        {"resourceType": "Encounter", "id": "e2"},
        {"resourceType": "MedicationStatement", "id": "ms1", "status": "active"},
    )


def test_used_types():
    assert USED_TYPES == {"Patient", "Observation", "MedicationAdministration", "Medication", "Condition", "Procedure"}


def test_valid_bundle_decodes_used_types_and_lists_ignored_ones(fhir):
    decoded = decode_bundle(_valid(fhir))
    assert decoded.bundle_type == "collection"
    assert [(e.index, e.resource.resourceType) for e in decoded.entries] == [
        (0, "Patient"), (2, "Observation"), (4, "MedicationAdministration"), (5, "Medication")
    ]
    assert decoded.ignored_types == {"Encounter": [1, 6], "AllergyIntolerance": [3], "MedicationStatement": [7]}


def test_decoded_fields(fhir):
    decoded = decode_bundle(_valid(fhir))
    obs = decoded.entries[1].resource
    assert obs.id == "t1"
    assert obs.status == "final"
    assert obs.code.coding[0].code == "8310-5"
    assert obs.valueQuantity.value == 38.4
    assert obs.valueQuantity.code == "Cel"
    assert obs.effectiveDateTime == "2026-03-05T08:00:00+01:00"
    assert decoded.entries[0].resource.birthDate == "1965-04-02"


def test_full_url_kept(fhir):
    body = fhir.bundle(("urn:uuid:0d5e3f3a-1111-4a4a-9999-000000000001", fhir.patient()))
    assert decode_bundle(body).entries[0].full_url == "urn:uuid:0d5e3f3a-1111-4a4a-9999-000000000001"


def test_integer_value_accepted_as_float(fhir):
    body = fhir.bundle(fhir.observation("t1", "8310-5", "2026-03-05T08:00:00Z", fhir.quantity(38, "Cel", "Cel")))
    assert decode_bundle(body).entries[0].resource.valueQuantity.value == 38.0


def test_unknown_fields_ignored(fhir):
    obs = fhir.observation("t1", "8310-5", "2026-03-05T08:00:00Z", fhir.quantity(38.4, "Cel", "Cel"))
    obs["meta"] = {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-body-temperature"]}
    obs["category"] = [{"coding": [{"code": "vital-signs"}]}]
    obs["note"] = "not even the FHIR shape of note"
    assert decode_bundle(fhir.bundle(obs)).entries[0].resource.id == "t1"


def test_empty_bundle(fhir):
    decoded = decode_bundle(b'{"resourceType": "Bundle", "type": "collection"}')
    assert decoded.entries == ()
    assert decoded.ignored_types == {}


@pytest.mark.parametrize("bundle_type", ["collection", "batch", "transaction", "searchset"])
def test_accepted_bundle_types(fhir, bundle_type):
    assert decode_bundle(fhir.bundle(fhir.patient(), bundle_type=bundle_type)).bundle_type == bundle_type


# --- wrong types ----------------------------------------------------------------------------------------

def test_wrong_type_in_used_resource_is_located(fhir):
    bad = fhir.observation("t1", "8310-5", "2026-03-05T08:00:00Z", fhir.quantity("38.4", "Cel", "Cel"))
    body = fhir.bundle(fhir.patient(), {"resourceType": "Encounter", "id": "e"}, bad)
    error = _raises(body)
    assert error.status == 422
    issue = error.issues[0]
    assert issue.code == "input-wrong-type"
    assert issue.expression == "Bundle.entry[2].resource.valueQuantity.value"
    assert "Observation" in issue.message


def test_wrong_type_index_is_zero_based_and_nested_paths(fhir):
    obs = fhir.observation(
        "bp", None, "2026-03-05T08:00:00Z",
        code=fhir.codeable(fhir.LOINC, "85354-9"),
        components=[fhir.component("8480-6", fhir.quantity(110, "mmHg", "mm[Hg]")),
                    {"code": {"coding": {"system": fhir.LOINC, "code": "8462-4"}}}],
    )
    error = _raises(fhir.bundle(obs))
    assert error.status == 422
    assert error.issues[0].expression == "Bundle.entry[0].resource.component[1].code.coding"


def test_wrong_type_in_administration_dosage(fhir):
    """MedicationAdministration.dosage is one object in R4: a list is a wrong type there."""
    mad = fhir.administration("a1", "2026-03-05T08:00:00Z", text="dexamethasone")
    mad["dosage"] = [{"dose": {"value": 10, "unit": "mg"}}]
    error = _raises(fhir.bundle(fhir.patient(), mad))
    assert error.status == 422
    assert error.issues[0].expression == "Bundle.entry[1].resource.dosage"


def test_valid_bundle_with_other_shapes_in_unused_types(fhir):
    """Unused types may carry same-named fields of other shapes (second, entry-by-entry pass)."""
    body = fhir.bundle(
        fhir.patient(),
        {"resourceType": "MedicationStatement", "id": "ms1", "dosage": [{"text": "1 tablet"}]},
        fhir.observation("t1", "8310-5", "2026-03-05T08:00:00+01:00", fhir.quantity(38.4, "Cel", "Cel")),
    )
    decoded = decode_bundle(body)
    assert [(e.index, e.resource.resourceType, e.resource.id) for e in decoded.entries] == [
        (0, "Patient", "p1"), (2, "Observation", "t1")
    ]
    assert decoded.entries[1].resource.valueQuantity.value == 38.4
    assert decoded.ignored_types == {"MedicationStatement": [1]}


def test_same_wrong_shape_in_unused_type_does_not_raise(fhir):
    """MedicationStatement.dosage is a list in R4 (unlike MedicationAdministration.dosage)."""
    statement = {"resourceType": "MedicationStatement", "id": "ms", "status": "active", "dosage": [{"text": "10 mg"}]}
    allergy = {"resourceType": "AllergyIntolerance", "id": "c", "code": [1, 2, 3], "patient": "Patient/p1"}
    temp = fhir.observation("t1", "8310-5", "2026-03-05T08:00:00Z", fhir.quantity(38.4, "Cel", "Cel"))
    decoded = decode_bundle(fhir.bundle(statement, allergy, temp))
    assert [e.index for e in decoded.entries] == [2]
    assert decoded.ignored_types == {"MedicationStatement": [0], "AllergyIntolerance": [1]}


def test_wrong_resource_type_type(fhir):
    body = json.dumps({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": 7}}]}).encode()
    error = _raises(body)
    assert error.status == 422
    assert error.issues[0].expression == "Bundle.entry[0].resource.resourceType"


def test_entry_not_a_list(fhir):
    error = _raises(b'{"resourceType": "Bundle", "type": "collection", "entry": {"resource": {}}}')
    assert error.status == 422
    assert error.issues[0].code == "input-wrong-type"
    assert error.issues[0].expression == "Bundle.entry"


# --- not a bundle -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"resourceType": "Bundle",}', b"\xff\xfe"])
def test_not_json(body):
    error = _raises(body)
    assert error.issues[0].code == "input-not-json"
    assert error.status == 400


@pytest.mark.parametrize("body", [b"[]", b"42", b'"Bundle"', b"null"])
def test_not_an_object(body):
    error = _raises(body)
    assert error.issues[0].code == "input-not-bundle"
    assert error.status == 400


@pytest.mark.parametrize("body", [b'{"resourceType": "Patient", "id": "p1"}', b'{"type": "collection"}'])
def test_object_that_is_not_a_bundle(body):
    error = _raises(body)
    assert error.issues[0].code == "input-not-bundle"
    assert error.issues[0].expression == "Bundle.resourceType"


@pytest.mark.parametrize("bundle_type", ["history", "document", "message", "transaction-response"])
def test_rejected_bundle_types(fhir, bundle_type):
    error = _raises(fhir.bundle(fhir.patient(), bundle_type=bundle_type))
    assert error.issues[0].code == "input-not-bundle"
    assert error.issues[0].expression == "Bundle.type"
    assert bundle_type in error.issues[0].message


def test_rejected_bundle_type_also_on_slow_path(fhir):
    """A wrong shape in an unused type sends decoding down the entry-by-entry path: the head is still checked."""
    body = fhir.bundle({"resourceType": "MedicationStatement", "dosage": [{}]}, bundle_type="history")
    assert _raises(body).issues[0].expression == "Bundle.type"


# --- root -----------------------------------------------------------------------------------------------------

def test_root_prefixes_wrong_type_locations(fhir):
    bad = fhir.observation("t1", "8310-5", "2026-03-05T08:00:00Z", fhir.quantity("hot", "Cel", "Cel"))
    error = _raises(fhir.bundle(fhir.patient(), bad), root="prefetch.observations")
    assert error.status == 422
    assert error.issues[0].expression == "prefetch.observations.entry[1].resource.valueQuantity.value"


def test_root_prefixes_head_locations(fhir):
    error = _raises(b'{"resourceType": "Patient"}', root="prefetch.observations")
    assert error.issues[0].expression == "prefetch.observations.resourceType"
    error = _raises(fhir.bundle(bundle_type="history"), root="prefetch.medications")
    assert error.issues[0].expression == "prefetch.medications.type"


def test_decode_resource_located(fhir):
    resource = decode_resource(json.dumps(fhir.patient()).encode(), "prefetch.patient")
    assert resource.resourceType == "Patient"
    with pytest.raises(InputError) as info:
        decode_resource(b'{"resourceType": "Patient", "birthDate": 1965}', "prefetch.patient")
    assert info.value.status == 422
    assert info.value.issues[0].expression == "prefetch.patient.birthDate"
    with pytest.raises(InputError) as info:
        decode_resource(b"{oops", "prefetch.patient")
    assert info.value.issues[0].code == "input-not-json"


# --- dosage rates and paging links ----------------------------------------------------------------------

def test_dosage_rate_quantity_and_ratio_decoded(fhir):
    mad = fhir.administration("ns", "2026-03-05T08:00:00+01:00", rxnorm="313002", dose=fhir.quantity(500, "mL", "mL"))
    mad["dosage"]["rateQuantity"] = fhir.quantity(1000, "mL/h", "mL/h")
    lr = fhir.administration("lr", "2026-03-05T08:00:00+01:00", rxnorm="847630")
    lr["dosage"] = {"rateRatio": {"numerator": fhir.quantity(500, "mL", "mL"), "denominator": fhir.quantity(30, "min", "min")}}
    ns, ringer = (e.resource for e in decode_bundle(fhir.bundle(mad, lr)).entries)
    assert (ns.dosage.dose.value, ns.dosage.dose.code) == (500.0, "mL")
    assert (ns.dosage.rateQuantity.value, ns.dosage.rateQuantity.code) == (1000.0, "mL/h")
    assert ringer.dosage.rateRatio.numerator.value == 500.0
    assert (ringer.dosage.rateRatio.denominator.value, ringer.dosage.rateRatio.denominator.code) == (30.0, "min")


def _paged(fhir, relation="next", fallback=False):
    document = json.loads(fhir.bundle(fhir.patient(), fhir.observation("t1", "8310-5", "2026-03-05T08:00:00Z", fhir.quantity(38.4, "Cel", "Cel")),
                                      bundle_type="searchset"))
    document["link"] = [{"relation": "self", "url": "https://ehr.example.org/fhir/Observation?patient=p1"},
                        {"relation": relation, "url": "https://ehr.example.org/fhir/Observation?patient=p1&page=2"}]
    if fallback:  # a type the rules do not use, with a field of another shape: the entry-by-entry pass
        document["entry"].append({"resource": {"resourceType": "Encounter", "id": "e1", "status": {"x": 1}}})
    return json.dumps(document).encode()


@pytest.mark.parametrize("fallback", [False, True])
def test_next_link_marks_the_bundle_and_every_entry_partial(fhir, fallback):
    decoded = decode_bundle(_paged(fhir, fallback=fallback), root="prefetch.observations")
    assert decoded.partial is not None
    assert decoded.partial.location == "prefetch.observations.link[1]"
    assert "prefetch.observations: searchset has a next page" in decoded.partial.reason
    assert [e.partial for e in decoded.entries] == [decoded.partial, decoded.partial]


def test_links_other_than_next_are_not_partial(fhir):
    decoded = decode_bundle(_paged(fhir, relation="previous"))
    assert decoded.partial is None
    assert all(e.partial is None for e in decoded.entries)
    assert decode_bundle(_valid(fhir)).partial is None


def test_wrong_link_shape_is_located(fhir):
    document = json.loads(_paged(fhir))
    document["link"] = {"relation": "next"}
    error = _raises(json.dumps(document).encode())
    assert error.issues[0].code == "input-wrong-type"
    assert error.issues[0].expression == "Bundle.link"
