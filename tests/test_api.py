"""The REST API over the real runtime, with small real .nest files and their measured profiles."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.auth import ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE, REGISTRATION_TOKEN_ENV, TOKENS_FILE
from api.cli import parse_size
from api.client import ApiError, DaemonClient, npy_bytes
from api.daemon import ApiSettings
from nestdnn.cli import main
from profiles.schema import load_profile
from profiles.synthetic import synthetic_models_dir
from scheduler.daemon import ModelCatalogue, Runtime, RuntimeSettings

ADMIN = "test-admin-token"
REGISTRAR = "test-registration-token"
SHAPE = (1, 16, 16)
MAX_BODY = 256 << 10


@pytest.fixture(autouse=True)
def registration_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every daemon of these tests takes REGISTRAR as its registration token."""
    monkeypatch.setenv(REGISTRATION_TOKEN_ENV, REGISTRAR)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two servable synthetic models (real .nest files, measured latency) and a broken file."""
    root = tmp_path_factory.mktemp("api-models")
    synthetic_models_dir(root, ["alpha", "beta"])
    (root / "broken.nest").write_bytes(b"not a nest file")
    return root


@pytest.fixture(scope="session")
def sizes(models_dir: Path) -> dict[str, int]:
    """Descendant bytes of the sample model and the most accurate descendant."""
    profile = load_profile(models_dir / "alpha.profile.json")
    table = profile.descendants
    best = max(range(len(table)), key=lambda k: (table[k].accuracy, k))
    assert best > 0, "the sample model's largest descendants should be its most accurate"
    return {"best": best, "best_bytes": table[best].bytes, "smallest_bytes": table[0].bytes}


def make_client(
    models_dir: Path, state: Path, budget: int, api: dict | None = None, **settings: object
) -> TestClient:
    """A TestClient over a fresh runtime (enter it to run the lifespan); ``api``: ApiSettings."""
    runtime = Runtime(
        ModelCatalogue.load(models_dir),
        RuntimeSettings(memory_budget_bytes=budget, state_dir=state, **settings),
    )
    api_settings = ApiSettings(state_dir=state, **{"max_body_bytes": MAX_BODY, **(api or {})})
    return TestClient(create_app(runtime, api_settings), base_url="http://localhost")


@pytest.fixture
def budget(sizes: dict[str, int]) -> int:
    """Room for the best descendant plus the smallest one: two apps cannot both have the best."""
    return sizes["best_bytes"] + sizes["smallest_bytes"]


@pytest.fixture
def client(
    models_dir: Path, tmp_path: Path, budget: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    with make_client(models_dir, tmp_path / "state", budget) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REGISTRATION = bearer(REGISTRAR)


def register(client: TestClient, model: str = "alpha", **fields: object) -> dict:
    response = client.post(
        "/v1/apps",
        json={"model": model, "target_latency_ms": 1000, "priority": 1, **fields},
        headers=REGISTRATION,
    )
    assert response.status_code == 201, response.text
    return response.json()


def infer(
    client: TestClient,
    app: dict,
    body: bytes,
    kind: str = "application/x-npy",
    token: str | None = None,
    **params: object,
):
    headers = {"content-type": kind, **bearer(token or app["token"])}
    return client.post(f"/v1/apps/{app['id']}/infer", content=body, headers=headers, params=params)


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------ the interface scripts use


def test_register_infer_schedule_unregister_as_documented(client: TestClient) -> None:
    response = client.post(
        "/v1/apps",
        json={"model": "alpha", "target_latency_ms": 50, "priority": 1},
        headers=REGISTRATION,
    )
    assert response.status_code == 201
    app = response.json()
    assert {"id", "token", "descendant", "share"} <= set(app)
    assert isinstance(app["descendant"], int) and 0 < app["share"] <= 1

    result = infer(client, app, npy_bytes(frame()))
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["descendant"] == app["descendant"]
    assert 0 <= body["label"] < 4
    assert body["class_name"] == body["top_k"][0]["class_name"]
    assert body["top_k"][0]["label"] == body["label"]
    assert len(body["top_k"]) == 4  # default 5, capped by the 4 classes
    assert abs(sum(t["score"] for t in body["top_k"]) - 1) < 1e-4
    assert body["compute_ms"] > 0 and body["total_ms"] >= body["compute_ms"]

    schedule = client.get("/v1/schedule").json()
    assert [(a["id"], a["descendant"], a["share"]) for a in schedule["apps"]] == [
        (app["id"], app["descendant"], app["share"])
    ]

    assert client.delete(f"/v1/apps/{app['id']}", headers=bearer(app["token"])).status_code == 204
    assert client.get("/v1/schedule").json()["apps"] == []
    assert client.get(f"/v1/apps/{app['id']}").status_code == 404
    assert infer(client, app, npy_bytes(frame())).status_code == 404


# ------------------------------------------------------------------ apps


def test_list_show_and_update_apps(client: TestClient) -> None:
    first, second = register(client, name="door-cam"), register(client, "beta", fps=10)
    listed = client.get("/v1/apps").json()
    assert {a["id"] for a in listed} == {first["id"], second["id"]}
    shown = client.get(f"/v1/apps/{first['id']}").json()
    assert shown["name"] == "door-cam" and shown["model"] == "alpha"
    assert {"frames", "drops", "switches", "resident_bytes", "latency_p99_ms"} <= set(shown)

    patched = client.patch(
        f"/v1/apps/{first['id']}",
        json={"priority": 5, "target_latency_ms": 500},
        headers=bearer(first["token"]),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["priority"] == 5 and patched.json()["target_latency_ms"] == 500
    assert client.get(f"/v1/apps/{first['id']}").json()["priority"] == 5


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "alpha"}, "target_latency_ms or fps"),
        ({"model": "alpha", "target_latency_ms": -1}, "greater than or equal to 0.1"),
        ({"model": "alpha", "fps": 30, "priority": 0}, "greater than or equal to 0.001"),
        ({"model": "alpha", "fps": 30, "min_accuracy": 2}, "less than or equal to 1"),
        ({"model": "alpha", "fps": 30, "colour": "red"}, "Extra inputs"),
        ({"fps": 30}, "Field required"),
        ({"model": "alpha", "fps": 30, "name": "bad name!"}, "pattern"),
    ],
)
def test_register_rejects_invalid_fields(client: TestClient, body: dict, fragment: str) -> None:
    response = client.post("/v1/apps", json=body, headers=REGISTRATION)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:nestdnn:problem:invalid-request" and problem["status"] == 422
    assert fragment in problem["detail"]
    assert all({"loc", "msg", "type"} == set(e) for e in problem["errors"])


def test_register_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/v1/apps", json={"model": "nope", "fps": 30}, headers=REGISTRATION)
    assert response.status_code == 404
    assert response.json()["type"] == "urn:nestdnn:problem:unknown-model"
    assert "nope" in response.json()["detail"]


def test_register_beyond_the_budget_is_409_with_the_bytes_missing(
    client: TestClient, sizes: dict[str, int]
) -> None:
    tight = {"memory_budget_bytes": sizes["smallest_bytes"]}
    assert client.put("/v1/schedule", json=tight, headers=bearer(ADMIN)).status_code == 200
    register(client)
    response = client.post("/v1/apps", json={"model": "beta", "fps": 30}, headers=REGISTRATION)
    assert response.status_code == 409
    assert response.json()["bytes_missing"] > 0
    assert len(client.get("/v1/apps").json()) == 1


def test_update_needs_a_field(client: TestClient) -> None:
    app = register(client)
    response = client.patch(f"/v1/apps/{app['id']}", json={}, headers=bearer(app["token"]))
    assert response.status_code == 422


# ------------------------------------------------------------------ auth


def test_app_endpoints_need_that_apps_token(client: TestClient) -> None:
    mine, theirs = register(client), register(client, "beta")
    body = npy_bytes(frame())
    calls = [
        ("PATCH", f"/v1/apps/{mine['id']}", {"json": {"priority": 2}}),
        (
            "POST",
            f"/v1/apps/{mine['id']}/infer",
            {"content": body, "headers": {"content-type": "application/x-npy"}},
        ),
        ("DELETE", f"/v1/apps/{mine['id']}", {}),
    ]
    for method, path, kwargs in calls:
        headers = kwargs.pop("headers", {})
        missing = client.request(method, path, headers=headers, **kwargs)
        assert missing.status_code == 401, (method, path)
        assert missing.headers["www-authenticate"] == "Bearer"
        other = client.request(method, path, headers=headers | bearer(theirs["token"]), **kwargs)
        assert other.status_code == 403, (method, path)
        assert "does not belong" in other.json()["detail"]
        bogus = client.request(method, path, headers=headers | bearer("x" * 43), **kwargs)
        assert bogus.status_code == 403
    assert client.get(f"/v1/apps/{mine['id']}").status_code == 200
    assert infer(client, theirs, body).status_code == 200


def test_unknown_app_is_404_and_the_admin_token_acts_on_any_app(client: TestClient) -> None:
    app = register(client)
    response = client.delete("/v1/apps/nope", headers=bearer(app["token"]))
    assert response.status_code == 404
    assert infer(client, app, npy_bytes(frame()), token=ADMIN).status_code == 200
    assert client.delete(f"/v1/apps/{app['id']}", headers=bearer(ADMIN)).status_code == 204


def test_schedule_changes_need_the_admin_token(client: TestClient) -> None:
    app = register(client)
    change = {"alpha": 2.0}
    assert client.put("/v1/schedule", json=change).status_code == 401
    assert client.put("/v1/schedule", json=change, headers=bearer(app["token"])).status_code == 403
    response = client.put("/v1/schedule", json=change, headers=bearer(ADMIN))
    assert response.status_code == 200
    assert response.json()["alpha"] == 2.0


def test_token_file_keeps_only_hashes_and_is_private(client: TestClient, tmp_path: Path) -> None:
    app = register(client)
    path = tmp_path / "state" / TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert app["token"] not in text
    assert app["id"] in json.loads(text)["apps"]


def test_admin_token_is_generated_into_the_state_dir(
    models_dir: Path, tmp_path: Path, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    state = tmp_path / "state"
    with make_client(models_dir, state, budget) as client:
        path = state / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert len(token) >= 32
        response = client.put("/v1/schedule", json={"alpha": 0.5}, headers=bearer(token))
        assert response.status_code == 200


# ------------------------------------------------------------------ scheduling


def test_plan_changes_when_a_second_app_registers_and_is_restored_when_it_leaves(
    client: TestClient, sizes: dict[str, int]
) -> None:
    first = register(client)
    assert first["descendant"] == sizes["best"]
    alone = client.get("/v1/schedule").json()

    second = register(client, "beta")
    together = client.get("/v1/schedule").json()
    plan = {a["id"]: (a["descendant"], a["share"]) for a in together["apps"]}
    assert plan[first["id"]] != (alone["apps"][0]["descendant"], alone["apps"][0]["share"])
    assert not plan[first["id"]][0] == plan[second["id"]][0] == sizes["best"]
    assert together["accounted_bytes"] <= together["memory_budget_bytes"]
    assert sum(share for _, share in plan.values()) <= 1 + 1e-9

    client.delete(f"/v1/apps/{second['id']}", headers=bearer(second["token"]))
    restored = client.get("/v1/schedule").json()
    assert [(a["id"], a["descendant"], a["share"]) for a in restored["apps"]] == [
        (a["id"], a["descendant"], a["share"]) for a in alone["apps"]
    ]


def test_schedule_view_and_policy_changes(client: TestClient, sizes: dict[str, int]) -> None:
    register(client)
    view = client.get("/v1/schedule").json()
    assert view["policy"] == "min-total-cost" and view["feasible"] is True
    assert {"method", "alpha", "memory_budget_bytes", "accounted_bytes", "objective"} <= set(view)

    changed = client.put(
        "/v1/schedule", json={"policy": "min-max-cost", "alpha": 3}, headers=bearer(ADMIN)
    ).json()
    assert (changed["policy"], changed["alpha"]) == ("min-max-cost", 3.0)
    assert client.get("/v1/schedule").json()["policy"] == "min-max-cost"

    too_small = client.put("/v1/schedule", json={"memory_budget_bytes": 1}, headers=bearer(ADMIN))
    assert too_small.status_code == 409
    assert too_small.json()["bytes_missing"] >= sizes["smallest_bytes"] - 1
    assert client.get("/v1/schedule").json()["memory_budget_bytes"] > 1

    for bad in ({}, {"policy": "fastest"}, {"alpha": -1}, {"memory_budget_bytes": 0}):
        assert client.put("/v1/schedule", json=bad, headers=bearer(ADMIN)).status_code == 422


# ------------------------------------------------------------------ inference inputs


def test_every_frame_format_gives_the_same_prediction(client: TestClient) -> None:
    app = register(client)
    pixels = np.random.default_rng(3).integers(0, 256, SHAPE[1:], dtype=np.uint8)
    as_png = infer(client, app, png(pixels), "image/png").json()
    rgb_large = np.stack([np.kron(pixels, np.ones((2, 2), np.uint8))] * 3, axis=-1)
    model = client.get("/v1/models/alpha").json()
    normalised = (pixels.astype(np.float32) / 255 - model["mean"][0]) / model["std"][0]
    variants = [
        infer(client, app, png(pixels), "image/png"),
        infer(client, app, npy_bytes(pixels), "application/x-npy"),
        infer(client, app, npy_bytes(normalised[None]), "application/x-npy"),
        infer(client, app, json.dumps({"frame": normalised.tolist()}).encode(), "application/json"),
        client.post(
            f"/v1/apps/{app['id']}/infer",
            headers=bearer(app["token"]),
            files={"file": ("frame.png", png(pixels), "image/png")},
        ),
        client.post(
            f"/v1/apps/{app['id']}/infer",
            headers=bearer(app["token"]),
            files={"file": ("frame", npy_bytes(pixels), "application/octet-stream")},
        ),
    ]
    for response in variants:
        assert response.status_code == 200, response.text
        assert response.json()["label"] == as_png["label"]
        assert np.allclose(
            [t["score"] for t in response.json()["top_k"]],
            [t["score"] for t in as_png["top_k"]],
            atol=1e-4,
        )
    resized = infer(client, app, png(rgb_large), "image/png")
    assert resized.status_code == 200
    assert infer(client, app, npy_bytes(frame()), top_k=2).json()["top_k"].__len__() == 2


@pytest.mark.parametrize(
    ("body", "kind", "status", "fragment"),
    [
        (npy_bytes(np.zeros((3, 16, 16), np.float32)), "application/x-npy", 422, "channels"),
        (npy_bytes(np.zeros((2, 1, 16, 16), np.float32)), "application/x-npy", 422, "(1, 16, 16)"),
        (b"garbage", "application/x-npy", 422, ".npy"),
        (b"garbage", "image/jpeg", 422, "PNG or JPEG"),
        (b'{"frame": [1, [2]]}', "application/json", 422, "rectangular"),
        (b"hello", "text/plain", 415, "unsupported content type"),
        (b"", "application/x-npy", 422, "empty body"),
    ],
)
def test_bad_frames_are_4xx_saying_what_was_expected(
    client: TestClient, body: bytes, kind: str, status: int, fragment: str
) -> None:
    app = register(client)
    response = infer(client, app, body, kind)
    assert response.status_code == status
    assert fragment in response.json()["detail"]


def test_multipart_without_a_file_part_is_422(client: TestClient) -> None:
    app = register(client)
    response = client.post(
        f"/v1/apps/{app['id']}/infer",
        headers=bearer(app["token"]),
        data={"frame": "1"},
        files={"other": ("x", b"1", "text/plain")},
    )
    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]


def test_bodies_over_the_limit_are_413(client: TestClient) -> None:
    app = register(client)
    big = npy_bytes(np.zeros((1, 300, 300), np.float32))
    assert len(big) > MAX_BODY
    response = infer(client, app, big)
    assert response.status_code == 413
    assert str(MAX_BODY) in response.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"\0" * (MAX_BODY // 4)

    streamed = client.post(
        f"/v1/apps/{app['id']}/infer",
        content=chunks(),
        headers={"content-type": "application/x-npy", **bearer(app["token"])},
    )
    assert streamed.status_code == 413
    assert client.get("/healthz").status_code == 200


def test_a_full_queue_answers_429_with_the_reason(
    models_dir: Path, tmp_path: Path, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    with make_client(models_dir, tmp_path / "state", budget, queue_size=1) as client:
        app = register(client)
        executor = client.app.state.daemon.runtime._executor  # white-box: hold the queue
        answers: list = []
        with executor.hold(app["id"]):
            older = threading.Thread(
                target=lambda: answers.append(infer(client, app, npy_bytes(frame(1))))
            )
            older.start()
            deadline = time.monotonic() + 10
            while executor.backlog()[app["id"]] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            newer = threading.Thread(
                target=lambda: answers.append(infer(client, app, npy_bytes(frame(2))))
            )
            newer.start()
            older.join(timeout=10)
        newer.join(timeout=10)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 429]
    dropped = next(a for a in answers if a.status_code == 429).json()
    assert dropped["reason"] == "dropped" and "newer frame" in dropped["detail"]


def test_refuse_mode_answers_429_queue_full(
    models_dir: Path, tmp_path: Path, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    with make_client(
        models_dir, tmp_path / "state", budget, queue_size=1, overflow="refuse"
    ) as client:
        app = register(client)
        executor = client.app.state.daemon.runtime._executor  # white-box: hold the queue
        answers: list = []
        with executor.hold(app["id"]):
            first = threading.Thread(
                target=lambda: answers.append(infer(client, app, npy_bytes(frame(1))))
            )
            first.start()
            deadline = time.monotonic() + 10
            while executor.backlog()[app["id"]] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = infer(client, app, npy_bytes(frame(2)))
        first.join(timeout=10)
    assert refused.status_code == 429
    assert refused.json()["reason"] == "queue_full"
    assert [a.status_code for a in answers] == [200]


# ------------------------------------------------------------------ models, health, metrics


def test_models_list_detail_and_rejected(client: TestClient, models_dir: Path) -> None:
    listed = client.get("/v1/models").json()
    assert [m["name"] for m in listed["models"]] == ["alpha", "beta"]
    assert listed["models"][0]["input_shape"] == list(SHAPE)
    assert [r["name"] for r in listed["rejected"]] == ["broken"]
    detail = client.get("/v1/models/alpha").json()
    profile = load_profile(models_dir / "alpha.profile.json")
    assert [row["bytes"] for row in detail["table"]] == [d.bytes for d in profile.descendants]
    assert [row["accuracy"] for row in detail["table"]] == [d.accuracy for d in profile.descendants]
    assert detail["table"][0]["latency_ms"]["torch"] == pytest.approx(
        profile.descendants[0].backends["torch"].latency.median_s * 1000
    )
    assert len(detail["class_names"]) == detail["num_classes"] == 4
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and "alpha" in missing.json()["detail"]


def test_health_and_openapi(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == 2
    schema = client.get("/openapi.json").json()
    infer_body = schema["paths"]["/v1/apps/{app_id}/infer"]["post"]["requestBody"]["content"]
    assert {
        "application/x-npy",
        "image/png",
        "image/jpeg",
        "application/json",
        "multipart/form-data",
    } <= set(infer_body)
    assert client.get("/docs").status_code == 200


def test_infer_is_served_by_the_lean_route_and_answers_as_fastapi_would(
    client: TestClient,
) -> None:
    """The hot path bypasses FastAPI's request handling: the same OpenAPI operation, the
    same 401/403/404, the same 422 for a bad top_k, the route template in the metrics."""
    from api.routers.infer import InferRoute

    served = [r for r in client.app.router.routes
              if getattr(r, "path", "") == "/v1/apps/{app_id}/infer"]
    assert isinstance(served[0], InferRoute)  # matched first
    operation = client.get("/openapi.json").json()["paths"]["/v1/apps/{app_id}/infer"]["post"]
    assert operation["security"] == [{"AppToken": []}]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["app_id"]["in"] == "path" and params["app_id"]["required"]
    top_k = params["top_k"]
    assert (top_k["in"], top_k["required"]) == ("query", False)
    assert top_k["schema"]["anyOf"][0] == {"maximum": 1000, "minimum": 1, "type": "integer"}

    app, other = register(client), register(client, "beta")
    body = npy_bytes(frame())
    for value, kind in [("0", "greater_than_equal"), ("1001", "less_than_equal"),
                        ("abc", "int_parsing"), ("", "int_parsing"), ("1.5", "int_parsing")]:
        answer = infer(client, app, body, top_k=value)
        assert answer.status_code == 422, value
        (error,) = answer.json()["errors"]
        assert (error["type"], error["loc"]) == (kind, ["query", "top_k"])
    assert len(infer(client, app, body, top_k=[2, 3]).json()["top_k"]) == 3  # the last wins
    url = f"/v1/apps/{app['id']}/infer"
    headers = {"content-type": "application/x-npy"}
    for authorization in [None, "Bearer ", "Basic abc", app["token"]]:
        sent = headers if authorization is None else {**headers, "Authorization": authorization}
        answer = client.post(url, content=body, headers=sent)
        assert answer.status_code == 401, authorization
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "missing bearer token" in answer.json()["detail"]
    for authorization in [f"bearer {app['token']}", f"Bearer   {app['token']}  "]:
        sent = {**headers, "Authorization": authorization}
        assert client.post(url, content=body, headers=sent).status_code == 200, authorization
    assert infer(client, app, body, token=other["token"]).status_code == 403
    assert infer(client, app, body, token=ADMIN).status_code == 200
    gone = client.post("/v1/apps/nope/infer", content=body, headers={**headers, **bearer("x")})
    assert (gone.status_code, gone.json()) == (404, {
        "type": "urn:nestdnn:problem:unknown-app", "title": "No such app", "status": 404,
        "detail": "no app with id 'nope'"})
    assert client.get(url).status_code == 405


def test_metrics_expose_per_app_and_daemon_fields(client: TestClient) -> None:
    app = register(client)
    for seed in range(3):
        assert infer(client, app, npy_bytes(frame(seed))).status_code == 200
    text = client.get("/metrics").text
    labels = f'app="{app["id"]}",model="alpha"'
    assert f"nestdnn_app_frames_total{{{labels}}} 3.0" in text
    assert f"nestdnn_app_drops_total{{{labels}}} 0.0" in text
    assert f"nestdnn_app_descendant{{{labels}}} {float(app['descendant'])}" in text
    assert f"nestdnn_app_share{{{labels}}} {app['share']}" in text
    assert f"nestdnn_app_switches_total{{{labels}}}" in text
    assert f'nestdnn_infer_latency_seconds_count{{app="{app["id"]}"}} 3.0' in text
    assert "nestdnn_accounted_bytes " in text and "nestdnn_memory_budget_bytes " in text
    assert "nestdnn_switches_total " in text
    assert 'nestdnn_replans_total{event="register"} 1.0' in text
    assert (
        'nestdnn_http_requests_total{method="POST",route="/v1/apps/{app_id}/infer",'
        'status="200"} 3.0'
    ) in text
    client.delete(f"/v1/apps/{app['id']}", headers=bearer(app["token"]))
    assert app["id"] not in client.get("/metrics").text


# ------------------------------------------------------------------ restart and the client


def test_restart_keeps_apps_and_tokens(
    models_dir: Path, tmp_path: Path, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    state = tmp_path / "state"
    with make_client(models_dir, state, budget) as client:
        kept, gone = register(client), register(client, "beta")
        client.delete(f"/v1/apps/{gone['id']}", headers=bearer(gone["token"]))
    with make_client(models_dir, state, budget) as client:
        assert [a["id"] for a in client.get("/v1/apps").json()] == [kept["id"]]
        assert infer(client, kept, npy_bytes(frame())).status_code == 200
        assert infer(client, gone, npy_bytes(frame())).status_code == 404
        wrong = client.patch(
            f"/v1/apps/{kept['id']}", json={"priority": 2}, headers=bearer(gone["token"])
        )
        assert wrong.status_code == 403


def test_python_client_round_trip(client: TestClient, tmp_path: Path) -> None:
    api = DaemonClient(http=client, admin_token=ADMIN)
    app = api.register("alpha", target_latency_ms=100, name="cam")
    assert api.app(app.id)["name"] == "cam"
    assert api.infer(app.id, frame())["descendant"] == app.descendant
    image = tmp_path / "frame.png"
    image.write_bytes(png(np.zeros(SHAPE[1:], np.uint8)))
    assert "label" in api.infer(app.id, image, top_k=1)
    assert api.update(app.id, priority=3)["priority"] == 3
    assert api.set_schedule(alpha=0.5)["alpha"] == 0.5
    assert [m["name"] for m in api.models()["models"]] == ["alpha", "beta"]
    assert api.model("beta")["descendants"] == 3
    assert api.schedule()["apps"][0]["id"] == app.id
    assert api.health()["apps"] == 1
    assert "nestdnn_apps 1.0" in api.metrics()
    with pytest.raises(ApiError) as error:
        api.register("nope", fps=1)
    assert error.value.status == 404 and "nope" in error.value.detail
    api.unregister(app.id)
    assert api.apps() == []


# ------------------------------------------------------------------ nestdnn serve


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MB", 64_000_000),
        ("64MiB", 64 << 20),
        ("512KiB", 512 << 10),
        ("512k", 512 << 10),
        ("1.5G", 3 << 29),
        ("1000", 1000),
        (" 2 mb ", 2_000_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "0", "64XB", "1e3"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        parse_size(text)


def test_serve_on_a_busy_port_exits_2_saying_so(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        argv = [
            "serve",
            "--models",
            str(models_dir),
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
        ]
        assert main(argv) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


@pytest.mark.slow
def test_nestdnn_serve_serves_logs_replans_and_shuts_down_gracefully(
    models_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state, log_path = tmp_path / "state", tmp_path / "serve.log"
    command = [
        str(Path(sys.executable).with_name("nestdnn")),
        "serve",
        "--models",
        str(models_dir),
        "--memory-budget",
        "64MB",
        "--port",
        str(port),
        "--state-dir",
        str(state),
    ]
    env = {**os.environ, ADMIN_TOKEN_ENV: ADMIN}
    with log_path.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        api = DaemonClient(f"http://127.0.0.1:{port}", admin_token=ADMIN)
        deadline = time.monotonic() + 60
        while True:
            try:
                api.health()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        app = api.register("alpha", target_latency_ms=50, priority=1)
        assert api.infer(app.id, frame())["descendant"] == app.descendant
        assert api.set_schedule(memory_budget_bytes=50_000_000)["memory_budget_bytes"] == 50e6
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    log_text = log_path.read_text()
    assert code == -signal.SIGTERM, log_text  # uvicorn re-raises the signal once shut down
    assert f"re-plan event=register app={app.id}" in log_text
    assert "re-plan event=set_policy" in log_text
    assert "state saved" in log_text
    saved = json.loads((state / "state.json").read_text())
    assert [a["id"] for a in saved["apps"]] == [app.id]


def test_the_load_benchmark_compares_rest_with_direct_work_for_the_same_frame_mix() -> None:
    """benchmarks/api_load.py: with several models, direct is the rate at which forward
    passes would compute the frames REST served (each model's frames at its own cost)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import api_load

    direct = [api_load.Slice(1.0, 300, 1.0, 0.0, 0.0, {}, {"a": 200, "b": 100},
                             {"a": 0.2, "b": 0.8})]  # a: 1 ms per frame, b: 8 ms
    assert api_load.direct_rate(direct, {"a": 1, "b": 1}) == pytest.approx(2 / 0.009)
    assert api_load.direct_rate(direct, {"a": 300}) == pytest.approx(1000.0)
    rest = api_load.Slice(1.0, 400, 1.2, 0.1, 0.0, {"200": 400, "429": 2}, {"a": 400})
    result = api_load.LoadResult(clients=2, rounds=1, direct=direct, rest=[rest], p50_ms=1.0,
                                 p99_ms=2.0, load_average_1m=0.0)
    assert result.ratio == pytest.approx(0.4)
    assert result.errors == {"429": 2} and result.undocumented_errors == 0
    assert result.summary()["server_cpu_ms_per_frame"] == pytest.approx(3.0)
