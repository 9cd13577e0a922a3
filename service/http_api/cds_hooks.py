"""CDS Hooks 2.0: discovery, the car-t-toxicity service (patient-view) and the order-sign check of draft
glucocorticoid and tocilizumab orders (car-t-glucocorticoid-order-check), both with the same prefetch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from flask import Blueprint, Response, request

from service.errors import InputError, Issue
from service.cds_cards.orders import order_cards
from service.fhir_input.decode import DraftOrder, Partial, decode_bundle, decode_resource, split_validation_message
from service.fhir_input.normalise.draft_order import read_order
from service.rules_engine.load import check_orders
from service.http_api.audit import audit_evaluation
from service.http_api.common import as_of_parameter, engine, infusion_parameter, json_response, require_json_body
from service.http_api.prefetch import complete_prefetch, verified_callers
from service.pipeline import Engine, Outcome, RequestOptions
from service.storage.audit import card_resource_ids
from service.timeline.build import SourcedEntry, entries_from_bundle

SERVICE_ID = "car-t-toxicity"
HOOK = "patient-view"
ORDER_SERVICE_ID = "car-t-glucocorticoid-order-check"
ORDER_HOOK = "order-sign"
REQUIRED_PREFETCH = ("patient", "observations", "medicationAdministrations", "conditions")
# Asked for, fetched from fhirServer when missing and allowed, else evaluated without (the regimen says what it
# could not check): EHRs configured for the four required keys keep working.
OPTIONAL_PREFETCH = ("procedures",)
SEARCHSET_PREFETCH = REQUIRED_PREFETCH[1:] + OPTIONAL_PREFETCH
USAGE = ("The patient, observations, medicationAdministrations and conditions prefetch keys are required; procedures "
         "(transfusions, transplant, radiotherapy) is optional. A null value means the EHR has no data.")

blueprint = Blueprint("cds_hooks", __name__)


class HookRequest(msgspec.Struct):
    hook: str | None = None
    hookInstance: str | None = None
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    prefetch: dict[str, msgspec.Raw] | None = None


_HOOK_DECODER = msgspec.json.Decoder(HookRequest)


def prefetch_templates(service: Engine) -> dict[str, str]:
    """Observations: exactly the codes the loaded rules read (the input terminology is cut to the concepts
    some rule observes; a panel is asked for when its components carry one of them), so that nothing fetched
    is then ignored. Administrations: every one, whatever its code (medications are also matched by name,
    which a code search cannot express), with the Medications they reference. Conditions: the clinical
    findings the rules read (e.g. a seizure recorded as a Condition). Procedures (optional): those the rules read
    (transfusions, stem cell transplant, radiotherapy)."""
    terms = service.rules.input_terminology
    codes = sorted(f"{system}|{code}" for system, code in terms.observation_codes())
    findings = sorted(f"{system}|{code}" for system, code in terms.finding_by_code)
    procedures = sorted(f"{system}|{code}" for system, code in terms.procedure_by_code)
    templates = {
        "patient": "Patient/{{context.patientId}}",
        "observations": "Observation?patient={{context.patientId}}&code=" + ",".join(codes),
        "medicationAdministrations": "MedicationAdministration?patient={{context.patientId}}&_include=MedicationAdministration:medication",
        "conditions": "Condition?patient={{context.patientId}}&code=" + ",".join(findings),
    }
    if procedures:
        templates["procedures"] = "Procedure?patient={{context.patientId}}&code=" + ",".join(procedures)
    return templates


@blueprint.get("/cds-services")
def discovery() -> Response:
    service = engine()
    return json_response({
        "services": [{
            "hook": HOOK,
            "id": SERVICE_ID,
            "title": "CAR-T cell therapy toxicity (CRS, ICANS, cytopenias, ICAHT and the PHT prednisone regimen)",
            "description": (
                "Grades cytokine release syndrome and immune effector cell-associated neurotoxicity syndrome by ASTCT 2019, "
                "the cytopenias by CTCAE v5.0 and hematotoxicity by EHA/EBMT ICAHT, follows the low-dose prednisone regimen "
                "for prolonged hematologic toxicity, and proposes one plan with the guidelines' next steps ("
                + ", ".join(service.rules.guideline_ids) + ")."
            ),
            "prefetch": prefetch_templates(service),
            "usageRequirements": USAGE,
        }, {
            "hook": ORDER_HOOK,
            "id": ORDER_SERVICE_ID,
            "title": "CAR-T glucocorticoid and tocilizumab order check",
            "description": (
                "At signing: projects a glucocorticoid order onto the patient's exposure since the CAR-T infusion and warns "
                "before a literature threshold is crossed, compares orders for CRS/ICANS with the guideline plan and suggests "
                "the plan's regimen, and checks tocilizumab orders against the label dose and limits."
            ),
            "prefetch": prefetch_templates(service),
            "usageRequirements": USAGE,
        }]
    })


def _decode_request(body: bytes, hook: str = HOOK, service_id: str = SERVICE_ID) -> HookRequest:
    try:
        hook_request = _HOOK_DECODER.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: must come first
        what, path = split_validation_message(exc)
        if not path:
            raise InputError(Issue("input-bad-parameter", f"Not a CDS Hooks request: {what}", None, fhir_type="structure")) from exc
        raise InputError(Issue("input-wrong-type", f"Not a CDS Hooks request: {what}", path.lstrip(".")), status=422) from exc
    except msgspec.DecodeError as exc:
        raise InputError(Issue("input-not-json", f"Body is not valid JSON: {exc}", None, fhir_type="structure")) from exc
    except RecursionError:
        raise InputError(Issue("input-not-json", "JSON nested too deeply", None, fhir_type="structure")) from None
    if hook_request.hook is None:
        raise InputError(Issue("input-bad-parameter", "hook is required", "hook", fhir_type="required"))
    if hook_request.hook != hook:
        raise InputError(Issue("hook-unsupported", f"Service {service_id} answers {hook}, not {hook_request.hook!r}", "hook", fhir_type="not-supported"))
    if not hook_request.hookInstance:
        raise InputError(Issue("input-bad-parameter", "hookInstance is required", "hookInstance", fhir_type="required"))
    patient_id = (hook_request.context or {}).get("patientId")
    if not isinstance(patient_id, str) or not patient_id:
        raise InputError(Issue("input-bad-parameter", "context.patientId is required (a string)", "context.patientId", fhir_type="required"))
    return hook_request


def prefetched_entries(prefetch: dict[str, msgspec.Raw]) -> tuple[list[SourcedEntry], dict[str, list[Any]]]:
    """Prefetched (or fetched: see service.http_api.prefetch) Patient and searchset Bundles -> entries; every
    required key must be there, null means no data.

    A searchset with a `next` link was cut by paging: its entries carry the reason (the timeline reports the
    data as partial); a cut page without any usable entry hands its reason to another entry."""
    entries: list[SourcedEntry] = []
    ignored: dict[str, list[Any]] = {}
    patient_raw = bytes(prefetch["patient"])
    if patient_raw.strip() != b"null":
        patient = decode_resource(patient_raw, "prefetch.patient")
        if patient.resourceType != "Patient":
            raise InputError(Issue("input-wrong-type", f"prefetch.patient must be a Patient, not {patient.resourceType!r}",
                                   "prefetch.patient.resourceType"), status=422)
        entries.append(SourcedEntry("prefetch.patient", None, patient))
    orphans: list[Partial] = []
    for key in SEARCHSET_PREFETCH:
        if key in OPTIONAL_PREFETCH and key not in prefetch:
            continue
        raw = bytes(prefetch[key])
        if raw.strip() == b"null":
            continue
        decoded = decode_bundle(raw, root=f"prefetch.{key}")
        entries += entries_from_bundle(decoded.entries, root=f"prefetch.{key}")
        if decoded.partial is not None and not decoded.entries:
            orphans.append(decoded.partial)
        for kind, where in decoded.ignored_types.items():
            ignored.setdefault(kind, []).extend(where)
    for partial in orphans:
        index = next((i for i, entry in enumerate(entries) if entry.partial is None), None)
        if index is not None:  # without any entry there is nothing to grade: the finding is not assessable
            entries[index] = replace(entries[index], partial=partial)
    return entries, ignored


def _evaluate_hook(hook_request: HookRequest) -> Outcome:
    """The prefetched data evaluated for the request's patient (both services)."""
    patient_id = hook_request.context["patientId"]  # type: ignore[index]
    prefetch = complete_prefetch(hook_request.prefetch or {}, prefetch_templates(engine()), SEARCHSET_PREFETCH,
                                 hook_request.fhirServer, hook_request.fhirAuthorization, hook_request.context or {},
                                 verified_callers(), OPTIONAL_PREFETCH)
    entries, ignored = prefetched_entries(prefetch)
    infusion, date_only = infusion_parameter()
    options = RequestOptions(as_of_parameter(), request.args.get("guideline"), infusion, date_only)
    outcome = engine().evaluate(entries, ignored, options)
    if outcome.timeline.patient not in (None, f"Patient/{patient_id}"):
        raise InputError(
            Issue("input-multiple-patients", f"Prefetched data are about {outcome.timeline.patient}, not Patient/{patient_id}",
                  "context.patientId", fhir_type="business-rule"),
            status=422,
        )
    return outcome


