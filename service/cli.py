"""cartox command line: serve | evaluate FILE | rules lint | rules test | db upgrade | feedback report."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import orjson

from service.errors import CartoxError, RulesError
from service.settings import Settings

if TYPE_CHECKING:
    from service.pipeline import Engine


@click.group()
def main() -> None:
    """cartox: CAR-T toxicity decision support (ASTCT grading, FHIR RiskAssessment/CarePlan, CDS Hooks)."""


def configured_engine() -> Engine:
    """Settings and the compiled rule set from the environment.

    A configuration the service cannot run with ends the command with one line on stderr naming the
    variable, and exit status 2 (no traceback): the same for `cartox serve`, `cartox evaluate` and the image.
    """
    try:
        settings = Settings.from_env()  # before the heavy imports: a typo is reported at once
    except ValueError as exc:
        _configuration_error(str(exc))
    from service.pipeline import Engine

    try:
        return Engine(settings)
    except RulesError as exc:
        _configuration_error(f"{_rules_variable(exc)}: {exc}")
    except ValueError as exc:  # an unknown CARTOX_GUIDELINE: the message names it
        _configuration_error(str(exc))
    except OSError as exc:  # rule files that cannot be read
        _configuration_error(f"{_rules_variable(None)}: {exc}")


def _rules_variable(error: RulesError | None) -> str:
    """The variable behind a rule-loading error: the overrides, a site's rule directory, or the shipped rules."""
    if error is not None and str(error).removeprefix(f"{error.path}: ").startswith("override"):
        return "CARTOX_RULE_OVERRIDES"
    return "CARTOX_RULES_DIR" if os.environ.get("CARTOX_RULES_DIR") else "shipped rules"


def _configuration_error(message: str) -> NoReturn:
    click.echo(f"cartox: configuration error: {message}", err=True)
    sys.exit(2)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1, or CARTOX_HOST).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port (default 8080, or CARTOX_PORT).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Threads per worker that run the application on fully received requests.")
def serve(host: str | None, port: int | None, workers: int, threads: int) -> None:
    """Start the HTTP service (README "Worker model"); rules are compiled before the first request."""
    engine = configured_engine()
    from service.observability.multiproc import prepare_multiprocess_metrics

    prepare_multiprocess_metrics()  # before the app imports prometheus_client: /metrics adds up all workers
    from service.app import create_app
    from service.server import BufferedWSGI, Server
    from service.storage import StorageError

    settings = engine.settings.with_values(host=host or engine.settings.host, port=port or engine.settings.port)
    try:
        app = create_app(settings, engine)
    except ValueError as exc:  # the security configuration (mode, issuers, CORS, API keys)
        _configuration_error(str(exc))
    except StorageError as exc:
        _storage_error(exc)
    application = BufferedWSGI(app, settings.max_body_bytes, settings.body_timeout_seconds, threads)
    mode = app.extensions["cartox.security"].mode
    click.echo(f"cartox listening on http://{settings.host}:{settings.port} ({mode} mode, rule set {engine.rules.version})", err=True)
    Server(application, f"{settings.host}:{settings.port}", workers, settings.log_level).run()


def _storage_error(message: object) -> NoReturn:
    """A database the service cannot use: one line, exit status 2 (like a configuration error)."""
    click.echo(f"cartox: {message}", err=True)
    sys.exit(2)


def _database_url() -> str:
    from service.storage.database import database_url

    try:
        return database_url(Settings.from_env())
    except ValueError as exc:
        _configuration_error(str(exc))


@main.group()
def db() -> None:
    """The database of the audit, the feedback and the JWT replay check (README "Storage")."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database (CARTOX_DATABASE_URL, else the SQLite file in CARTOX_DATA_DIR) to this version's schema."""
    from service.storage.database import head_revision, shown_url, upgrade

    url = _database_url()
    try:
        upgrade(url)
    except Exception as exc:  # unreachable server, a revision unknown to this version ...
        _storage_error(f"database {shown_url(url)} could not be upgraded: {str(exc).splitlines()[0]}")
    click.echo(f"database {shown_url(url)} at revision {head_revision()}")


@main.group()
def feedback() -> None:
    """Clinicians' feedback on the cards."""


@feedback.command("report")
def feedback_report() -> None:
    """Acceptance and override rates per rule and card, with the override reasons."""
    from service.storage import StorageError
    from service.storage.database import Database, check_schema
    from service.storage.report import card_rates, report_lines

    url = _database_url()
    try:
        check_schema(url)
    except StorageError as exc:
        _storage_error(exc)
    database = Database(url)
    try:
        click.echo("\n".join(report_lines(card_rates(database))))
    finally:
        database.dispose()


