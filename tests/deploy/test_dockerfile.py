"""The Dockerfile, checked without docker, and the README's set-up command.

A small parser reads the Dockerfile's instructions. The build context is staged the way its COPY
instructions and .dockerignore say, the RUN's `pip install` is run into a fresh virtualenv, and the CMD
(`cartox serve`) and the HEALTHCHECK command are run from that virtualenv. The listen address is rewritten
to 127.0.0.1 and a free port: nothing here listens on or requests anything but the loopback address.
The same virtualenv then runs the README's `cartox serve`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
README = REPO / "README.md"

CONTAINER_PORT = 8080
STARTUP_TIMEOUT = 30.0  # seconds until /healthz answers 200
STOP_TIMEOUT = 10.0  # `docker stop` waits 10 s after SIGTERM before SIGKILL


# --------------------------------------------------------------------------------------------------
# Dockerfile parser
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY ...
    args: str  # the rest of the instruction, line continuations joined
    line: int  # where it starts in the Dockerfile


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. Handles comments, blank lines and backslash continuations (no heredocs)."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, as docker does
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, f"Dockerfile ends inside a line continuation (instruction at line {start})"
    return instructions


def exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of RUN/CMD/ENTRYPOINT/COPY arguments, or None for the shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"bad exec form: {args}"
    return value


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "ENV":
            continue
        tokens = shlex.split(ins.args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
            values[tokens[0]] = ins.args.split(None, 1)[1] if len(tokens) > 1 else ""
            continue
        for token in tokens:
            key, sep, value = token.partition("=")
            assert sep, f"line {ins.line}: cannot read ENV {ins.args!r}"
            values[key] = value
    return values


def healthcheck_parts(args: str) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK [--option=value ...] CMD command -> (options, argv)."""
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.+)", args, flags=re.IGNORECASE | re.DOTALL)
    assert match, f"cannot read HEALTHCHECK {args!r}"
    options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
    command = match.group(2).strip()
    argv = exec_form(command)
    return options, argv if argv is not None else ["/bin/sh", "-c", command]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert starts, "no FROM instruction"
    return instructions[starts[-1]:]


def last(instructions: list[Instruction], keyword: str) -> tuple[int, Instruction]:
    found = [(i, ins) for i, ins in enumerate(instructions) if ins.keyword == keyword]
    assert found, f"no {keyword} instruction in the Dockerfile"
    return found[-1]


@dataclass(frozen=True)
class PipInstall:
    index: int  # position of the RUN instruction
    options: list[str]  # pip options between `install` and the target
    target: str  # absolute path inside the image


def pip_install(instructions: list[Instruction]) -> PipInstall:
    """The RUN that installs the project: `pip install [options] <dir>` (the rest of the RUN is ignored)."""
    workdir = "/"
    for index, ins in enumerate(instructions):
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        if ins.keyword != "RUN" or "pip install" not in ins.args:
            continue
        argv = exec_form(ins.args)
        segments = [argv] if argv else [shlex.split(s) for s in re.split(r"&&|;", ins.args)]
        for tokens in segments:
            if "pip" in tokens and "install" in tokens:
                rest = tokens[tokens.index("install") + 1:]
                targets = [t for t in rest if not t.startswith("-")]
                assert len(targets) == 1, f"line {ins.line}: expected one thing to install, got {targets}"
                options = [t for t in rest if t.startswith("-")]
                return PipInstall(index, options, posixpath.normpath(posixpath.join(workdir, targets[0])))
    raise AssertionError("no RUN ... pip install ... in the Dockerfile")


# --------------------------------------------------------------------------------------------------
# Build context: COPY instructions + .dockerignore, staged into a directory standing for the image's /
# --------------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions (!) are not understood by this test's matcher"
        patterns.append(line.strip("/"))
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    """Roughly docker's rule: a path is excluded when it or one of its parent directories matches."""
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        for pattern in patterns:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and (fnmatch.fnmatchcase(prefix, pattern[3:]) or fnmatch.fnmatchcase(prefix, "*/" + pattern[3:])):
                return True
    return False


