"""Issue 17, the daemon side: tokens are never lost, models reload from outside (admin endpoint
and SIGHUP) without a crash or unvalidated bytes, start-up failures are one line and exit 2,
and the operator sees each app's state and the daemon's own memory."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import ADMIN_TOKEN_ENV, REGISTRATION_TOKEN_ENV, TOKENS_FILE
from api.client import ApiError, DaemonClient, npy_bytes
from api.daemon import ApiSettings
from api.launcher import ServeProcess
from nestdnn.cli import main
from nestdnn.files import backup_of
from profiles.synthetic import synthetic_models_dir, write_synthetic_nest, write_synthetic_profile
from scheduler.daemon import ModelCatalogue, Runtime, RuntimeSettings
from scheduler.daemon.state import STATE_FILE

ADMIN = "recovery-admin-token"
REGISTRAR = "recovery-registration-token"
SHAPE = (1, 16, 16)
FRAME = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


@pytest.fixture(autouse=True)
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    monkeypatch.setenv(REGISTRATION_TOKEN_ENV, REGISTRAR)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models cam and mic, and in ``next/`` another cam of the same size (other weights)."""
    root = synthetic_models_dir(tmp_path_factory.mktemp("recovery-models"), ["cam", "mic"])
    newer = root / "next" / "cam.nest"
    newer.parent.mkdir()
    accuracies = [round(0.62 + 0.1 * math.log2(1 + k), 3) for k in range(3)]  # as cam's
    write_synthetic_nest(newer, accuracies=accuracies, seed=7)
    write_synthetic_profile(newer)
    assert newer.stat().st_size == (root / "cam.nest").stat().st_size
    return root


@pytest.fixture
def models(source: Path, tmp_path: Path) -> Path:
    out = tmp_path / "models"
    out.mkdir()
    for name in ("cam", "mic"):
        for suffix in (".nest", ".profile.json"):
            shutil.copy(source / f"{name}{suffix}", out / f"{name}{suffix}")
    return out


def make_client(models: Path, state: Path) -> TestClient:
    runtime = Runtime(
        ModelCatalogue.load(models), RuntimeSettings(memory_budget_bytes=1 << 30, state_dir=state)
    )
    return TestClient(create_app(runtime, ApiSettings(state_dir=state)), base_url="http://localhost")


def api_of(client: TestClient) -> DaemonClient:
    return DaemonClient(http=client, registration_token=REGISTRAR, admin_token=ADMIN)


def infer_status(client: TestClient, app_id: str, token: str) -> int:
    response = client.post(
        f"/v1/apps/{app_id}/infer",
        content=npy_bytes(FRAME),
        headers={"content-type": "application/x-npy", "authorization": f"Bearer {token}"},
    )
    return response.status_code


def truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


# ------------------------------------------------------------------ tokens


