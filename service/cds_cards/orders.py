"""Order-sign results -> CDS Hooks cards: one card per checked order that has something to say, and one
information card for the orders that could not be checked. A card that corrects an order carries an `update`
suggestion with the corrected MedicationRequest; overriding the card keeps the order as drafted."""

from __future__ import annotations

from typing import Any

from service.cds_cards.cards import OVERRIDE_REASONS, SUMMARY_LIMIT
from service.cds_cards.markdown import Markdown, bullet_list, document, md, paragraph, strong
from service.fhir_output.build import OutputConfig, stable_id, valid_medication_request
from service.rules_engine.orders import OrderCheckRule, OrderResult


def order_cards(results: list[OrderResult], unreadable: list[str], rule: OrderCheckRule | None, config: OutputConfig,
                patient: str | None) -> list[dict[str, Any]]:
    if rule is None:
        return []
    cards = [_card(result, rule, config, patient) for result in results]
    if unreadable:
        cards.append(_card(OrderResult(None, "info", rule.words["skipped"].format(orders="; ".join(unreadable))), rule, config, patient))
    rank = {"critical": 0, "warning": 1, "info": 2}
    return sorted(cards, key=lambda card: rank[card["indicator"]])


def _card(result: OrderResult, rule: OrderCheckRule, config: OutputConfig, patient: str | None) -> dict[str, Any]:
    order = result.order
    key = stable_id(rule.rule_id, rule.version, patient or "-", order.location if order else "unchecked", result.summary)
    blocks: list[Markdown] = [paragraph(strong(md("{}", result.summary)))]
    if result.lines:
        blocks.append(bullet_list(md("{}", line) for line in result.lines))
    if result.literature:
        blocks += [paragraph(strong(md("{}", rule.words["literature"]))),
                   bullet_list(md("{} — {}", t.text[:1].upper() + t.text[1:], t.source) for t in result.literature)]
    if result.update is not None and valid_medication_request(result.update, patient) is None:
        blocks.append(paragraph(md("{}", rule.words["not_updatable"])))
    elif result.update is not None:
        blocks.append(paragraph(md("{}", rule.words["override_keeps"])))
    blocks.append(paragraph(md("Rule {} {}.", rule.rule_id, rule.version)))
    summary = result.summary if len(result.summary) < SUMMARY_LIMIT else result.summary[: SUMMARY_LIMIT - 2] + "…"
    card: dict[str, Any] = {
        "uuid": key,
        "summary": summary,
        "indicator": result.indicator,
        "detail": document(blocks),
        "source": {
            "label": f"cartox: {rule.title}",
            "topic": {"system": config.codesystem, "code": rule.rule_id, "display": rule.title},
        },
        "overrideReasons": [{"system": config.codesystem, "code": code, "display": display} for code, display in OVERRIDE_REASONS],
    }
    corrected = valid_medication_request(result.update, patient) if result.update is not None else None
    if corrected is not None and result.update_label is not None:
        card["suggestions"] = [{
            "label": result.update_label,
            "uuid": stable_id(key, "suggestion"),
            "isRecommended": True,
            "actions": [{"type": "update", "description": result.update_label, "resource": corrected}],
        }]
        card["selectionBehavior"] = "at-most-one"
    return card