@blueprint.post(f"/cds-services/{SERVICE_ID}")
def call_service() -> Response:
    body = require_json_body()
    hook_request = _decode_request(body)
    outcome = _evaluate_hook(hook_request)
    _audit(SERVICE_ID, body, hook_request, outcome, outcome.cards)
    return json_response(outcome.cds_response())


def _audit(service_id: str, body: bytes, hook_request: HookRequest, outcome: Outcome, cards: Sequence[dict[str, Any]]) -> None:
    audit_evaluation(service_id, body, outcome, cards, card_resource_ids(cards), hook_request.hookInstance,
                     (hook_request.context or {}).get("patientId"))


@blueprint.post(f"/cds-services/{ORDER_SERVICE_ID}")
def call_order_check() -> Response:
    """order-sign: cards for the draft glucocorticoid and tocilizumab orders only (none for other drugs)."""
    body = require_json_body()
    hook_request = _decode_request(body, ORDER_HOOK, ORDER_SERVICE_ID)
    drafts = draft_orders((hook_request.context or {}).get("draftOrders"))
    outcome = _evaluate_hook(hook_request)
    service = engine()
    orders = [read_order(draft, raw, location, service.rules.input_terminology, outcome.timeline.display_offset)
              for draft, raw, location in drafts.readable]
    results = check_orders(service.rules, orders, outcome.timeline, outcome.evaluation)
    cards = order_cards(results, drafts.unreadable, service.rules.order_check, service.output, outcome.timeline.patient)
    _audit(ORDER_SERVICE_ID, body, hook_request, outcome, cards)
    return json_response({"cards": cards})


