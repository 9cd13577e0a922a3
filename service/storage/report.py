"""`cartox feedback report`: acceptance and override rates per rule and card, with the override reasons.

A feedback row names a card by uuid only; its rule, title and indicator come from the audit rows with
that card uuid (cards of one assessment keep their uuid across evaluations).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select

from service.storage.database import Database
from service.storage.feedback import ACCEPTED
from service.storage.tables import evaluation_cards, feedback

UNKNOWN_CARD = "(card not in the audit)"
NO_REASON = "(no reason: dismissed)"


@dataclass
class CardRates:
    service_id: str
    rule: str
    title: str
    indicator: str
    accepted: int = 0
    overridden: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def responses(self) -> int:
        return self.accepted + self.overridden


def card_rates(database: Database) -> list[CardRates]:
    """One entry per service, rule, card title and indicator, most responses first."""
    cards = (select(evaluation_cards.c.card_uuid, func.min(evaluation_cards.c.rule).label("rule"),
                    func.min(evaluation_cards.c.title).label("title"), func.min(evaluation_cards.c.indicator).label("indicator"))
             .group_by(evaluation_cards.c.card_uuid).subquery())
    query = (select(feedback.c.service_id, cards.c.rule, cards.c.title, cards.c.indicator, feedback.c.outcome,
                    feedback.c.override_code, feedback.c.override_display, func.count().label("responses"))
             .select_from(feedback.outerjoin(cards, cards.c.card_uuid == feedback.c.card_uuid))
             .group_by(feedback.c.service_id, cards.c.rule, cards.c.title, cards.c.indicator, feedback.c.outcome,
                       feedback.c.override_code, feedback.c.override_display))
    groups: dict[tuple[str, str, str, str], CardRates] = {}
    with database.engine.connect() as connection:
        for row in connection.execute(query):
            key = (row.service_id, row.rule or UNKNOWN_CARD, row.title or "-", row.indicator or "-")
            rates = groups.setdefault(key, CardRates(*key))
            if row.outcome == ACCEPTED:
                rates.accepted += row.responses
                continue
            rates.overridden += row.responses
            reason = f"{row.override_code} ({row.override_display})" if row.override_code and row.override_display else row.override_code
            rates.reasons[reason or NO_REASON] += row.responses
    return sorted(groups.values(), key=lambda rates: (-rates.responses, rates.service_id, rates.rule, rates.title))


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def report_lines(rates: list[CardRates]) -> list[str]:
    if not rates:
        return ["no feedback stored"]
    total = sum(r.responses for r in rates)
    unknown = sum(r.responses for r in rates if r.rule == UNKNOWN_CARD)
    lines = [f"{total} feedback responses, {unknown} on cards not in the audit", "",
             "service | rule | card | indicator | responses | accepted | overridden"]
    for r in rates:
        lines.append(f"{r.service_id} | {r.rule} | {r.title} | {r.indicator} | {r.responses} | "
                     f"{r.accepted} ({_percent(r.accepted, r.responses)}) | {r.overridden} ({_percent(r.overridden, r.responses)})")
    overridden = [r for r in rates if r.reasons]
    if overridden:
        lines += ["", "override reasons"]
        for r in overridden:
            lines.append(f"{r.service_id} | {r.rule} | {r.title} | {r.indicator}:")
            lines += [f"  {count} ({_percent(count, r.overridden)})  {reason}" for reason, count in r.reasons.most_common()]
    return lines
