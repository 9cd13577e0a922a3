"""Errors with stable codes, rendered as FHIR OperationOutcome by the HTTP edge.

Codes are those of the project's CodeSystem (fhir_profiles/CodeSystem-cartox.json), grouped by stage:
input-* (request body and parameters), prefetch-* (CDS Hooks), rules-* (rule loading), output-*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: what is wrong, where (FHIRPath), and its stable code."""

    code: str
    message: str
    expression: str | None = None
    severity: str = "error"
    fhir_type: str = "invalid"  # OperationOutcome.issue.code (IssueType)

    def to_fhir(self, codesystem_url: str) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.fhir_type,
            "details": {"coding": [{"system": codesystem_url, "code": self.code}], "text": self.message},
            "diagnostics": self.message,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


class CartoxError(Exception):
    """An error a client can act on: HTTP status plus located issues."""

    status = 400

    def __init__(self, issues: list[Issue] | Issue, status: int | None = None) -> None:
        self.issues = issues if isinstance(issues, list) else [issues]
        if status is not None:
            self.status = status
        super().__init__("; ".join(issue.message for issue in self.issues))


class InputError(CartoxError):
    """The request body or its parameters cannot be used (4xx)."""


class RulesError(Exception):
    """A rule file is invalid: raised at load, never during a request."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def operation_outcome(issues: list[Issue], codesystem_url: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [issue.to_fhir(codesystem_url) for issue in issues]}