@dataclass(frozen=True)
class DraftOrders:
    readable: list[tuple[DraftOrder, dict[str, Any], str]]  # (decoded, as sent, location)
    unreadable: list[str]  # "context.draftOrders.entry[2].resource.dosageInstruction[0]: Expected `array`, got `str`"


def draft_orders(value: Any) -> DraftOrders:
    """context.draftOrders: a Bundle of MedicationRequests (a missing Bundle type is tolerated). Only a request
    without any usable draftOrders is refused; an order with fields of the wrong type is listed, not checked."""
    where = "context.draftOrders"
    if not isinstance(value, dict) or value.get("resourceType") not in (None, "Bundle"):
        raise InputError(Issue("input-bad-parameter", "context.draftOrders must be a Bundle of MedicationRequests", where, fhir_type="required"))
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        raise InputError(Issue("input-wrong-type", "context.draftOrders.entry must be an array", f"{where}.entry"), status=422)
    readable, unreadable = [], []
    for index, entry in enumerate(entries):
        location = f"{where}.entry[{index}].resource"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "MedicationRequest":
            continue  # other orders (lab, imaging ...) are not this service's
        try:
            readable.append((msgspec.convert(resource, DraftOrder), resource, location))
        except msgspec.ValidationError as exc:
            what, path = split_validation_message(exc)
            unreadable.append(f"{location}{path}: {what.rstrip(' -')}")
    return DraftOrders(readable, unreadable)
