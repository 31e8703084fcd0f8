"""Issue 17, the API side: every bad input is a 4xx problem (RFC 9457), limits that fit the
device, and the registration policy. One regression test (or more) per finding, 5 to 12,
named after it; the live-daemon tests run `nestdnn serve` under a low descriptor limit."""

from __future__ import annotations

import io
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.auth import ADMIN_TOKEN_ENV, REGISTRATION_TOKEN_ENV
from api.client import npy_bytes
from api.daemon import ApiSettings
from api.problems import PROBLEM_MEDIA_TYPE
from nestdnn.errors import NestError
from profiles.schema import load_profile
from profiles.synthetic import synthetic_models_dir
from scheduler.daemon import AppSpec, ModelCatalogue, Runtime, RuntimeSettings
from scheduler.daemon.errors import BadModelOutput, ModelUnavailable

ADMIN = "hardening-admin-token"
REGISTRAR = "hardening-registration-token"
BUDGET = 64 << 20
NESTED = "[" * 100_000


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A servable 1x16x16 model, and a pair whose profile is nested 100,000 deep."""
    root = tmp_path_factory.mktemp("hardening-models")
    synthetic_models_dir(root, ["alpha"])
    (root / "deep.nest").write_bytes((root / "alpha.nest").read_bytes())
    (root / "deep.profile.json").write_text(NESTED)
    return root


@pytest.fixture(autouse=True)
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    monkeypatch.setenv(REGISTRATION_TOKEN_ENV, REGISTRAR)


def make_client(models_dir: Path, state: Path, **api: object) -> TestClient:
    runtime = Runtime(
        ModelCatalogue.load(models_dir),
        RuntimeSettings(memory_budget_bytes=BUDGET, state_dir=state),
    )
    app = create_app(runtime, ApiSettings(state_dir=state, **api))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://localhost")


@pytest.fixture
def client(models_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(models_dir, tmp_path / "state") as test_client:
        yield test_client


@pytest.fixture
def open_client(models_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(models_dir, tmp_path / "state", registration="open") as test_client:
        yield test_client


def register(client: TestClient, token: str | None = REGISTRAR, **fields: object) -> dict:
    body = {"model": "alpha", "target_latency_ms": 1000, **fields}
    response = client.post("/v1/apps", json=body, headers=bearer(token) if token else {})
    assert response.status_code == 201, response.text
    return response.json()


def infer(client: TestClient, app: dict, body: bytes, kind: str) -> httpx.Response:
    headers = {"content-type": kind, **bearer(app["token"])}
    return client.post(f"/v1/apps/{app['id']}/infer", content=body, headers=headers)


def strict_json(text: str) -> object:
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in the answer")

    return json.loads(text, parse_constant=refuse)


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    """The answer is an RFC 9457 problem of this status (and kind), with a string detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = strict_json(response.text)
    assert isinstance(body, dict)
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status and isinstance(body["detail"], str) and body["detail"]
    if kind is not None:
        assert body["type"] == f"urn:nestdnn:problem:{kind}"
    return body


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 4)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------ 5, 6: hostile frames


@pytest.mark.parametrize("size", [30_000, 4096])
def test_5_png_decompression_bomb_is_422(client: TestClient, size: int) -> None:
    app = register(client)
    body = assert_problem(infer(client, app, png_claiming(size, size), "image/png"), 422,
                          "bad-frame")
    assert "pixels" in body["detail"]


@pytest.mark.parametrize(
    ("descr", "shape", "data"),
    [("<f4", "(-1, -256)", b"\0" * 1024), ("<f4", "(4611686018427387904, 0)", b""),
     (("<f4", (16, 16)), "(1,)", b"\0" * 1024), ([("a", "<f4", (2,))], "(2,)", b"\0" * 16)],
)
def test_6_npy_headers_with_bad_dimensions_or_dtypes_are_422(
    client: TestClient, descr: object, shape: str, data: bytes
) -> None:
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data
    assert_problem(infer(client, register(client), body, "application/x-npy"), 422, "bad-frame")