def copy_instructions(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, absolute destination) of every COPY/ADD from the build context, in order."""
    copies = []
    workdir = "/"
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        if ins.keyword not in {"COPY", "ADD"}:
            continue
        tokens = exec_form(ins.args) or shlex.split(ins.args)
        flags = [t for t in tokens if t.startswith("--")]
        assert not any(f.startswith("--from") for f in flags), "multi-stage COPY --from is not staged by this test"
        paths = [t for t in tokens if not t.startswith("--")]
        assert len(paths) >= 2, f"line {ins.line}: COPY needs a source and a destination"
        destination = paths[-1]
        absolute = posixpath.normpath(posixpath.join(workdir, destination)).rstrip("/") + ("/" if destination.endswith("/") else "")
        copies.append((paths[:-1], absolute))
    return copies


def stage_context(instructions: list[Instruction], rootfs: Path) -> None:
    patterns = dockerignore_patterns()
    for sources, destination in copy_instructions(instructions):
        into_dir = destination.endswith("/") or len(sources) > 1
        target = rootfs / destination.lstrip("/")
        for source in sources:
            name = source.strip("/").removeprefix("./")
            assert not ignored(name, patterns), f"COPY {source}: excluded by .dockerignore"
            path = REPO / name
            assert path.exists(), f"COPY {source}: not in the build context"
            if path.is_dir():  # docker copies a directory's contents
                for item in sorted(path.rglob("*")):
                    relative = item.relative_to(REPO).as_posix()
                    if item.is_file() and not ignored(relative, patterns):
                        copied = target / item.relative_to(path)
                        copied.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(item, copied)
            else:
                copied = target / path.name if into_dir else target
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copied)


# --------------------------------------------------------------------------------------------------
# Processes and HTTP (loopback only)
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str] | None = None, path_first: Path | None = None) -> dict[str, str]:
    """The test's environment without what would change what is imported or where gunicorn binds."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CARTOX_") and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GUNICORN_CMD_ARGS", "PYTHONSTARTUP"}}
    env.update(extra or {})
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    return env


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Server:
    """A server process in its own process group, output to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, port: int, log_path: Path) -> None:
        self.argv, self.port, self.log_path = argv, port, log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {' '.join(self.argv)} (last {lines} lines of {self.log_path}) ---\n" + "\n".join(text[-lines:])

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} before /healthz answered\n{self.log_tail()}")
            try:
                status, body = http("GET", f"{self.base_url}/healthz", timeout=2)
            except OSError as exc:
                last_error = repr(exc)
            else:
                if status == 200:
                    return json.loads(body)
                last_error = f"HTTP {status}: {body[:200]!r}"
            time.sleep(0.2)
        pytest.fail(f"/healthz not 200 within {timeout:.0f} s ({last_error})\n{self.log_tail()}")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """SIGTERM to the main process (what `docker stop` sends to PID 1); (exit code, seconds taken)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running {timeout:.0f} s after SIGTERM\n{self.log_tail()}")
        return code, time.monotonic() - started

    def kill(self) -> None:
        """Finalizer: stop the process and anything left in its process group, whatever happened."""
        try:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(timeout=STOP_TIMEOUT)
            self._signal_group(signal.SIGKILL)  # stray workers of a master that is gone
        finally:
            self._log.close()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers; every one is stopped at teardown, also when the test failed."""
    started: list[Server] = []

    def start(argv: list[str], env: dict[str, str], port: int, name: str) -> Server:
        run_dir = tmp_path / f"{name}-run"  # gunicorn >= 25.1 puts its control socket in $XDG_RUNTIME_DIR
        run_dir.mkdir(mode=0o700)
        env = {**env, "XDG_RUNTIME_DIR": str(run_dir)}
        server = Server(argv, env, cwd=tmp_path, port=port, log_path=tmp_path / f"{name}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


# --------------------------------------------------------------------------------------------------
# Fixtures: the parsed Dockerfile and a virtualenv made with the Dockerfile's install command
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} missing"
    return parse_dockerfile(DOCKERFILE.read_text())


@dataclass(frozen=True)
class Venv:
    path: Path
    seconds: float  # venv creation + pip install

    @property
    def bin(self) -> Path:
        return self.path / "bin"


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory, dockerfile: list[Instruction]) -> Venv:
    """Fresh virtualenv + the Dockerfile's `pip install` of a build context staged from its COPY lines."""
    started = time.monotonic()
    base = tmp_path_factory.mktemp("image")
    stage = final_stage(dockerfile)
    install = pip_install(stage)
    rootfs = base / "rootfs"
    stage_context(stage[:install.index], rootfs)
    context = rootfs / install.target.lstrip("/")
    assert (context / "pyproject.toml").is_file(), f"the Dockerfile installs {install.target}, which has no pyproject.toml"
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *install.options, str(context)]
    result = subprocess.run(command, cwd=base, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return Venv(venv, time.monotonic() - started)


# --------------------------------------------------------------------------------------------------
# A small bundle: CAR-T infusion on 2026-03-02, fever 38.4 °C on day 3 -> ASTCT CRS grade 1
# --------------------------------------------------------------------------------------------------

AS_OF = "2026-03-05T12:00:00+01:00"


def _observation(rid: str, code: str, when: str, **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when, **value}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


IMAGE_API_KEY = "image-test-api-key-0123456789"

SMALL_BUNDLE = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1965-04-02", "gender": "female"}},
        {"resource": {"resourceType": "MedicationAdministration", "id": "cart", "status": "completed",
                      "medicationCodeableConcept": {"text": "axicabtagene ciloleucel"},
                      "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-03-02T10:00:00+01:00"}},
        {"resource": _observation("t1", "8310-5", "2026-03-05T08:00:00+01:00", valueQuantity=_quantity(38.4, "Cel"))},
        {"resource": _observation("bp1", "85354-9", "2026-03-05T08:00:00+01:00", component=[
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": _quantity(118, "mm[Hg]")},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": _quantity(70, "mm[Hg]")},
        ])},
        {"resource": _observation("s1", "59408-5", "2026-03-05T08:00:00+01:00", valueQuantity=_quantity(97, "%"))},
    ],
}


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_dockerfile_declares_a_slim_non_root_image_with_healthcheck(dockerfile: list[Instruction]) -> None:
    stage = final_stage(dockerfile)
    assert stage[0].args.split()[0] == "python:3.11-slim", f"base image: {stage[0].args}"

    cmd_index, cmd = last(stage, "CMD")
    users = [(i, ins) for i, ins in enumerate(stage[:cmd_index]) if ins.keyword == "USER"]
    assert users, "no USER instruction before CMD: the server would run as root"
    user = users[-1][1].args.split(":")[0]
    assert user not in {"root", "0"}, f"USER {user} before CMD is root"
    created = [ins for ins in stage[:users[-1][0]] if ins.keyword == "RUN" and re.search(rf"\b(useradd|adduser)\b.*\b{re.escape(user)}\b", ins.args)]
    assert created or user.isdigit(), f"USER {user} is not created by a RUN useradd/adduser before it is used"

    assert env_values(stage).get("CARTOX_MODE") == "production", "the image must run in production mode (README Security)"

    exposed = [ins.args for ins in stage if ins.keyword == "EXPOSE"]
    assert any(str(CONTAINER_PORT) in re.split(r"[\s/]+", ports) for ports in exposed), f"EXPOSE {exposed}"

    # exec form: the server is PID 1 and gets docker stop's SIGTERM itself (a shell would not pass it on).
    # `cartox serve`: the same server configuration and configuration checks as outside the image.
    argv = exec_form(cmd.args)
    assert argv is not None, f"CMD should use the exec (JSON) form: {cmd.args}"
    assert [Path(argv[0]).name, argv[1]] == ["cartox", "serve"], f"CMD runs {argv}, expected cartox serve"
    assert listen_address(argv) == f"0.0.0.0:{CONTAINER_PORT}", f"the server should listen on all interfaces of the container: {argv}"

    _, healthcheck = last(stage, "HEALTHCHECK")
    options, check = healthcheck_parts(healthcheck.args)
    snippet = " ".join(check)
    assert "urllib" in snippet and "/healthz" in snippet, f"HEALTHCHECK should call /healthz with urllib: {check}"
    assert Path(check[0]).name.startswith("python") and check[1] == "-c", f"HEALTHCHECK should run python -c: {check}"
    assert f"127.0.0.1:{CONTAINER_PORT}/healthz" in check[2]
    assert set(options) <= {"interval", "timeout", "start-period", "start-interval", "retries"}, options

    install = pip_install(stage)
    assert install.index < cmd_index
    copied = set()  # where each COPY source lands in the image (a directory's contents go to the destination)
    for sources, destination in copy_instructions(stage[:install.index]):
        for source in sources:
            name = posixpath.basename(source.rstrip("/"))
            into_dir = destination.endswith("/") or len(sources) > 1
            copied.add(destination.rstrip("/") if (REPO / name).is_dir() or not into_dir else posixpath.join(destination, name))
    needed = {posixpath.join(install.target, name) for name in ("pyproject.toml", "README.md", "service", "rules", "fhir_profiles")}
    assert needed <= copied, f"pip installs {install.target} but the COPY lines do not put {sorted(needed - copied)} there"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    assert DOCKERIGNORE.is_file(), f"{DOCKERIGNORE} missing"
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", ".venv-test", "service/__pycache__", "service/http_api/__pycache__/app.cpython-311.pyc", ".pytest_cache"):
        assert ignored(path, patterns), f"{path} should be excluded from the build context"
    for path in ("pyproject.toml", "README.md", "service/app.py", "rules/concepts.yaml", "rules/schema/rule.schema.json",
                 "fhir_profiles/CodeSystem-cartox.json"):
        assert not ignored(path, patterns), f"{path} is needed by the image but excluded by .dockerignore"


