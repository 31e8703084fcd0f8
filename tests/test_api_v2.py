"""The Open Inference Protocol (KServe v2) beside /v1: a live `nestdnn serve` driven with
`tritonclient.http` (JSON and binary tensors), every endpoint's field names, model_version
following the plan, and bad input answered 4xx with {"error": ...}, never 5xx."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from api.app import create_app
from api.auth import ADMIN_TOKEN_ENV, REGISTRATION_TOKEN_ENV
from api.client import DaemonClient
from api.daemon import ApiSettings
from api.launcher import ServeProcess
from api.v2.identity import ANONYMOUS_NAME, APP_HEADER
from profiles.schema import load_profile
from profiles.synthetic import synthetic_models_dir
from scheduler.daemon import ModelCatalogue, Runtime, RuntimeSettings
from scheduler.daemon.errors import BadModelOutput, ModelUnavailable

ADMIN = "v2-admin-token"
REGISTRAR = "v2-registration-token"
SHAPE = (1, 16, 16)
OUTPUTS = ("probabilities", "label", "class_name")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_models_dir(tmp_path_factory.mktemp("v2-models"), ["alpha", "beta"])


@pytest.fixture(scope="module")
def daemon(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One live daemon for the module (64 MB budget, queues of 16)."""
    work = tmp_path_factory.mktemp("v2-daemon")
    serve = ServeProcess(models_dir, work / "state", free_port(), work / "serve.log",
                         admin_token=ADMIN, registration_token=REGISTRAR,
                         extra_args=["--memory-budget", "64MB", "--queue-size", "16"])
    with serve:
        yield serve


@pytest.fixture
def api(daemon: ServeProcess) -> Iterator[DaemonClient]:
    with DaemonClient(daemon.url, registration_token=REGISTRAR, admin_token=ADMIN) as client:
        yield client
        for app in client.apps():
            client.unregister(app["id"], token=ADMIN)
        client.set_schedule(memory_budget_bytes=64_000_000)


@pytest.fixture
def tc(daemon: ServeProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(daemon.url.removeprefix("http://"))
    yield client
    client.close()


def frames(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, *SHAPE)).astype(np.float32)


def infer(tc: triton.InferenceServerClient, token: str, array: np.ndarray, *,
          binary: bool = True, datatype: str = "FP32", version: str = "",
          outputs: tuple[str, ...] = OUTPUTS, **kwargs: object) -> triton.InferResult:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    return tc.infer("alpha", [tensor], model_version=version, outputs=wanted,
                    headers=bearer(token), **kwargs)


# ------------------------------------------------------------------ endpoints, per the spec


def test_health_and_server_metadata(tc: triton.InferenceServerClient, daemon: ServeProcess
                                    ) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert httpx.get(f"{daemon.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{daemon.url}/v2/health/ready").json() == {"ready": True}
    meta = tc.get_server_metadata()
    assert set(meta) == {"name", "version", "extensions"} and meta["name"] == "nestdnn"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_config_and_readiness(tc: triton.InferenceServerClient,
                                             api: DaemonClient, models_dir: Path) -> None:
    descendants = len(load_profile(models_dir / "alpha.profile.json").descendants)
    meta = tc.get_model_metadata("alpha")
    assert set(meta) == {"name", "versions", "platform", "inputs", "outputs"}
    assert meta["versions"] == [str(k) for k in range(descendants)]
    assert meta["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 16, 16, 1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, 4]), ("label", "INT64", [-1, 1]),
        ("class_name", "BYTES", [-1, 1])]
    assert tc.get_model_metadata("alpha", "0") == meta
    config = tc.get_model_config("alpha")
    assert config["max_batch_size"] > 1 and config["input"][0]["dims"] == [16, 16, 1]
    assert tc.is_model_ready("alpha")

    app = api.register("alpha", target_latency_ms=1000)
    assert tc.is_model_ready("alpha", str(app.descendant), headers=bearer(app.token))
    other = str((app.descendant + 1) % descendants)
    assert not tc.is_model_ready("alpha", other, headers=bearer(app.token))
    assert not tc.is_model_ready("alpha", "99") and not tc.is_model_ready("nope")


def test_statistics_and_metrics_count_per_version(
    tc: triton.InferenceServerClient, api: DaemonClient
) -> None:
    app = api.register("alpha", target_latency_ms=1000)
    before = tc.get_inference_statistics("alpha", str(app.descendant))["model_stats"][0]
    infer(tc, app.token, frames(3))
    stats = tc.get_inference_statistics("alpha", str(app.descendant))["model_stats"][0]
    assert stats["inference_count"] == before["inference_count"] + 3
    assert (stats["inference_stats"]["success"]["count"]
            == before["inference_stats"]["success"]["count"] + 1)
    assert stats["inference_stats"]["compute_infer"]["ns"] > 0
    text = api.metrics()
    label = f'{{model="alpha",version="{app.descendant}"}}'
    for name in ("request_success", "count", "queue_duration_us", "compute_infer_duration_us"):
        assert f"nestdnn_inference_{name}_total{label}" in text


