"""`make fuzz`: schemathesis against a live `nestdnn serve` on loopback: zero 5xx, and every
answer conforms to the served OpenAPI document.

Starts the daemon (small sample models, a temporary state dir) in a subprocess, registers a
few apps, then generates requests for every operation of the served OpenAPI schema with
schemathesis (positive and negative data). Operations on `/v1/apps/{app_id}` get, in turn, a
live app id with its own token, the admin token, another app's token, no token, or the
generated id; registering gets the registration token, the admin token, an app's token or
none; the schedule the admin token, an app's token or none; the Open Inference Protocol's
operations (/v2) the served model (and one of its versions) with an app's token, the admin
token, another app's token, no token, or the generated model and version; so the authorised
paths are reached too. Every answer is checked by schemathesis: no server error, a
documented status, a documented content type, a body that validates against the documented
schema, the documented headers, and negative data rejected with a 4xx. Fails on any 5xx, any
conformance failure, on a request left unanswered for 30 s (fuzzing stops there), on a 5xx
counted by the daemon's /metrics, or if afterwards the daemon does not answer /healthz or
cannot register and unregister an app. Prints the number of generated requests (at least
--min-requests, default 2000).

    .venv/bin/python benchmarks/fuzz_api.py [--examples 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import socket
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import ApiError, DaemonClient  # noqa: E402
from api.launcher import ServeProcess  # noqa: E402
from profiles.synthetic import synthetic_models_dir  # noqa: E402

log = logging.getLogger("fuzz_api")
ADMIN_TOKEN = "fuzz-admin-token"
REGISTRATION_TOKEN = "fuzz-registration-token"
RAW_TYPES = ["application/x-npy", "image/png", "image/jpeg"]
AUTH_MODES = ("own", "admin", "other", "none", "generated")
REQUEST_TIMEOUT_S = 30
V2_VERSIONS = 3  # descendants of the synthetic model
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


class Unanswered(Exception):
    """A request timed out or lost its connection: the daemon is stuck or dead."""


@dataclass
class Tally:
    """What the fuzzer sent and got."""

    requests: int = 0
    by_operation: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)


class Apps:
    """A pool of live apps and their tokens (re-registered when the fuzzer deletes one)."""

    def __init__(self, api: DaemonClient, model: str) -> None:
        self.api = api
        self.model = model
        self.tokens: dict[str, str] = {}
        self.top_up()

    def top_up(self, size: int = 3) -> None:
        """Make sure `size` apps are registered."""
        live = {app["id"] for app in self.api.apps()}
        self.tokens = {k: v for k, v in self.tokens.items() if k in live}
        while len(self.tokens) < size:
            app = self.api.register(self.model, target_latency_ms=200, name="fuzz")
            self.tokens[app.id] = app.token


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models: Path, state: Path, port: int, log_path: Path) -> ServeProcess:
    """Start `nestdnn serve` on loopback and wait for /healthz."""
    options = ["--memory-budget", "64MiB", "--max-body", "1MiB"]
    server = ServeProcess(
        models,
        state,
        port,
        log_path,
        admin_token=ADMIN_TOKEN,
        registration_token=REGISTRATION_TOKEN,
        extra_args=options,
    )
    return server.start()


def auth_for(mode: str, path: str, apps: Apps, rng: random.Random) -> tuple[dict, dict]:
    """Path parameters and headers for one of AUTH_MODES."""
    ids = sorted(apps.tokens)
    app_id = rng.choice(ids)
    other = apps.tokens[next(i for i in ids if i != app_id)]
    if "{model}" in path:  # /v2: the model in the path, the app by its token
        params = {"model": apps.model}
        if "{version}" in path:
            params["version"] = str(rng.randrange(V2_VERSIONS))
        v2_modes = {
            "own": (params, {"Authorization": f"Bearer {apps.tokens[app_id]}"}),
            "admin": (params, {"Authorization": f"Bearer {ADMIN_TOKEN}"}),
            "other": (params, {"Authorization": f"Bearer {other}"}),
            "none": (params, {}),
            "generated": ({}, {"Authorization": f"Bearer {apps.tokens[app_id]}"}),
        }
        return v2_modes[mode]
    if "{app_id}" not in path:  # registering, the schedule and the read-only views
        tokens = {"own": REGISTRATION_TOKEN, "admin": ADMIN_TOKEN, "other": other}
        token = tokens.get(mode, REGISTRATION_TOKEN if mode == "generated" else None)
        return {}, {"Authorization": f"Bearer {token}"} if token else {}
    by_mode = {
        "own": ({"app_id": app_id}, {"Authorization": f"Bearer {apps.tokens[app_id]}"}),
        "admin": ({"app_id": app_id}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        "other": ({"app_id": app_id}, {"Authorization": f"Bearer {other}"}),
        "none": ({"app_id": app_id}, {}),
        "generated": ({}, {"Authorization": f"Bearer {apps.tokens[app_id]}"}),
    }
    return by_mode[mode]


def fuzz_operation(
    operation: schemathesis.APIOperation,
    base_url: str,
    apps: Apps,
    tally: Tally,
    examples: int,
    seed: int,
) -> None:
    """Generate `examples` cases (positive and negative data, every auth mode) and send them."""
    label = f"{operation.method.upper()} {operation.path}"
    rng = random.Random(seed)
    session = requests.Session()
    strategies = [
        operation.as_strategy(generation_mode=mode)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    ]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.seed(seed)
    @given(case=st.one_of(strategies), mode=st.sampled_from(AUTH_MODES))
    def run(case: schemathesis.Case, mode: str) -> None:
        params, headers = auth_for(mode, operation.path, apps, rng)
        case.path_parameters = {**(case.path_parameters or {}), **params}
        try:
            response = case.call(
                base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S
            )
        except requests.RequestException as exc:
            body = case.body if isinstance(case.body, dict) else type(case.body).__name__
            tally.failures.append(f"{label} [{mode}] body={body}: no answer ({exc!r})")
            raise Unanswered(label) from None
        tally.requests += 1
        tally.by_operation[label] += 1
        tally.by_status[response.status_code] += 1
        if response.status_code >= 500:
            text = response.content[:300].decode(errors="replace")
            tally.failures.append(f"{label} [{mode}] -> {response.status_code}: {text}")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                tally.nonconforming.append(
                    f"{label} [{mode}] -> {response.status_code}: {failure.title}: "
                    f"{failure.message.strip()[:300]}"
                )
        if operation.method.upper() == "DELETE" and response.status_code == 204:
            apps.top_up()

    try:
        run()
    except Unanswered:
        log.error("%s: a request got no answer in %d s; fuzzing stops", label, REQUEST_TIMEOUT_S)
        raise
    finally:
        session.close()


def server_5xx(base_url: str) -> int:
    """5xx responses counted by the daemon itself."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    pattern = re.compile(r'^nestdnn_http_requests_total\{.*status="5\d\d".*\} ([0-9.e+]+)$')
    return int(sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line))))