def option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"`cartox serve` CMD without {name}: {argv}")


def listen_address(argv: list[str]) -> str:
    return f"{option(argv, '--host')}:{option(argv, '--port')}"


def rebind(argv: list[str], host: str, port: int) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        for name, value in (("--host", host), ("--port", str(port))):
            if arg == name:
                out[i + 1] = value
            elif arg.startswith(f"{name}="):
                out[i] = f"{name}={value}"
    assert listen_address(out) == f"{host}:{port}"
    return out


def image_env(stage: list[Instruction], venv: Venv) -> dict[str, str]:
    """The image's ENV, with any 0.0.0.0 made loopback (tests never listen on all interfaces)."""
    values = {k: ("127.0.0.1" if v == "0.0.0.0" else v) for k, v in env_values(stage).items()}
    return clean_env(values, path_first=venv.bin)


def test_image_install_cmd_and_healthcheck(dockerfile: list[Instruction], image_venv: Venv, launch: Callable[..., Server],
                                           tmp_path: Path) -> None:
    stage = final_stage(dockerfile)
    # production mode (the image's ENV) needs credentials to accept: an API key for /evaluate
    env = {**image_env(stage, image_venv), "CARTOX_API_KEYS": IMAGE_API_KEY, "CARTOX_AUDIT_KEY": "image-test-audit-key-0123456789abcdef"}

    # the package is imported from the install (as in the image), not from the checkout
    where = subprocess.run([str(image_venv.bin / "python"), "-c", "import service; print(service.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(image_venv.path.resolve()) and "site-packages" in Path(where).parts, where

    port = free_port()
    argv = exec_form(last(stage, "CMD")[1].args)
    assert argv is not None
    argv = rebind([str(image_venv.bin / argv[0]), *argv[1:]], "127.0.0.1", port)
    server = launch(argv, env, port, "image-cmd")
    health = server.wait_healthy()
    assert health["status"] == "ok" and health["rulesLoaded"] is True, health

    # HEALTHCHECK: the same command, pointed at this port; it must also fail when nothing answers
    _, check = healthcheck_parts(last(stage, "HEALTHCHECK")[1].args)
    assert check[1] == "-c"

    def run_check(check_port: int) -> subprocess.CompletedProcess[str]:
        snippet = check[2].replace(f"127.0.0.1:{CONTAINER_PORT}", f"127.0.0.1:{check_port}")
        return subprocess.run([str(image_venv.bin / "python"), "-c", snippet], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)

    healthy = run_check(port)
    assert healthy.returncode == 0, f"HEALTHCHECK failed against a running server:\n{healthy.stderr}\n{server.log_tail()}"
    assert run_check(free_port()).returncode != 0, "HEALTHCHECK passes with no server listening"

    status, body = http("POST", f"{server.base_url}/evaluate?asOf={urllib.parse.quote(AS_OF)}",
                        json.dumps(SMALL_BUNDLE).encode(), {"Content-Type": "application/fhir+json", "X-API-Key": IMAGE_API_KEY})
    assert status == 200, f"POST /evaluate: {status} {body[:500]!r}\n{server.log_tail()}"
    cards = json.loads(body)["cards"]
    crs = [c for c in cards if c.get("source", {}).get("topic", {}).get("code") == "crs-grade-astct"]
    assert crs, f"no CRS card in {json.dumps(cards)[:1000]}"
    assert "CRS grade 1" in crs[0]["summary"], crs[0]["summary"]

    code, seconds = server.terminate()
    assert code == 0, f"the server exited with {code} on SIGTERM\n{server.log_tail()}"
    assert seconds < STOP_TIMEOUT


def test_image_cmd_reports_a_configuration_error_in_one_line(dockerfile: list[Instruction], image_venv: Venv,
                                                             tmp_path: Path) -> None:
    """`docker run -e CARTOX_RULE_OVERRIDES=...` with a value outside the parameter's range: exit 2, one line."""
    stage = final_stage(dockerfile)
    env = {**image_env(stage, image_venv), "CARTOX_RULE_OVERRIDES": '{"crs-astct": {"fever_celsius": 45}}'}
    argv = exec_form(last(stage, "CMD")[1].args)
    assert argv is not None
    argv = rebind([str(image_venv.bin / argv[0]), *argv[1:]], "127.0.0.1", free_port())
    result = subprocess.run(argv, cwd=tmp_path, env={**env, "XDG_RUNTIME_DIR": str(tmp_path)}, capture_output=True,
                            text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and "CARTOX_RULE_OVERRIDES" in lines[0] and "fever_celsius" in lines[0], result.stderr[-2000:]


def readme_setup_command() -> str:
    text = README.read_text()
    section = text.split("## Set-up", 1)
    assert len(section) == 2, "README has no '## Set-up' section"
    match = re.search(r"```(?:sh|bash|console)?\n(.*?)```", section[1], flags=re.DOTALL)
    assert match, "no code block in the README's set-up section"
    return match.group(1).strip()


def test_readme_setup_serve(image_venv: Venv, launch: Callable[..., Server]) -> None:
    """README: `python3 -m venv .venv-run && .venv-run/bin/pip install . && .venv-run/bin/cartox serve`.

    The virtualenv above is that `pip install .` (of the image's build context); run its `cartox serve` on
    a free loopback port.
    """
    command = readme_setup_command()
    steps = [shlex.split(step) for step in command.split("&&")]
    assert any(step[-2:] == ["install", "."] and Path(step[0]).name == "pip" for step in steps), command
    serve = steps[-1]
    assert Path(serve[0]).name == "cartox" and serve[1] == "serve", command

    port = free_port()
    server = launch([str(image_venv.bin / "cartox"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    clean_env(path_first=image_venv.bin), port, "cartox-serve")
    health = server.wait_healthy()
    assert health["status"] == "ok", health

    status, body = http("GET", f"{server.base_url}/cds-services")
    assert status == 200, body[:500]
    services = json.loads(body)["services"]
    assert "car-t-toxicity" in [s["id"] for s in services], services

    code, seconds = server.terminate()
    assert seconds < STOP_TIMEOUT
    assert code == 0, f"cartox serve exited with {code} on SIGTERM\n{server.log_tail()}"
