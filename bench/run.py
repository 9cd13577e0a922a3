#!/usr/bin/env python3
"""Performance benchmark of the cartox evaluation pipeline.

In process (always): for each generated Bundle variant (full ~4.5 MB, small
~110 KB, pht100 ~5.6 MB: the same patient followed to day 100 through a prolonged
hematologic toxicity course, evaluated at day 100) and each response format ("cards", "fhir"), time
``service.pipeline.evaluate_bytes`` against the floor of any JSON service,
``orjson.loads`` of the same bytes.  Both are timed back to back in every round
so that drift (CPU frequency, other load) hits both alike; the figure of merit
is the ratio median(evaluate) / median(orjson.loads).

Over HTTP (``--http``): start ``cartox serve`` on 127.0.0.1 and a free port,
POST each variant sequentially to ``/evaluate`` and report latency percentiles.

HTTP ratios (``--http-ratio``): the 30-day call (``full``, cards) against the bare
endpoint ``POST /bench/loads`` (``orjson.loads`` of the same body, nothing else)
under the same server (CARTOX_BENCH_ENDPOINTS=true), requests interleaved; with
``--secured-env`` / ``--signing-key``, also the same call on a second server with
JWT and audit on (a fresh token per request, minted outside the timed region)
against the first.

Usage::

    python bench/run.py [--rounds 15] [--json out.json]
    python bench/run.py --http [--requests 200]
    python bench/run.py --http-ratio [--ratio-requests 100]
    python bench/run.py --http-ratio --secured-env CARTOX_X=1 --signing-key key.pem --issuer ISS
    python bench/run.py --loads-only      # orjson baseline only, no service needed
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VARIANTS = ("full", "small", "pht100")
FORMATS = ("cards", "fhir")
MIN_ROUNDS = 5

Evaluate = Callable[..., bytes]


class BenchError(RuntimeError):
    """A precondition of the benchmark is not met (reported without traceback)."""


# --------------------------------------------------------------------------
# Loading the generator and the service
# --------------------------------------------------------------------------
def load_generator() -> ModuleType:
    """Import bench/generate.py by path (bench/ is not a package)."""
    name = "cartox_bench_generate"
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_pipeline() -> ModuleType:
    """Import ``service.pipeline``, preferring an installed ``service`` package.

    Falls back to the working tree (``python bench/run.py`` puts bench/, not the
    repository root, on sys.path).  Only a missing ``service``/``service.pipeline``
    module is turned into a BenchError; any other ImportError is a real bug in
    the service and propagates.
    """
    for attempt in range(2):
        try:
            # import_module (unlike "from service import pipeline") reports a
            # missing submodule as ModuleNotFoundError with exc.name set.
            pipeline = importlib.import_module("service.pipeline")
        except ModuleNotFoundError as exc:
            if exc.name not in ("service", "service.pipeline"):
                raise
            if attempt == 0 and str(REPO_ROOT) not in sys.path:
                sys.path.insert(0, str(REPO_ROOT))
                sys.modules.pop("service", None)
                continue
            raise BenchError(
                f"service.pipeline is not available ({exc}). The benchmark needs "
                "service.pipeline.evaluate_bytes() and default_engine(); run with "
                "--loads-only to time only the orjson.loads baseline."
            ) from None
        missing = [n for n in ("evaluate_bytes", "default_engine") if not hasattr(pipeline, n)]
        if missing:
            raise BenchError(f"service.pipeline ({pipeline.__file__}) lacks {', '.join(missing)}")
        return pipeline
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------
def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples p99 is the maximum)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    ms = [s / 1e6 for s in samples_ns]
    return {
        "median_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 99),
        "min_ms": min(ms),
        "n": len(ms),
    }


# --------------------------------------------------------------------------
# In-process benchmark
# --------------------------------------------------------------------------
def time_loads(body: bytes) -> int:
    # Binding and deleting the result keeps the deallocation of the decoded tree
    # inside the timed region: evaluate_bytes pays for that too before returning.
    t0 = time.perf_counter_ns()
    doc = orjson.loads(body)
    del doc
    return time.perf_counter_ns() - t0


def bench_inprocess(
    body: bytes,
    *,
    fmt: str | None,
    as_of: dt.datetime,
    evaluate: Evaluate | None,
    engine: Any,
    rounds: int,
    warmup: int,
) -> dict[str, Any]:
    """Interleaved rounds of orjson.loads and evaluate_bytes on the same bytes.

    ``evaluate=None`` (``--loads-only``) times the baseline alone.
    """

    def run_evaluate() -> bytes:
        assert evaluate is not None
        return evaluate(body, as_of=as_of, response_format=fmt, engine=engine)

    for _ in range(warmup):
        time_loads(body)
        if evaluate is not None:
            run_evaluate()

    loads_ns: list[int] = []
    eval_ns: list[int] = []
    out: object = None
    for _ in range(rounds):
        # Start each round from a comparable heap; GC stays enabled inside the
        # timed region because a running service pays for it as well.
        gc.collect()
        loads_ns.append(time_loads(body))
        if evaluate is not None:
            t0 = time.perf_counter_ns()
            out = run_evaluate()
            eval_ns.append(time.perf_counter_ns() - t0)

    result: dict[str, Any] = {"format": fmt, "loads": summarize_ns(loads_ns)}
    if evaluate is not None:
        if not isinstance(out, bytes | bytearray):
            raise BenchError(f"evaluate_bytes returned {type(out).__name__}, expected bytes")
        result["evaluate"] = summarize_ns(eval_ns)
        result["ratio_median"] = result["evaluate"]["median_ms"] / result["loads"]["median_ms"]
        result["response_bytes"] = len(out)
    return result


# --------------------------------------------------------------------------
# HTTP benchmark
# --------------------------------------------------------------------------
HOST = "127.0.0.1"  # never anything else


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def find_cartox() -> Path:
    """The ``cartox`` console script of the interpreter running the bench.

    sys.executable is deliberately not resolved: in a venv it is a symlink and
    the scripts live next to the link, not next to the base interpreter.
    """
    exe = Path(sys.executable).parent / ("cartox.exe" if os.name == "nt" else "cartox")
    if not exe.exists():
        raise BenchError(f"console script not found at {exe}; install the project in this environment "
                         "(pip install -e .)")
    return exe


class Server:
    """``cartox serve`` as a child process, always stopped on exit."""

    def __init__(self, startup_timeout: float, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        # "{base_url}" in a value is this server's URL (e.g. CARTOX_EXTERNAL_BASE_URLS, the aud of the JWTs); each
        # server keeps its database in a directory of its own
        self.data_dir = tempfile.TemporaryDirectory(prefix="cartox-bench-data-")
        self.env = {"CARTOX_DATA_DIR": self.data_dir.name,
                    **{name: value.replace("{base_url}", self.base_url) for name, value in (env or {}).items()}}
        self.startup_timeout = startup_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="cartox-bench-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        import requests

        cmd = [str(find_cartox()), "serve", "--host", HOST, "--port", str(self.port)]
        # Own session: the server (and any workers it forks) form one process
        # group that we can clean up without touching anything else.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        with requests.Session() as s:
            s.trust_env = False  # ignore *_PROXY variables: talk to 127.0.0.1 directly
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"cartox serve exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if s.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"/healthz not 200 after {self.startup_timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group (start_new_session)
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def bench_http(server: Server, body: bytes, *, as_of: dt.datetime, requests_n: int,
               budget_s: float, warmup: int) -> dict[str, Any]:
    """Sequential POST /evaluate requests; stops at ``requests_n`` or ``budget_s``."""
    import requests

    url = f"{server.base_url}/evaluate"
    params = {"asOf": as_of.isoformat()}  # requests percent-encodes the "+" of the offset
    headers = {"Content-Type": "application/fhir+json"}
    latencies_ns: list[int] = []
    errors: list[str] = []
    with requests.Session() as s:
        s.trust_env = False
        for _ in range(warmup):
            s.post(url, params=params, data=body, headers=headers, timeout=60)
        deadline = time.monotonic() + budget_s
        for _ in range(requests_n):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter_ns()
            resp = s.post(url, params=params, data=body, headers=headers, timeout=60)
            latencies_ns.append(time.perf_counter_ns() - t0)
            if resp.status_code != 200:
                errors.append(f"{resp.status_code}: {resp.text[:200]}")
    if not latencies_ns:
        raise BenchError("no HTTP request completed within the time budget")
    ms = [n / 1e6 for n in latencies_ns]
    return {
        "requests": len(ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 99),
        "min_ms": min(ms),
        "response_bytes": len(resp.content),
    }


# --------------------------------------------------------------------------
# HTTP ratios: the 30-day call against the bare endpoint, and security on/off
# --------------------------------------------------------------------------
BENCH_ENV = {"CARTOX_BENCH_ENDPOINTS": "true"}
# the plain run: development mode (no JWT) and no audit; --secured-env switches them on for the second server
PLAIN_ENV = {**BENCH_ENV, "CARTOX_AUDIT": "false"}
TOKEN_LIFETIME_S = 60


class TokenMinter:
    """A fresh JWT per request (jti cannot repeat), signed as a CDS Client does (service.deployment_check)."""

    def __init__(self, key_path: str, issuer: str) -> None:
        load_pipeline()  # puts the working tree's `service` on sys.path when it is not installed
        from service.deployment_check import Signer

        self.signer = Signer(Path(key_path).read_bytes(), issuer)

    def headers(self, url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signer.token(url)}"}


def timed_post(session: Any, url: str, params: dict[str, str], body: bytes, headers: dict[str, str]) -> tuple[int, int]:
    t0 = time.perf_counter_ns()
    resp = session.post(url, params=params, data=body, headers=headers, timeout=120)
    elapsed = time.perf_counter_ns() - t0
    return elapsed, resp.status_code


def latency_summary(samples_ns: Sequence[int], statuses: Sequence[int]) -> dict[str, Any]:
    ms = [n / 1e6 for n in samples_ns]
    bad = [code for code in statuses if code != 200]
    return {"requests": len(ms), "errors": len(bad), "first_error": bad[0] if bad else None,
            "p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99), "min_ms": min(ms)}


def bench_http_interleaved(targets: dict[str, tuple[Server, TokenMinter | None]], body: bytes, *, as_of: dt.datetime,
                           requests_n: int, warmup: int) -> dict[str, dict[str, Any]]:
    """POST /evaluate (cards) and POST /bench/loads of the same bytes to every server (one keep-alive session
    each), interleaved round by round, the first call of a round rotating: every endpoint meets the same machine
    conditions, so the ratios between servers are as fair as those within one."""
    import requests

    params = {"asOf": as_of.isoformat()}
    base_headers = {"Content-Type": "application/fhir+json"}
    calls = [(name, endpoint, f"{server.base_url}{path}", tokens)
             for name, (server, tokens) in targets.items()
             for endpoint, path in (("evaluate", "/evaluate"), ("loads", "/bench/loads"))]
    samples: dict[tuple[str, str], list[int]] = {(name, endpoint): [] for name, endpoint, _, _ in calls}
    statuses: dict[tuple[str, str], list[int]] = {key: [] for key in samples}
    sessions = {name: requests.Session() for name in targets}
    try:
        for session in sessions.values():
            session.trust_env = False
        for round_index in range(warmup + requests_n):
            start = round_index % len(calls)
            for name, endpoint, url, tokens in calls[start:] + calls[:start]:
                headers = {**base_headers, **(tokens.headers(url) if tokens and endpoint == "evaluate" else {})}
                elapsed, status = timed_post(sessions[name], url, params if endpoint == "evaluate" else {}, body, headers)
                if round_index >= warmup:
                    samples[(name, endpoint)].append(elapsed)
                    statuses[(name, endpoint)].append(status)
    finally:
        for session in sessions.values():
            session.close()
    report: dict[str, dict[str, Any]] = {}
    for name in targets:
        evaluate = latency_summary(samples[(name, "evaluate")], statuses[(name, "evaluate")])
        loads = latency_summary(samples[(name, "loads")], statuses[(name, "loads")])
        report[name] = {"evaluate": evaluate, "loads": loads,
                        "ratio_p50": evaluate["p50_ms"] / loads["p50_ms"], "ratio_p99": evaluate["p99_ms"] / loads["p99_ms"]}
    return report


def parse_env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BenchError(f"--secured-env expects NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def run_http_ratio(args: argparse.Namespace, body: bytes, as_of: dt.datetime) -> dict[str, Any]:
    """Plain server: evaluate vs bare loads. Secured server (when asked): the same, with JWT and audit on."""
    report: dict[str, Any] = {"bytes": len(body), "requests": args.ratio_requests}
    secured = bool(args.secured_env or args.signing_key)
    tokens = TokenMinter(args.signing_key, args.issuer) if args.signing_key else None
    with contextlib.ExitStack() as servers:
        targets = {"plain": (servers.enter_context(Server(args.startup_timeout, PLAIN_ENV)), None)}
        if secured:  # both servers up at once: their calls interleave
            secured_env = {**BENCH_ENV, **parse_env_pairs(args.secured_env)}
            targets["secured"] = (servers.enter_context(Server(args.startup_timeout, secured_env)), tokens)
        report.update(bench_http_interleaved(targets, body, as_of=as_of, requests_n=args.ratio_requests, warmup=args.warmup))
    if secured:
        plain, secured_run = report["plain"]["evaluate"], report["secured"]["evaluate"]
        report["secured_over_plain_p50"] = secured_run["p50_ms"] / plain["p50_ms"]
        report["secured_over_plain_p99"] = secured_run["p99_ms"] / plain["p99_ms"]
    return report


def print_ratio_report(ratio: dict[str, Any]) -> None:
    print(f"HTTP, 30-day call (full, {ratio['bytes']:,} bytes, cards) vs bare orjson.loads endpoint, "
          f"{ratio['requests']} interleaved requests each, sequential, {HOST}")
    print(f"{'server':8} {'endpoint':13} | {'errors':>6} | {'p50 ms':>9} {'p99 ms':>9} {'min ms':>9}")
    for server_name in ("plain", "secured"):
        if server_name not in ratio:
            continue
        row = ratio[server_name]
        for name, label in (("evaluate", "/evaluate"), ("loads", "/bench/loads")):
            stats = row[name]
            print(f"{server_name:8} {label:13} | {stats['errors']:>6} | {stats['p50_ms']:9.3f} {stats['p99_ms']:9.3f} "
                  f"{stats['min_ms']:9.3f}")
        print(f"{server_name:8} evaluate/loads: p50 {row['ratio_p50']:.2f}x  p99 {row['ratio_p99']:.2f}x")
    if "secured_over_plain_p50" in ratio:
        print(f"JWT and audit on / off (/evaluate): p50 {ratio['secured_over_plain_p50']:.2f}x  "
              f"p99 {ratio['secured_over_plain_p99']:.2f}x")


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------
def fmt_stats(s: dict[str, float]) -> str:
    return f"{s['median_ms']:9.3f} {s['p99_ms']:9.3f} {s['min_ms']:9.3f}"


def print_report(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(f"cartox bench  python {meta['python']}  orjson {meta['orjson']}  seed {meta['seed']}  "
          f"as_of {meta['as_of']}  rounds {meta['rounds']} (warmup {meta['warmup']})")
    if meta.get("engine_load_ms") is not None:
        print(f"default_engine() loaded in {meta['engine_load_ms']:.1f} ms")
    print()
    head = f"{'variant':7} {'bytes':>10} {'format':6} | {'loads med':>9} {'p99':>9} {'min':>9}"
    if not meta["loads_only"]:
        head += f" | {'eval med':>9} {'p99':>9} {'min':>9} | {'ratio':>7} {'resp bytes':>10}"
    print(head + "   (ms)")
    print("-" * len(head))
    for row in report["inprocess"]:
        line = f"{row['variant']:7} {row['bytes']:>10,} {row['format'] or '-':6} | {fmt_stats(row['loads'])}"
        if "evaluate" in row:
            line += (f" | {fmt_stats(row['evaluate'])} | {row['ratio_median']:6.1f}x"
                     f" {row['response_bytes']:>10,}")
        print(line)
    if report.get("http"):
        print()
        print(f"HTTP POST /evaluate (sequential, {HOST})")
        print(f"{'variant':7} {'bytes':>10} | {'requests':>8} {'errors':>6} | {'p50 ms':>9} {'p99 ms':>9} "
              f"{'min ms':>9}")
        for row in report["http"]:
            print(f"{row['variant']:7} {row['bytes']:>10,} | {row['requests']:>8} {row['errors']:>6} | "
                  f"{row['p50_ms']:9.3f} {row['p99_ms']:9.3f} {row['min_ms']:9.3f}")
            if row["first_error"]:
                print(f"        first error: {row['first_error']}")


# --------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cartox performance benchmark")
    p.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    p.add_argument("--rounds", type=int, default=15, help=f"timed rounds per case (>= {MIN_ROUNDS}, default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds per case (default 3)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default full,small,pht100)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated (default cards,fhir)")
    p.add_argument("--loads-only", action="store_true", help="time only orjson.loads (no service needed)")
    p.add_argument("--http", action="store_true", help="also benchmark `cartox serve` over HTTP")
    p.add_argument("--requests", type=int, default=200, help="HTTP requests per variant (default 200)")
    p.add_argument("--http-budget", type=float, default=120.0,
                   help="total seconds for all HTTP requests, split evenly across variants (default 120)")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to wait for /healthz")
    p.add_argument("--http-ratio", action="store_true",
                   help="HTTP only: the 30-day call vs the bare orjson.loads endpoint (and security on vs off)")
    p.add_argument("--ratio-requests", type=int, default=100, help="timed requests per endpoint (default 100)")
    p.add_argument("--secured-env", action="append", default=[], metavar="NAME=VALUE",
                   help="server settings of the 'JWT and audit on' run (repeatable); adds that run")
    p.add_argument("--signing-key", metavar="PEM", help="private key to sign a JWT per request of the secured run")
    p.add_argument("--issuer", help="iss of those JWTs (with --signing-key)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.rounds < MIN_ROUNDS:
        p.error(f"--rounds must be >= {MIN_ROUNDS}")
    args.variants = [v for v in args.variants.split(",") if v]
    args.formats = [f for f in args.formats.split(",") if f]
    if not set(args.variants) <= set(VARIANTS):
        p.error(f"--variants must be among {VARIANTS}")
    if not set(args.formats) <= set(FORMATS):
        p.error(f"--formats must be among {FORMATS}")
    if bool(args.signing_key) != bool(args.issuer):
        p.error("--signing-key and --issuer go together")
    if args.ratio_requests < 1:
        p.error("--ratio-requests must be positive")
    if args.requests < 1 or args.http_budget <= 0 or args.warmup < 0:
        p.error("--requests and --http-budget must be positive, --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gen = load_generator()
    as_of: dt.datetime = gen.AS_OF
    # each variant is evaluated at its own time: pht100 at day 100, the others on day 5 during the CRS
    as_of_of = {v: gen.AS_OF_PHT if v == "pht100" else as_of for v in args.variants}
    # Generate and serialize once; every timed call sees the very same bytes.
    if args.http_ratio:
        try:
            ratio = run_http_ratio(args, orjson.dumps(gen.generate_bundle(args.seed, "full")), as_of)
        except BenchError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
        print_ratio_report(ratio)
        if args.json:
            Path(args.json).write_text(json.dumps({"http_ratio": ratio}, indent=2) + "\n")
            print(f"\nwrote {args.json}")
        return 0
    bodies = {v: orjson.dumps(gen.generate_bundle(args.seed, v)) for v in args.variants}

    evaluate: Evaluate | None = None
    engine: Any = None
    engine_load_ms: float | None = None
    service_file: str | None = None
    try:
        if not args.loads_only:
            pipeline = load_pipeline()
            service_file = pipeline.__file__
            t0 = time.perf_counter_ns()
            engine = pipeline.default_engine()
            engine_load_ms = (time.perf_counter_ns() - t0) / 1e6
            evaluate = pipeline.evaluate_bytes

        report: dict[str, Any] = {
            "meta": {
                "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "orjson": orjson.__version__,
                "service_pipeline": service_file,
                "seed": args.seed,
                "as_of": as_of.isoformat(),
                "rounds": args.rounds,
                "warmup": args.warmup,
                "loads_only": args.loads_only,
                "engine_load_ms": engine_load_ms,
            },
            "inprocess": [],
            "http": [],
        }
        formats: list[str | None] = [None] if args.loads_only else list(args.formats)
        for variant, body in bodies.items():
            for fmt in formats:
                row = bench_inprocess(body, fmt=fmt, as_of=as_of_of[variant], evaluate=evaluate, engine=engine,
                                      rounds=args.rounds, warmup=args.warmup)
                report["inprocess"].append({"variant": variant, "bytes": len(body), **row})

        if args.http:
            per_variant = args.http_budget / len(bodies)
            with Server(args.startup_timeout) as server:
                for variant, body in bodies.items():
                    row = bench_http(server, body, as_of=as_of_of[variant], requests_n=args.requests,
                                     budget_s=per_variant, warmup=min(args.warmup, 3))
                    report["http"].append({"variant": variant, "bytes": len(body), **row})
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2

    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
