"""cartox command line: serve | evaluate FILE | rules lint | rules test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from service.errors import CartoxError, RulesError, operation_outcome
from service.settings import Settings


@click.group()
def main() -> None:
    """cartox: CAR-T toxicity decision support (ASTCT grading, FHIR RiskAssessment/CarePlan, CDS Hooks)."""


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1, or CARTOX_HOST).")
@click.option("--port", default=None, type=int, help="Port (default 8080, or CARTOX_PORT).")
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes.")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Start the HTTP service with gunicorn (rules are compiled before the first request)."""
    from gunicorn.app.base import BaseApplication

    from service.app import create_app

    settings = Settings.from_env()
    settings = settings.with_values(host=host or settings.host, port=port or settings.port)
    application = create_app(settings)

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 60)
            self.cfg.set("accesslog", "-")

        def load(self) -> Any:
            return application

    click.echo(f"cartox listening on http://{settings.host}:{settings.port} (rule set {application.extensions['cartox.engine'].rules.version})", err=True)
    _Server().run()


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--as-of", "as_of", default=None, help="Evaluation time, ISO 8601 with a UTC offset (default: now).")
@click.option("--format", "fmt", type=click.Choice(["cards", "fhir"]), default="cards", show_default=True)
@click.option("--guideline", default=None, help="Management guideline version (seed-S004, ASCO-2021).")
@click.option("--infusion-date", default=None, help="Day 0, overriding the CAR-T infusion in the bundle.")
@click.option("--validate", "strict", flag_value=True, default=None, help="Full FHIR R4B validation of accepted resources.")
def evaluate(file: Any, as_of: str | None, fmt: str, guideline: str | None, infusion_date: str | None, strict: bool | None) -> None:
    """Evaluate a FHIR Bundle FILE ('-' for stdin) and print what POST /evaluate returns."""
    from datetime import datetime, timezone

    from service.fhir_input.times import TimeError, parse_infusion_date, parse_instant_parameter
    from service.pipeline import RequestOptions, default_engine, render

    engine = default_engine()
    try:
        moment = parse_instant_parameter(as_of) if as_of else datetime.now(timezone.utc)
        infusion, date_only = parse_infusion_date(infusion_date) if infusion_date else (None, False)
    except TimeError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        outcome = engine.evaluate_bundle_bytes(file.read(), RequestOptions(moment, guideline, infusion, date_only, strict))
    except CartoxError as exc:
        click.echo(orjson.dumps(operation_outcome(exc.issues, engine.output.codesystem), option=orjson.OPT_INDENT_2).decode())
        sys.exit(2)
    click.echo(orjson.dumps(orjson.loads(render(outcome, fmt)), option=orjson.OPT_INDENT_2).decode())


@main.group()
def rules() -> None:
    """Rule files: lint and test."""


def _rules_dir(directory: str | None) -> Path:
    from service.resources import rules_dir

    return Path(directory) if directory else rules_dir()


@rules.command("lint")
@click.option("--dir", "directory", default=None, help="Rule directory (default: the shipped rules or CARTOX_RULES_DIR).")
def lint(directory: str | None) -> None:
    """Validate every rule file and case file against rules/schema and compile the rule set."""
    from service.rules_engine.cases import load_cases
    from service.rules_engine.load import case_files, load_rule_set

    path = _rules_dir(directory)
    try:
        rule_set = load_rule_set(path)
        for case_file in case_files(path):
            click.echo(f"ok  {case_file.name}: {len(load_cases(case_file, path / 'schema'))} cases")
    except (RulesError, ValueError) as exc:
        click.echo(f"FAIL {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # schema errors from jsonschema carry their own message
        click.echo(f"FAIL {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    for name in rule_set.files:
        click.echo(f"ok  {name}")
    click.echo(f"rule set {rule_set.version}: valid")


@rules.command("test")
@click.option("--dir", "directory", default=None, help="Rule directory (default: the shipped rules or CARTOX_RULES_DIR).")
@click.option("-k", "keyword", default=None, help="Only cases whose name contains this text.")
def test(directory: str | None, keyword: str | None) -> None:
    """Run the named cases in rules/*.cases.yaml."""
    from service.rules_engine.cases import CaseFailure, load_cases, run_case
    from service.rules_engine.load import case_files

    path = _rules_dir(directory)
    passed = failed = 0
    for case_file in case_files(path):
        for case in load_cases(case_file, path / "schema"):
            if keyword and keyword not in case.name:
                continue
            try:
                run_case(case, path)
            except (CaseFailure, CartoxError) as exc:
                failed += 1
                click.echo(f"FAIL {case_file.name}::{case.name}: {exc}")
            else:
                passed += 1
                click.echo(f"ok   {case_file.name}::{case.name}")
    click.echo(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)