# ------------------------------------------------------------------ inference


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_a_batch_as_v1_does(
    tc: triton.InferenceServerClient, api: DaemonClient, binary: bool
) -> None:
    app = api.register("alpha", target_latency_ms=1000)
    batch = frames(5)
    result = infer(tc, app.token, batch, binary=binary, request_id="r-1")
    answer = result.get_response()
    assert set(answer) >= {"model_name", "model_version", "id", "outputs"}
    assert answer["model_name"] == "alpha" and answer["id"] == "r-1"
    assert answer["model_version"] == str(app.descendant)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (5, 4) and probabilities.dtype == np.float32
    labels = result.as_numpy("label")
    assert labels.shape == (5, 1) and (labels[:, 0] == probabilities.argmax(1)).all()
    names = [n.decode() if isinstance(n, bytes) else n for n in result.as_numpy("class_name")[:, 0]]
    assert names == [f"class{k}" for k in labels[:, 0]]
    for row in (0, 4):
        v1 = api.infer(app.id, batch[row], top_k=4)
        scores = {t["label"]: t["score"] for t in v1["top_k"]}
        assert np.allclose([scores[k] for k in range(4)], probabilities[row], atol=1e-5)
    for output in answer["outputs"]:
        assert set(output) >= {"name", "shape", "datatype"}
        assert ("data" in output) != binary and ("parameters" in output) == binary


def test_uint8_pixels_and_a_single_unbatched_frame(
    tc: triton.InferenceServerClient, api: DaemonClient
) -> None:
    app = api.register("alpha", target_latency_ms=1000)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    result = infer(tc, app.token, pixels, datatype="UINT8")
    v1 = api.infer(app.id, pixels[1], top_k=1)  # .npy uint8 pixels: /v1's conversion
    assert result.as_numpy("label")[1, 0] == v1["label"]
    single = infer(tc, app.token, frames(1)[0], outputs=("probabilities",))
    assert single.as_numpy("probabilities").shape == (1, 4)
    assert [o["name"] for o in single.get_response()["outputs"]] == ["probabilities"]


def test_no_outputs_named_gives_every_output_in_binary(
    tc: triton.InferenceServerClient, api: DaemonClient
) -> None:
    app = api.register("alpha", target_latency_ms=1000)
    tensor = triton.InferInput("input", [2, *SHAPE], "FP32")
    tensor.set_data_from_numpy(frames(2))
    result = tc.infer("alpha", [tensor], headers=bearer(app.token))
    assert [o["name"] for o in result.get_response()["outputs"]] == list(OUTPUTS)
    assert result.as_numpy("probabilities").shape == (2, 4)


def test_model_version_follows_the_plan_and_a_pinned_version_must_be_in_force(
    tc: triton.InferenceServerClient, api: DaemonClient, models_dir: Path
) -> None:
    table = load_profile(models_dir / "alpha.profile.json").descendants
    app = api.register("alpha", target_latency_ms=1000)
    first = app.descendant
    assert first > 0, "the loose target should give a larger descendant than the smallest"
    assert infer(tc, app.token, frames(1)).get_response()["model_version"] == str(first)
    assert infer(tc, app.token, frames(1), version=str(first)).get_response()[
        "model_version"] == str(first)

    api.set_schedule(memory_budget_bytes=table[0].bytes)  # only the smallest fits now
    switched = infer(tc, app.token, frames(1)).get_response()["model_version"]
    assert switched == "0" and api.app(app.id)["switches"] >= 1
    metrics = api.metrics()
    moved = f'nestdnn_app_switch_bytes_total{{app="{app.id}",model="alpha"}} '
    assert float(metrics.split(moved)[1].split()[0]) >= table[0].bytes  # d0 was loaded
    assert f'nestdnn_app_descendant{{app="{app.id}",model="alpha"}} 0.0' in metrics
    with pytest.raises(InferenceServerException) as refused:
        infer(tc, app.token, frames(1), version=str(first))
    assert refused.value.status() == "409" and "descendant 0" in refused.value.message()
    assert not tc.is_model_ready("alpha", str(first), headers=bearer(app.token))