@main.command()
@click.argument("file", type=click.File("rb"))
@click.option("--as-of", "as_of", default=None, help="Evaluation time, ISO 8601 with a UTC offset (default: now).")
@click.option("--format", "fmt", type=click.Choice(["cards", "fhir"]), default="cards", show_default=True)
@click.option("--guideline", default=None, help="Management guideline version (seed-S004, ASCO-2021).")
@click.option("--infusion-date", default=None, help="Day 0, overriding the CAR-T infusion in the bundle.")
@click.option("--validate", "strict", flag_value=True, default=None, help="Full FHIR R4B validation of accepted resources.")
@click.option("--timeline", "timeline_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the cytopenia grades, prednisone doses and regimen states over time as an SVG to this path.")
def evaluate(file: Any, as_of: str | None, fmt: str, guideline: str | None, infusion_date: str | None, strict: bool | None,
             timeline_path: str | None) -> None:
    """Evaluate a FHIR Bundle FILE ('-' for stdin) and print what POST /evaluate returns."""
    from datetime import datetime, timezone

    from service.fhir_input.times import TimeError, parse_infusion_date, parse_instant_parameter
    from service.http_api.common import error_outcome
    from service.pipeline import RequestOptions, render

    engine = configured_engine()
    try:
        moment = parse_instant_parameter(as_of) if as_of else datetime.now(timezone.utc)
        infusion, date_only = parse_infusion_date(infusion_date) if infusion_date else (None, False)
    except TimeError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        outcome = engine.evaluate_bundle_bytes(file.read(), RequestOptions(moment, guideline, infusion, date_only, strict))
    except CartoxError as exc:
        click.echo(orjson.dumps(error_outcome(exc.issues, engine.output.codesystem), option=orjson.OPT_INDENT_2).decode())
        sys.exit(2)
    if timeline_path is not None:
        from service.fhir_output.timeline_svg import timeline_svg

        try:
            Path(timeline_path).write_text(timeline_svg(outcome.evaluation, outcome.timeline), encoding="utf-8")
        except OSError as exc:  # one line, like a configuration error: the output is not printed without its picture
            click.echo(f"cartox: cannot write the timeline to {timeline_path}: {exc.strerror or exc}", err=True)
            sys.exit(2)
    click.echo(orjson.dumps(orjson.loads(render(outcome, fmt)), option=orjson.OPT_INDENT_2).decode())


@main.group()
def rules() -> None:
    """Rule files: lint, test and the full schema."""


_DIR_OPTION = click.option("--dir", "directory", default=None, type=click.Path(exists=True, file_okay=False),
                           help="Rule directory (default: CARTOX_RULES_DIR, else the shipped rules).")


def _rules_dir(directory: str | None) -> Path:
    """The directory to check, as an absolute path, announced first so the output says what was checked."""
    from service.resources import rules_dir

    path = (Path(directory) if directory else rules_dir()).resolve()
    click.echo(f"rules directory: {path}")
    return path


@rules.command("lint")
@_DIR_OPTION
def lint(directory: str | None) -> None:
    """Validate every rule file and case file against rules/schema and compile the rule set."""
    from service.rule_cases.cases import load_cases
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
@_DIR_OPTION
@click.option("-k", "keyword", default=None, help="Only cases whose name contains this text.")
def test(directory: str | None, keyword: str | None) -> None:
    """Run the named cases in rules/*.cases.yaml."""
    import jsonschema

    from service.rule_cases.cases import CaseFailure, load_cases, run_case
    from service.rules_engine.load import case_files

    path = _rules_dir(directory)
    passed = failed = 0
    for case_file in case_files(path):
        try:
            cases = load_cases(case_file, path / "schema")
        except (CartoxError, RulesError, ValueError, jsonschema.ValidationError) as exc:  # a case file that cannot be read fails, named
            failed += 1
            click.echo(f"FAIL {case_file.name}: {str(exc).splitlines()[0]}")
            continue
        for case in cases:
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


@rules.command("schema")
@click.option("--dir", "directory", default=None, type=click.Path(exists=True, file_okay=False),
              help="Rule directory whose schema/rule.schema.json to complete (default: the shipped rules).")
def schema(directory: str | None) -> None:
    """Print the full rule-file JSON Schema (criterion parameters from the condition-type registry)."""
    from service.resources import rules_dir
    from service.rules_engine.load import rule_schema

    click.echo(orjson.dumps(rule_schema(Path(directory) if directory else rules_dir()), option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.option("--url", "base_url", required=True, help="Base URL of the deployed service, as its clients call it.")
@click.option("--signing-key", type=click.File("rb"), default=None, help="PEM private key (EC P-384 or RSA) this client signs its JWTs with.")
@click.option("--issuer", default=None, help="iss (and sub) of the JWTs: the client id the service trusts with that key.")
@click.option("--key-id", default=None, help="kid of the JWT header (default: the key's RFC 7638 thumbprint).")
@click.option("--api-key", default=None, help="API key for POST /evaluate (CDS Hooks calls then need --signing-key too).")
@click.option("--api-key-header", default="X-API-Key", show_default=True, help="Header that carries --api-key.")
@click.option("-k", "keyword", default=None, help="Only cases whose name contains this text.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds per HTTP call.")
def check(base_url: str, signing_key: Any, issuer: str | None, key_id: str | None, api_key: str | None, api_key_header: str,
          keyword: str | None, timeout: float) -> None:
    """Run the shipped scenario pack (every rule case, as CDS Hooks requests and as Bundles) against a deployment.

    Expected answers are computed here with this shell's CARTOX_* configuration: use the deployment's. The
    evaluation time of each case is sent as asOf (a test-harness parameter the deployment must accept).
    """
    from service.deployment_check import CheckError, Credentials, Signer, results_lines, run_check, summary
    from service.resources import rules_dir

    if (signing_key is None) != (issuer is None):
        raise click.UsageError("--signing-key and --issuer go together")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        _configuration_error(str(exc))
    try:
        signer = Signer(signing_key.read(), issuer, key_id) if signing_key is not None and issuer else None
    except CheckError as exc:
        raise click.UsageError(str(exc)) from None

    def report(result: Any) -> None:
        for line in results_lines(result):
            click.echo(line)

    results = run_check(base_url, Credentials(signer, api_key, api_key_header), rules_dir(), settings, keyword, timeout, report)
    click.echo(summary(results, base_url))
    failed = any(result.status == "FAIL" for result in results)
    sys.exit(1 if failed or not any(result.status == "ok" for result in results[1:]) else 0)