# ------------------------------------------------------------------ 7, 8: JSON numbers


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_7_nan_and_infinity_in_json_bodies_are_422_problems(
    open_client: TestClient, constant: str
) -> None:
    """The 422 answer used to echo the NaN and fail to render (500), also for the
    unauthenticated register."""
    client = open_client
    app = register(client, token=None)
    json_headers = {"content-type": "application/json"}
    requests = [
        ("POST", "/v1/apps", {}, f'{{"model": "alpha", "fps": {constant}}}'),
        ("POST", "/v1/apps", {}, f'{{"model": {constant}, "fps": 30}}'),
        ("POST", "/v1/apps", {}, f'{{"model": "alpha", "fps": 30, "colour": {constant}}}'),
        ("PATCH", f"/v1/apps/{app['id']}", bearer(app["token"]), f'{{"priority": {constant}}}'),
        ("PUT", "/v1/schedule", bearer(ADMIN), f'{{"alpha": {constant}}}'),
        ("POST", f"/v1/apps/{app['id']}/infer", bearer(app["token"]),
         f'{{"frame": [[{constant}, 1], [2, 3]]}}'),
    ]
    for method, path, headers, body in requests:
        answer = client.request(method, path, content=body, headers={**json_headers, **headers})
        problem = assert_problem(answer, 422)  # strict JSON: no NaN or Infinity echoed
        assert problem["type"] in ("urn:nestdnn:problem:invalid-request",
                                   "urn:nestdnn:problem:bad-frame")


@pytest.mark.parametrize(
    "fields",
    [{"target_latency_ms": 1e-305}, {"target_latency_ms": 0.01}, {"target_latency_ms": 1e10},
     {"fps": 1e-300}, {"fps": 1e5}, {"fps": 30, "priority": 1e-300},
     {"fps": 30, "priority": 1e4}],
)
def test_8_targets_and_priorities_outside_the_documented_bounds_are_422(
    client: TestClient, fields: dict
) -> None:
    """target_latency_ms 1e-305 used to be accepted and overflow the cost model (500s)."""
    answer = client.post("/v1/apps", json={"model": "alpha", **fields}, headers=bearer(REGISTRAR))
    body = assert_problem(answer, 422, "invalid-request")
    assert body["errors"] and body["errors"][0]["loc"][0] == "body"
    app = register(client)
    patch = client.patch(f"/v1/apps/{app['id']}", json=fields, headers=bearer(app["token"]))
    assert_problem(patch, 422, "invalid-request")


def test_8_the_bounds_themselves_are_served(client: TestClient) -> None:
    extremes = [{"target_latency_ms": 0.1, "priority": 1000}, {"fps": 1e4, "priority": 0.001},
                {"target_latency_ms": 3_600_000}, {"fps": 0.001}]
    for fields in extremes:
        app = register(client, **fields)
        frame = np.zeros((1, 16, 16), np.float32)
        assert infer(client, app, npy_bytes(frame), "application/x-npy").status_code == 200
    assert client.get("/v1/schedule").json()["feasible"] is True


def test_8_the_runtime_api_refuses_the_same_values() -> None:
    for fields in [{"target_latency_s": 1e-308}, {"fps": float("inf")}, {"fps": 30, "priority": 0}]:
        with pytest.raises(NestError, match="must lie in"):
            AppSpec(model="alpha", **fields)


# ------------------------------------------------------------------ 9: registration policy