def test_timeout_is_honoured_and_priority_refused(
    tc: triton.InferenceServerClient, api: DaemonClient
) -> None:
    app = api.register("alpha", target_latency_ms=1000)
    assert infer(tc, app.token, frames(2), timeout=60_000_000).as_numpy("label").shape == (2, 1)
    with pytest.raises(InferenceServerException) as expired:
        infer(tc, app.token, frames(64), timeout=1)  # 1 us: no row can have run
    assert expired.value.status() == "429" and "timeout" in expired.value.message()
    with pytest.raises(InferenceServerException) as priority:
        infer(tc, app.token, frames(1), priority=2)
    assert priority.value.status() == "400" and "PATCH /v1/apps" in priority.value.message()


# ------------------------------------------------------------------ bad input: 4xx, never 5xx


def json_request(array: list | None = None, **changes: object) -> bytes:
    tensor = {"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
              "data": array if array is not None else [0.0] * 256}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


def binary_request(size: int, declared: int | None = None, sent: int = 1024
                   ) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, *SHAPE], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    length = len(header) if declared is None else declared
    return header + b"\0" * sent, {"Inference-Header-Content-Length": str(length)}


def test_bad_input_is_4xx_with_an_error_object(daemon: ServeProcess, api: DaemonClient) -> None:
    app = api.register("alpha", target_latency_ms=1000)
    beta = api.register("beta", target_latency_ms=1000)
    own = bearer(app.token)
    url = f"{daemon.url}/v2/models"
    too_short, _ = binary_request(1024, declared=1 << 20)
    cases = [
        ("wrong datatype", "alpha/infer", own, json_request(datatype="INT32"), {}, 400),
        ("bytes datatype", "alpha/infer", own, json_request(datatype="BYTES"), {}, 400),
        ("wrong shape", "alpha/infer", own, json_request(shape=[2, 3, 5, 7, 11], array=[0] * 2310),
         {}, 400),
        ("rank 1", "alpha/infer", own, json_request(shape=[256]), {}, 400),
        ("elements vs data", "alpha/infer", own, json_request(array=[0.0] * 255), {}, 400),
        ("ragged data", "alpha/infer", own, json_request(array=[[0.0], [0.0, 1.0]]), {}, 400),
        ("strings as data", "alpha/infer", own, json_request(array=["a"] * 256), {}, 400),
        ("NaN frame", "alpha/infer", own, json_request(array=[1e39] * 256), {}, 400),
        ("input name", "alpha/infer", own, json_request(name="x"), {}, 400),
        ("binary size vs shape", "alpha/infer", own, *binary_request(1000), 400),
        ("binary size past the end", "alpha/infer", own, *binary_request(4096), 400),
        ("header length past the end", "alpha/infer", own, too_short,
         {"Inference-Header-Content-Length": str(1 << 20)}, 400),
        ("header length not a number", "alpha/infer", own, too_short,
         {"Inference-Header-Content-Length": "-3"}, 400),
        ("binary left over", "alpha/infer", own, *binary_request(1024, sent=1030), 400),
        ("not JSON", "alpha/infer", own, b"\x00\x01", {}, 400),
        ("unknown field", "alpha/infer", own, b'{"inputs": [], "x": 1}', {}, 400),
        ("unknown output", "alpha/infer", own,
         b'{"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": '
         + json.dumps([0.0] * 256).encode() + b'}], "outputs": [{"name": "x"}]}', {}, 400),
        ("unknown parameter", "alpha/infer", own,
         b'{"parameters": {"sequence_id": 3}, "inputs": []}', {}, 400),
        ("compressed", "alpha/infer", own, json_request(), {"Content-Encoding": "gzip"}, 415),
        ("unknown model", "nope/infer", own, json_request(), {}, 404),
        ("unknown version", "alpha/versions/7/infer", own, json_request(), {}, 404),
        ("version not a number", "alpha/versions/x/infer", own, json_request(), {}, 404),
        ("missing token", "alpha/infer", {}, json_request(), {}, 401),
        ("not a token", "alpha/infer", bearer("nope"), json_request(), {}, 401),
        ("admin token", "alpha/infer", bearer(ADMIN), json_request(), {}, 403),
        ("another model's app", "alpha/infer", bearer(beta.token), json_request(), {}, 403),
        ("query parameter", "alpha/infer?x=1", own, json_request(), {}, 400),
    ]
    for what, path, auth, body, headers, status in cases:
        answer = httpx.post(f"{url}/{path}", content=body, headers={**auth, **headers})
        assert answer.status_code == status, (what, answer.text)
        assert answer.headers["content-type"] == "application/json", what
        error = answer.json()
        assert list(error) == ["error"] and isinstance(error["error"], str) and error["error"]
    assert httpx.get(f"{url}/nope").json() == {"error": "no model named 'nope' (served: alpha, "
                                                        "beta)"}
    assert httpx.get(f"{url}/alpha/versions/7").status_code == 404
    assert httpx.get(f"{daemon.url}/v2/health/live?x=1").status_code == 400
    assert "status=\"5" not in "\n".join(
        line for line in api.metrics().splitlines() if line.startswith("nestdnn_http_requests"))