def test_a_damaged_or_missing_token_file_is_restored_from_its_backup(
    models: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with make_client(models, state) as client:
        app = api_of(client).register("cam", fps=30)
    tokens = state / TOKENS_FILE
    assert backup_of(tokens).read_bytes() == tokens.read_bytes()
    for damage in ("truncate", "unlink"):
        if damage == "truncate":
            tokens.write_bytes(tokens.read_bytes()[:20])
        else:
            tokens.unlink()
        with make_client(models, state) as client:
            assert infer_status(client, app.id, app.token) == 200
        assert json.loads(tokens.read_text())["apps"].keys() == {app.id}
        assert (tokens.stat().st_mode & 0o777) == 0o600


def test_tokens_of_apps_whose_model_is_gone_are_kept(models: Path, tmp_path: Path) -> None:
    """Before: a restart dropped the token hashes of apps the runtime did not restore."""
    state = tmp_path / "state"
    with make_client(models, state) as client:
        app = api_of(client).register("cam", fps=30)
    nest = (models / "cam.nest").read_bytes()
    (models / "cam.nest").unlink()
    with make_client(models, state) as client:
        assert infer_status(client, app.id, app.token) == 503
    (models / "cam.nest").write_bytes(nest)
    with make_client(models, state) as client:
        assert infer_status(client, app.id, app.token) == 200


def test_both_token_copies_damaged_stops_the_start_in_one_line_and_keeps_them(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with make_client(models, state) as client:
        api_of(client).register("cam", fps=30)
    tokens = state / TOKENS_FILE
    for path in (tokens, backup_of(tokens)):
        path.write_text("{")
    argv = ["serve", "--models", str(models), "--port", "0", "--state-dir", str(state)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "app token file" in err[0] and "both copies are damaged" in err[0]
    assert "Traceback" not in err[0]
    assert tokens.read_text() == backup_of(tokens).read_text() == "{"


# ------------------------------------------------------------------ start-up


def test_a_state_file_with_values_beyond_todays_bounds_is_clamped_not_dropped(
    models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file written by a daemon without bounds (priority 1e-9, a latency target of
    1e-308 s) starts and keeps the app, within the bounds, with a warning."""
    state = tmp_path / "state"
    with make_client(models, state) as client:
        app = api_of(client).register("cam", target_latency_ms=50)
    saved = json.loads((state / STATE_FILE).read_text())
    saved["apps"][0].update(priority=1e-9, target_latency_s=1e-308)
    for path in (state / STATE_FILE, backup_of(state / STATE_FILE)):
        path.write_text(json.dumps(saved))
    with make_client(models, state) as client:
        shown = client.get(f"/v1/apps/{app.id}").json()
        assert (shown["priority"], shown["target_latency_ms"]) == (0.001, 0.1)
        assert infer_status(client, app.id, app.token) == 200
    assert "priority 1e-09 -> 0.001" in caplog.text


def test_a_state_file_without_a_good_copy_exits_2_in_one_line(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text("[")
    argv = ["serve", "--models", str(models), "--port", "0", "--state-dir", str(state)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime state" in err[0] and "only copy is damaged" in err[0]
    assert (state / STATE_FILE).read_text() == "["


# ------------------------------------------------------------------ what the operator sees


def test_an_app_broken_at_start_is_listed_with_its_problem_and_serves_after_a_reload(
    models: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with make_client(models, state) as client:
        app = api_of(client).register("cam", fps=30)
    original = (models / "cam.nest").read_bytes()
    truncate(models / "cam.nest")
    with make_client(models, state) as client:
        api = api_of(client)
        listed = {a["id"]: a for a in api.apps()}
        shown = listed[app.id]
        assert shown["state"] == "unavailable" and "truncated" in shown["problem"]
        assert str(models) not in shown["problem"]  # file names, not directories
        assert (shown["descendant"], shown["accuracy"]) == (None, None)
        metrics = api.metrics()  # before: float(None) for its descendant, a 500
        assert f'nestdnn_app_state{{app="{app.id}",model="cam",state="unavailable"}} 1.0' in (
            metrics
        )
        with pytest.raises(ApiError) as unavailable:
            api.infer(app.id, FRAME, token=app.token)
        assert unavailable.value.status == 503
        assert unavailable.value.body["type"].endswith(":model-unavailable")

        (models / "cam.nest").write_bytes(original)
        for token in (None, "another token"):
            headers = {} if token is None else {"authorization": f"Bearer {token}"}
            assert client.post("/v1/admin/reload", headers=headers).status_code in (401, 403)
        reloaded = client.post("/v1/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
        assert reloaded.status_code == 200, reloaded.text
        body = reloaded.json()
        assert body["added"] == ["cam"] and body["rejected"] == []
        assert [a["state"] for a in body["schedule"]["apps"]] == ["serving"]
        assert api.infer(app.id, FRAME, token=app.token)["descendant"] >= 0
        assert api.app(app.id)["state"] == "serving"


def test_a_reload_of_a_vanished_models_directory_is_503_and_changes_nothing(
    models: Path, tmp_path: Path
) -> None:
    with make_client(models, tmp_path / "state") as client:
        app = api_of(client).register("cam", fps=30)
        moved = models.rename(tmp_path / "elsewhere")
        answer = client.post("/v1/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 503 and "reload failed" in answer.json()["detail"]
        moved.rename(models)
        assert infer_status(client, app.id, app.token) == 200


def test_schedule_and_metrics_show_measured_memory_beside_the_accounted_bytes(
    models: Path, tmp_path: Path
) -> None:
    with make_client(models, tmp_path / "state") as client:
        api = api_of(client)
        app = api.register("cam", fps=30)
        api.infer(app.id, FRAME)
        schedule = api.schedule()
        assert schedule["process_resident_bytes"] > schedule["accounted_bytes"] > 0
        assert schedule["idle_bytes"] >= 0 and set(schedule["latency_scale"]) <= {"cam", "mic"}
        shown = schedule["apps"][0]
        assert shown["state"] == "serving" and shown["problem"] is None
        assert shown["failures"] == 0 and shown["latency_assumed_ms"] > 0
        metrics = api.metrics()
        line = next(x for x in metrics.splitlines() if x.startswith("nestdnn_process_resident"))
        assert float(line.split()[-1]) > 0


# ------------------------------------------------------------------ a live daemon


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live(models: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    serve = ServeProcess(
        models,
        tmp_path / "state",
        free_port(),
        tmp_path / "serve.log",
        admin_token=ADMIN,
        registration_token=REGISTRAR,
    )
    with serve:
        yield serve


def scores(api: DaemonClient, app_id: str) -> list[float]:
    return [entry["score"] for entry in api.infer(app_id, FRAME, top_k=4)["top_k"]]


def sighup_reload(serve: ServeProcess, count: int) -> None:
    """Send SIGHUP and wait for the ``count``-th reload to be logged."""
    os.kill(serve.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while serve.log_path.read_text().count("models reloaded (SIGHUP)") < count:
        assert serve.process is not None and serve.process.poll() is None, "daemon died"
        assert time.monotonic() < deadline, serve.log_path.read_text()
        time.sleep(0.05)


def test_model_files_changed_under_a_live_daemon_serve_only_validated_bytes(
    live: ServeProcess, models: Path, source: Path
) -> None:
    """Copied over in place, replaced by rename, truncated: the daemon lives on and serves the
    weights it validated until a reload (SIGHUP or the admin endpoint), then the new ones."""
    api = DaemonClient(live.url, registration_token=REGISTRAR, admin_token=ADMIN)
    app = api.register("cam", fps=30)
    first = scores(api, app.id)
    nest, profile = models / "cam.nest", models / "cam.profile.json"
    kept = source / "cam.nest"

    shutil.copyfile(source / "next" / "cam.nest", nest)  # in place: truncated, then written
    shutil.copyfile(source / "next" / "cam.profile.json", profile)
    assert scores(api, app.id) == first
    sighup_reload(live, 1)
    second = scores(api, app.id)
    assert second != first

    shutil.copyfile(kept, nest.with_name("incoming.tmp"))  # by rename: a new inode
    os.replace(nest.with_name("incoming.tmp"), nest)
    shutil.copyfile(source / "cam.profile.json", profile)
    assert scores(api, app.id) == second
    reload = api.reload()
    assert reload["changed"] == ["cam"]
    assert scores(api, app.id) == first

    truncate(nest)
    try:
        assert scores(api, app.id) == first
    except ApiError as refused:  # a load would have needed the changed file
        assert refused.status == 503
    sighup_reload(live, 2)
    with pytest.raises(ApiError) as unavailable:
        api.infer(app.id, FRAME)
    assert unavailable.value.status == 503 and "cam.nest" in unavailable.value.detail
    shutil.copyfile(kept, nest)
    sighup_reload(live, 3)
    assert scores(api, app.id) == first
    assert api.health()["status"] == "ok"
    assert live.stop() == -signal.SIGTERM
