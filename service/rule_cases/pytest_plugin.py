"""pytest plugin: every case in rules/*.cases.yaml becomes a test item (loaded with -p in pyproject)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from service.rule_cases.cases import Case, CaseFailure, load_cases, run_case


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.name.endswith((".cases.yaml", ".cases.yml", ".cases.json")):
        return RuleCaseFile.from_parent(parent, path=file_path)
    return None


class RuleCaseFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        for case in load_cases(self.path, self.path.parent / "schema"):
            yield RuleCaseItem.from_parent(self, name=case.name, case=case)


class RuleCaseItem(pytest.Item):
    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        run_case(self.case, self.path.parent)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailure):
            return f"{self.case.rule} case {self.case.name!r}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.case.rule}::{self.case.name}"
