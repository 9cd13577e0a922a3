"""The project is tested as an installed wheel: the package and its data come from site-packages.

rules/ and fhir_profiles/ are force-included into the wheel as service/rules and service/fhir_profiles
(pyproject.toml). The rule cases pytest collects from the checkout's rules/ only test what is shipped if
the installed copies are the same bytes; these tests check that, and build a wheel to check its content.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import service
from service.resources import profiles_dir, rules_dir

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = REPO if all((REPO / name).is_dir() for name in ("rules", "fhir_profiles", "service")) and (REPO / "pyproject.toml").is_file() else None

RULE_FILES = ("concepts.yaml", "crs_astct.yaml", "crs_management.yaml", "schema/rule.schema.json")
PROFILE_FILES = ("CodeSystem-cartox.json",)
DATA_DIRS = ("rules", "fhir_profiles")


@pytest.fixture(autouse=True)
def shipped_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """rules_dir() honours CARTOX_RULES_DIR (a site's own rule set); these tests are about the shipped one."""
    monkeypatch.delenv("CARTOX_RULES_DIR", raising=False)


def installed_dir(name: str) -> Path:
    return rules_dir() if name == "rules" else profiles_dir()


def data_files(directory: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, without Python byte-code caches."""
    return {
        path.relative_to(directory).as_posix(): path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}
    }


def test_service_is_imported_from_site_packages() -> None:
    if os.environ.get("CARTOX_EXPECT_INSTALLED") != "1":
        pytest.skip("CARTOX_EXPECT_INSTALLED=1 not set (CI sets it: the suite runs against the installed wheel)")
    location = Path(service.__file__).resolve()
    assert "site-packages" in location.parts, f"service imported from {location}, not from an installed package"
    if CHECKOUT is not None:
        assert not location.is_relative_to((CHECKOUT / "service").resolve()), f"service imported from the checkout: {location}"
    package = location.parent
    assert rules_dir().resolve() == package / "rules", f"rules read from {rules_dir()}, not from the installed package"
    assert profiles_dir().resolve() == package / "fhir_profiles", f"profiles read from {profiles_dir()}, not from the installed package"


def test_data_directories_hold_the_shipped_files() -> None:
    rules, profiles = rules_dir(), profiles_dir()
    assert rules.is_dir(), rules
    assert profiles.is_dir(), profiles
    missing = [f"{rules}/{name}" for name in RULE_FILES if not (rules / name).is_file()]
    missing += [f"{profiles}/{name}" for name in PROFILE_FILES if not (profiles / name).is_file()]
    assert not missing, f"missing: {missing}"


@pytest.mark.parametrize("name", DATA_DIRS)
def test_installed_data_are_the_checkout_bytes(name: str) -> None:
    if CHECKOUT is None:
        pytest.skip("no source checkout beside tests/ (rules/ and fhir_profiles/ not found)")
    checkout, installed = data_files(CHECKOUT / name), data_files(installed_dir(name))
    assert checkout, f"{CHECKOUT / name} is empty"
    missing = sorted(set(checkout) - set(installed))
    extra = sorted(set(installed) - set(checkout))
    different = sorted(rel for rel in set(checkout) & set(installed) if checkout[rel].read_bytes() != installed[rel].read_bytes())
    assert not (missing or extra or different), (
        f"installed {installed_dir(name)} differs from {CHECKOUT / name} (reinstall the project: pip install .): "
        f"missing {missing}, extra {extra}, different {different}"
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if CHECKOUT is None:
        pytest.skip("no source checkout beside tests/ to build a wheel from")
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out), str(CHECKOUT)]
    result = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    wheels = sorted(out.glob("cartox-*.whl"))
    assert len(wheels) == 1, f"expected one cartox wheel in {out}: {sorted(p.name for p in out.iterdir())}"
    return wheels[0]


def test_wheel_ships_rules_and_profiles_inside_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for required in ("service/rules/concepts.yaml", "service/rules/schema/rule.schema.json",
                         "service/fhir_profiles/CodeSystem-cartox.json", "service/app.py", "service/resources.py",
                         "service/security/cds_hooks_sandbox_jwks.json"):
            assert required in names, f"{wheel.name} lacks {required}"
        for name in DATA_DIRS:
            for rel, path in data_files(CHECKOUT / name).items():
                member = f"service/{name}/{rel}"
                assert member in names, f"{wheel.name} lacks {member}"
                assert archive.read(member) == path.read_bytes(), f"{member} in {wheel.name} differs from {path}"


def test_wheel_declares_the_cartox_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        entry_points = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points) == 1, f"{wheel.name}: entry_points.txt {entry_points}"
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points[0]).decode())
    assert parser.has_section("console_scripts"), entry_points[0]
    assert parser.get("console_scripts", "cartox", fallback=None) == "service.cli:main", dict(parser["console_scripts"])