def test_openapi_documents_v2_errors_as_the_protocols_error_object(
    daemon: ServeProcess,
) -> None:
    schema = httpx.get(f"{daemon.url}/openapi.json").json()
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    v2 = {path: ops for path, ops in schema["paths"].items() if path.startswith("/v2")}
    assert "/v2/models/{model}/versions/{version}/infer" in v2 and "/v2/health/ready" in v2
    for path, operations in v2.items():
        for operation in operations.values():
            responses = operation["responses"]
            assert "422" not in responses and {"400", "421"} <= set(responses), path
            for status, response in responses.items():
                if int(status) >= 400:
                    assert "application/json" in response["content"], (path, status)


# ------------------------------------------------------------------ who is calling, by policy


def make_client(models_dir: Path, state: Path, registration: str) -> TestClient:
    runtime = Runtime(ModelCatalogue.load(models_dir),
                      RuntimeSettings(memory_budget_bytes=64_000_000, state_dir=state))
    settings = ApiSettings(state_dir=state, registration=registration)  # type: ignore[arg-type]
    return TestClient(create_app(runtime, settings), base_url="http://localhost")


def test_open_registration_serves_token_less_callers_on_one_shared_app(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    monkeypatch.setenv(REGISTRATION_TOKEN_ENV, REGISTRAR)
    body = json_request()
    with make_client(models_dir, tmp_path / "open", "open") as client:
        first = client.post("/v2/models/alpha/infer", content=body)
        second = client.post("/v2/models/alpha/infer", content=body)
        assert first.status_code == second.status_code == 200, first.text
        app_id = first.headers[APP_HEADER]
        assert second.headers[APP_HEADER] == app_id
        apps = client.get("/v1/apps").json()
        assert [(a["id"], a["name"], a["priority"]) for a in apps] == [
            (app_id, ANONYMOUS_NAME, 1.0)]
        assert first.json()["model_version"] == str(apps[0]["descendant"])
    with make_client(models_dir, tmp_path / "open", "open") as client:  # restarted
        again = client.post("/v2/models/alpha/infer", content=body)
        assert again.headers[APP_HEADER] == app_id and len(client.get("/v1/apps").json()) == 1
    with make_client(models_dir, tmp_path / "token", "token") as client:
        refused = client.post("/v2/models/alpha/infer", content=body)
        assert refused.status_code == 401 and "--registration token" in refused.json()["error"]
        assert refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/apps").json() == []


def test_nan_outputs_and_an_unavailable_model_are_5xx_error_objects(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's fault (NaN outputs: 502, counted) and a model that cannot serve (503) are
    the only 5xx of /v2, as of /v1, in the protocol's shape."""
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    monkeypatch.setenv(REGISTRATION_TOKEN_ENV, REGISTRAR)
    with make_client(models_dir, tmp_path / "state", "token") as client:
        app = client.post("/v1/apps", json={"model": "alpha", "target_latency_ms": 1000},
                          headers=bearer(REGISTRAR)).json()
        runtime = client.app.state.daemon.runtime  # type: ignore[attr-defined]

        def nan_outputs(_app_id: str, _frame: np.ndarray) -> Future:
            future: Future = Future()
            future.set_exception(BadModelOutput("alpha d2 computed non-finite outputs"))
            return future

        monkeypatch.setattr(runtime, "submit", nan_outputs)
        answer = client.post("/v2/models/alpha/infer", content=json_request(),
                             headers=bearer(app["token"]))
        assert answer.status_code == 502 and "non-finite" in answer.json()["error"]
        metrics = client.get("/metrics").text
        assert 'nestdnn_bad_model_outputs_total{model="alpha"} 1.0' in metrics
        assert 'nestdnn_inference_request_failure_total{model="alpha",version=""} 1.0' in metrics

        def unavailable(_app_id: str, _frame: np.ndarray) -> Future:
            raise ModelUnavailable("model alpha: alpha.nest is missing")

        monkeypatch.setattr(runtime, "submit", unavailable)
        answer = client.post("/v2/models/alpha/infer", content=json_request(),
                             headers=bearer(app["token"]))
        assert answer.status_code == 503 and answer.json() == {
            "error": "model alpha: alpha.nest is missing"}