def test_9_registration_needs_the_registration_or_admin_token_by_default(
    client: TestClient,
) -> None:
    body = {"model": "alpha", "fps": 30}
    missing = client.post("/v1/apps", json=body)
    assert "registration token" in assert_problem(missing, 401)["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_problem(client.post("/v1/apps", json=body, headers=bearer("guess")), 403)
    app = register(client)
    assert_problem(client.post("/v1/apps", json=body, headers=bearer(app["token"])), 403)
    assert register(client, token=ADMIN, priority=1000)["priority"] == 1000
    assert register(client, token=REGISTRAR, priority=50)["priority"] == 50
    operation = client.get("/openapi.json").json()["paths"]["/v1/apps"]["post"]
    assert operation["security"] == [{"RegistrationToken": []}]


def test_9_open_registration_caps_the_priority_of_callers_without_a_token(
    open_client: TestClient,
) -> None:
    """An unauthenticated app claimed priority 1000 and took an honest app's share from 1.0
    to 0.01."""
    client = open_client
    honest = register(client, token=None)
    greedy = client.post("/v1/apps", json={"model": "alpha", "fps": 30, "priority": 1000})
    assert "priority 1000 is above 1" in assert_problem(greedy, 403, "priority-above-cap")["detail"]
    raise_own = client.patch(f"/v1/apps/{honest['id']}", json={"priority": 5},
                             headers=bearer(honest["token"]))
    assert_problem(raise_own, 403, "priority-above-cap")
    assert register(client, token=REGISTRAR, priority=5)["priority"] == 5
    admin = client.patch(f"/v1/apps/{honest['id']}", json={"priority": 5}, headers=bearer(ADMIN))
    assert admin.status_code == 200 and admin.json()["priority"] == 5
    lower = client.patch(f"/v1/apps/{honest['id']}", json={"priority": 0.5},
                         headers=bearer(honest["token"]))
    assert lower.status_code == 200
    assert_problem(client.post("/v1/apps", json={"model": "alpha", "fps": 1},
                               headers=bearer("guess")), 403)
    operation = client.get("/openapi.json").json()["paths"]["/v1/apps"]["post"]
    assert {} in operation["security"]


@pytest.mark.parametrize(
    ("host", "status"),
    [("localhost", 200), ("localhost:8000", 200), ("127.0.0.1:1", 200), ("[::1]:8000", 200),
     ("LOCALHOST.", 200), ("attacker.example", 421), ("attacker.example:8000", 421),
     ("localhost.attacker.example", 421), ("127.0.0.2", 421)],
)
def test_9_the_host_header_must_name_the_daemon(
    client: TestClient, host: str, status: int
) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: refused, on every route,
    registration included."""
    for method, path in [("GET", "/healthz"), ("GET", "/v1/models"), ("POST", "/v1/apps")]:
        answer = client.request(method, path, headers={"host": host, **bearer(REGISTRAR)},
                                json={"model": "alpha", "fps": 30})
        if status == 421:
            assert_problem(answer, 421, "host-not-allowed")
        else:
            assert answer.status_code < 400, (host, path, answer.text)


def test_9_allowed_hosts_can_be_extended(models_dir: Path, tmp_path: Path) -> None:
    with make_client(models_dir, tmp_path / "s", allowed_hosts=("device.lan",)) as client:
        assert client.get("/healthz", headers={"host": "device.lan:8000"}).status_code == 200
        assert client.get("/healthz", headers={"host": "localhost"}).status_code == 421
    with make_client(models_dir, tmp_path / "t", allowed_hosts=("*",)) as client:
        assert client.get("/healthz", headers={"host": "anything"}).status_code == 200


# ------------------------------------------------------------------ 10: pixels and decodes


def test_10_the_pixel_cap_derives_from_the_models_input(models_dir: Path, tmp_path: Path) -> None:
    """A 16x16 model takes images up to 256 times its pixels (256x256), and never more than
    --max-image-pixels."""
    with make_client(models_dir, tmp_path / "state") as client:
        app = register(client)
        fits = np.zeros((256, 256), np.uint8)
        assert infer(client, app, png(fits), "image/png").status_code == 200
        too_big = infer(client, app, png(np.zeros((257, 256), np.uint8)), "image/png")
        assert "65536 pixels allowed" in assert_problem(too_big, 422, "bad-frame")["detail"]
        pixels = infer(client, app, npy_bytes(np.zeros((300, 300), np.uint8)), "application/x-npy")
        assert_problem(pixels, 422, "bad-frame")
    with make_client(models_dir, tmp_path / "capped", max_image_pixels=32 * 32) as client:
        app = register(client)
        assert infer(client, app, png(np.zeros((32, 32), np.uint8)), "image/png").status_code == 200
        assert_problem(infer(client, app, png(np.zeros((33, 32), np.uint8)), "image/png"), 422)


def test_10_decodes_run_at_most_decode_slots_at_a_time(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 concurrent images were decoded at once (3 GB peak): now at most decode_slots."""
    import api.routers.infer as infer_module

    running, peak, lock = [0], [0], threading.Lock()
    decode = infer_module.decode_frame

    def counting_decode(*args: object) -> np.ndarray:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return decode(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(infer_module, "decode_frame", counting_decode)
    with make_client(models_dir, tmp_path / "state", decode_slots=2) as client:
        app = register(client)
        body = png(np.zeros((64, 64), np.uint8))
        answers: list[int] = []
        threads = [
            threading.Thread(target=lambda: answers.append(
                infer(client, app, body, "image/png").status_code))
            for _ in range(12)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(set(answers)) <= [200, 429] and len(answers) == 12
    assert peak[0] == 2


def test_10_json_frames_are_limited(client: TestClient) -> None:
    app = register(client)
    big = json.dumps({"frame": [[0.5] * 16] * 16 * 1000}).encode()
    assert len(big) > 1 << 20
    assert_problem(infer(client, app, big, "application/json"), 413, "body-too-large")


# ------------------------------------------------------------------ 11: connections


@pytest.fixture(scope="module")
def live(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`nestdnn serve` with a descriptor limit of 128, header and body timeouts of 1 s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path_factory.mktemp("live-state")
    log_path = state / "serve.log"
    command = [str(Path(sys.executable).with_name("nestdnn")), "serve", "--models",
               str(models_dir), "--port", str(port), "--state-dir", str(state),
               "--header-timeout", "1", "--body-timeout", "1"]
    env = {**os.environ, ADMIN_TOKEN_ENV: ADMIN, REGISTRATION_TOKEN_ENV: REGISTRAR}

    def low_descriptor_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    with log_path.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=low_descriptor_limit)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def closed_count(sockets: list[socket.socket]) -> int:
    closed = 0
    for sock in sockets:
        sock.settimeout(0.05)
        try:
            closed += sock.recv(1) == b""
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed += 1
    return closed


@pytest.mark.slow
def test_11_idle_sockets_beyond_the_descriptor_limit_do_not_lock_out_healthz(live: str) -> None:
    """1,100 idle sockets against a limit of 1,024 made /healthz fail: here 300 against 128
    (the daemon keeps at most 64 connections and closes the longest-idle one)."""
    port = int(live.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        started = time.monotonic()
        answer = httpx.get(f"{live}/healthz", timeout=10)
        assert answer.status_code == 200 and time.monotonic() - started < 5
        assert closed_count(sockets) >= 300 - 64
        metrics = httpx.get(f"{live}/metrics").text
        assert 'nestdnn_http_connections_closed_total{reason="idle_evicted"}' in metrics
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_11_half_sent_headers_are_closed_after_the_header_timeout(live: str) -> None:
    port = int(live.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.8 < time.monotonic() - started < 5
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        assert sock.recv(100) == b""  # never sent anything


@pytest.mark.slow
def test_11_a_body_that_does_not_arrive_in_time_is_408(live: str) -> None:
    port = int(live.rsplit(":", 1)[1])
    with httpx.Client(base_url=live) as api:
        app = api.post("/v1/apps", json={"model": "alpha", "fps": 30},
                       headers=bearer(REGISTRAR)).json()
    head = (f"POST /v1/apps/{app['id']}/infer HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {app['token']}\r\ncontent-type: application/x-npy\r\n"
            "content-length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode() + b"\x93NUMPY")
        sock.settimeout(10)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body-timeout" in answer
    assert 0.8 < time.monotonic() - started < 5


@pytest.mark.slow
def test_11_oversized_headers_get_431(live: str) -> None:
    port = int(live.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        for _ in range(80):
            sock.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")
        sock.settimeout(10)
        answer = sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"application/problem+json" in answer and b"headers-too-large" in answer


def test_11_the_guard_refuses_newcomers_when_every_connection_is_busy() -> None:
    from api.server import ConnectionGuard

    class Connection:
        def __init__(self, busy: bool, since: float) -> None:
            self.in_request, self.idle_since = busy, since
            self.transport = type("T", (), {"close": lambda _self: closed.append(self)})()

    closed: list[Connection] = []
    reasons: list[str] = []
    guard = ConnectionGuard(2, 10.0, 1024, on_close=reasons.append)
    busy, idle = Connection(True, 0.0), Connection(False, 5.0)
    assert guard.admit(busy) and guard.admit(idle)  # type: ignore[arg-type]
    assert guard.admit(Connection(True, 9.0))  # type: ignore[arg-type]
    assert closed == [idle] and reasons == ["idle_evicted"]
    assert not guard.admit(Connection(False, 9.5))  # type: ignore[arg-type]
    assert reasons == ["idle_evicted", "over_limit"] and len(guard.open) == 2


# ------------------------------------------------------------------ 12: smaller findings


def test_12_the_models_list_shows_no_directories(client: TestClient, models_dir: Path) -> None:
    answer = client.get("/v1/models")
    assert str(models_dir) not in answer.text
    (deep,) = [r for r in answer.json()["rejected"] if r["name"] == "deep"]
    assert deep["reason"].startswith("deep.profile.json is not a profile: JSON nested too deeply")


def test_12_error_details_carry_no_memory_addresses(client: TestClient) -> None:
    app = register(client)
    for body, kind in [(b"hello", "image/png"), (b"hello", "image/jpeg")]:
        answer = infer(client, app, body, kind)
        assert " at 0x" not in assert_problem(answer, 422, "bad-frame")["detail"]
    multipart = client.post(f"/v1/apps/{app['id']}/infer", headers=bearer(app["token"]),
                            files={"file": ("x", b"not an image", "image/png")})
    assert " at 0x" not in assert_problem(multipart, 422)["detail"]


def test_12_a_deeply_nested_profile_is_rejected_and_the_daemon_starts(models_dir: Path) -> None:
    with pytest.raises(NestError, match="nested too deeply"):
        load_profile(models_dir / "deep.profile.json")
    catalogue = ModelCatalogue.load(models_dir)
    assert list(catalogue.entries) == ["alpha"]
    assert [r.name for r in catalogue.rejected] == ["deep"]


def test_12_every_error_is_a_problem_with_a_string_detail(client: TestClient) -> None:
    """detail was a string or a list depending on the route."""
    app = register(client)
    own = bearer(app["token"])
    npy = {"content-type": "application/x-npy", **own}
    cases = [
        ("GET", "/nowhere", {}, None, 404),
        ("DELETE", "/v1/models", {}, None, 405),
        ("GET", "/v1/apps/nope", {}, None, 404),
        ("GET", "/v1/models/nope", {}, None, 404),
        ("POST", "/v1/apps", bearer(REGISTRAR), b"{", 422),
        ("POST", "/v1/apps", bearer(REGISTRAR), b'{"model": "alpha"}', 422),
        ("PATCH", f"/v1/apps/{app['id']}", {}, b'{"fps": 1}', 401),
        ("PATCH", f"/v1/apps/{app['id']}", bearer("x"), b'{"fps": 1}', 403),
        ("PUT", "/v1/schedule", own, b'{"alpha": 1}', 403),
        ("PUT", "/v1/schedule", bearer(ADMIN), b'{"memory_budget_bytes": 1}', 409),
        ("POST", f"/v1/apps/{app['id']}/infer?top_k=0", npy, npy_bytes(np.zeros((16, 16))), 422),
        ("POST", f"/v1/apps/{app['id']}/infer", {**own, "content-type": "text/plain"}, b"x", 415),
        ("POST", f"/v1/apps/{app['id']}/infer", npy, b"\0" * (9 << 20), 413),
    ]
    for method, path, headers, body, status in cases:
        json_type = {} if "content-type" in headers else {"content-type": "application/json"}
        answer = client.request(method, path, headers={**json_type, **headers}, content=body)
        assert_problem(answer, status)


def test_openapi_documents_a_problem_answer_for_every_error_of_every_operation(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    schemas = schema["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert {"type", "title", "status", "detail"} <= set(schemas["Problem"]["required"])
    for path, operations in schema["paths"].items():
        if path.startswith("/v2"):
            continue  # the Open Inference Protocol's own errors: tests/test_api_v2.py
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"421", "422", "431", "503"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert {"400", "408", "413"} <= set(responses), (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (path, status)
    infer_answers = schema["paths"]["/v1/apps/{app_id}/infer"]["post"]["responses"]
    assert infer_answers["429"]["content"][PROBLEM_MEDIA_TYPE]["schema"]["$ref"].endswith(
        "/OverloadProblem")


def test_12_nan_model_outputs_are_502_and_counted(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN outputs were served as 200 with score null; the runtime now raises BadModelOutput
    (scheduler.daemon.errors), answered 502 and counted per model."""
    app = register(client)
    runtime = client.app.state.daemon.runtime  # type: ignore[attr-defined]

    def nan_outputs(_app_id: str, _frame: np.ndarray) -> Future:
        future: Future = Future()
        future.set_exception(BadModelOutput("alpha d2 computed non-finite outputs"))
        return future

    monkeypatch.setattr(runtime, "submit", nan_outputs)
    frame = npy_bytes(np.zeros((1, 16, 16), np.float32))
    for _ in range(2):
        answer = infer(client, app, frame, "application/x-npy")
        assert "non-finite" in assert_problem(answer, 502, "bad-model-output")["detail"]
    assert 'nestdnn_bad_model_outputs_total{model="alpha"} 2.0' in client.get("/metrics").text
    assert "non-finite" in caplog.text


def test_an_unavailable_model_is_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    app = register(client)
    runtime = client.app.state.daemon.runtime  # type: ignore[attr-defined]

    def unavailable(_app_id: str, _frame: np.ndarray) -> Future:
        raise ModelUnavailable("model alpha: alpha.nest is missing")

    monkeypatch.setattr(runtime, "submit", unavailable)
    answer = infer(client, app, npy_bytes(np.zeros((1, 16, 16), np.float32)), "application/x-npy")
    assert_problem(answer, 503, "model-unavailable")


def test_unknown_query_parameters_are_422_as_unknown_body_fields_are(client: TestClient) -> None:
    """A typo such as ?topk=3 was silently ignored (the fuzzer's negative-data check)."""
    app = register(client)
    frame = npy_bytes(np.zeros((1, 16, 16), np.float32))
    headers = {"content-type": "application/x-npy", **bearer(app["token"])}
    typo = client.post(f"/v1/apps/{app['id']}/infer?topk=3", content=frame, headers=headers)
    (error,) = assert_problem(typo, 422, "invalid-request")["errors"]
    assert (error["loc"], error["type"]) == (["query", "topk"], "extra_forbidden")
    both = client.post(f"/v1/apps/{app['id']}/infer?top_k=2&x=1", content=frame, headers=headers)
    assert_problem(both, 422, "invalid-request")
    fine = client.post(f"/v1/apps/{app['id']}/infer?top_k=2&top_k=3", content=frame,
                       headers=headers)
    assert len(fine.json()["top_k"]) == 3
    for path in ["/v1/apps?limit=1", "/healthz?verbose=1", f"/v1/apps/{app['id']}?x="]:
        assert_problem(client.get(path), 422, "invalid-request")


def test_10_bodies_in_flight_are_bounded_in_bytes(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many connections sending large bodies at once cannot hold more than 8 maximum bodies
    of memory: beyond, 503 with Retry-After before the body is read."""
    import api.routers.infer as infer_module
    from api.middleware import BodyLimits

    release = threading.Event()

    def held_decode(*_args: object) -> np.ndarray:
        release.wait(30)
        return np.zeros((1, 16, 16), np.float32)

    monkeypatch.setattr(infer_module, "decode_frame", held_decode)
    body = b"\x89PNG" + b"\0" * (60 << 10)
    with make_client(models_dir, tmp_path / "state", max_body_bytes=64 << 10) as client:
        app = register(client)
        answers: list[int] = []
        threads = [threading.Thread(target=lambda: answers.append(
            infer(client, app, body, "image/png").status_code)) for _ in range(8)]
        for thread in threads:
            thread.start()
        limits = client.app.middleware_stack  # type: ignore[attr-defined]
        while not isinstance(limits, BodyLimits):
            limits = limits.app
        deadline = time.monotonic() + 30
        while limits.in_flight < 8 * len(body) and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = infer(client, app, body, "image/png")
        release.set()
        for thread in threads:
            thread.join(timeout=30)
        assert_problem(refused, 503, "bodies-in-flight")
        assert refused.headers["retry-after"] == "1"
        assert len(answers) == 8 and set(answers) <= {200, 429} and limits.in_flight == 0