def fuzz_all(base_url: str, tally: Tally, examples: int, seed: int) -> None:
    """Fuzz every operation of the served schema, in order; stops at an unanswered request."""
    with DaemonClient(base_url, registration_token=REGISTRATION_TOKEN) as api:
        apps = Apps(api, "fuzz")
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        for index, result in enumerate(schema.get_all_operations()):
            operation = result.ok()
            try:
                fuzz_operation(operation, base_url, apps, tally, examples, seed + index)
            except Unanswered:
                return
            log.info(
                "%s %s: %d requests so far",
                operation.method.upper(),
                operation.path,
                tally.requests,
            )


def health_problems(base_url: str) -> list[str]:
    """Whether the daemon still answers, counts no 5xx and still takes an app (within 30 s)."""
    try:
        with DaemonClient(
            base_url, timeout=REQUEST_TIMEOUT_S, registration_token=REGISTRATION_TOKEN
        ) as api:
            api.health()
            app = api.register("fuzz", target_latency_ms=100, name="after")
            api.unregister(app.id)
            counted = server_5xx(base_url)
    except (httpx.HTTPError, ApiError) as exc:
        return [f"the daemon is not healthy after fuzzing: {exc!r}"]
    return [f"the daemon counted {counted} 5xx responses"] if counted else []


def report(tally: Tally, problems: list[str], log_tail: str, min_requests: int) -> int:
    """Print the counts and the verdict; the exit code."""
    print(f"fuzz: {tally.requests} generated requests over {len(tally.by_operation)} operations")
    for label, count in sorted(tally.by_operation.items()):
        print(f"  {count:5d}  {label}")
    print("status counts: " + ", ".join(f"{s}: {n}" for s, n in sorted(tally.by_status.items())))
    server_errors = sum(n for s, n in tally.by_status.items() if s >= 500)
    print(f"5xx: {server_errors}; conformance failures: {len(tally.nonconforming)}")
    problems = tally.failures + tally.nonconforming + problems
    if tally.requests < min_requests:
        problems.append(f"only {tally.requests} requests (< {min_requests})")
    if problems:
        print(f"FAILED ({len(problems)}):\n  " + "\n  ".join(problems[:20]))
        print("daemon log tail:\n" + log_tail)
        return 1
    print(
        "OK: zero 5xx, every answer conforms to the OpenAPI document; afterwards the daemon "
        "answers /healthz and registers an app"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--examples", type=int, default=300, help="generated cases per operation (at most)"
    )
    parser.add_argument("--min-requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    schemathesis.serializer.alias(RAW_TYPES, "application/octet-stream")
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="nestdnn-fuzz-") as tmp:
        work = Path(tmp)
        models = synthetic_models_dir(work / "models", ["fuzz"])
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        proc = start_server(models, work / "state", port, work / "serve.log")
        try:
            fuzz_all(base_url, tally, args.examples, args.seed)
            problems = health_problems(base_url)
        finally:
            proc.stop()
        log_tail = (work / "serve.log").read_text()[-3000:]
    return report(tally, problems, log_tail, args.min_requests)


if __name__ == "__main__":
    sys.exit(main())
