"""The device install: serving needs no torch, and a stage that does says which extra."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.auth import ADMIN_TOKEN_ENV
from api.client import DaemonClient
from profiles.synthetic import synthetic_models_dir


def run_without(packages: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``nestdnn ARGV`` in a fresh interpreter where importing ``packages`` fails."""
    code = ("import sys\n"
            f"for name in {packages!r}: sys.modules[name] = None\n"
            "from nestdnn.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("command", "package", "extra"), [
    (["train", "--arch", "vgg11", "--dataset", "synthetic", "--out", "x"], "torch", "train"),
    (["prune", "--model", "m.pt", "--dataset", "synthetic", "--min-accuracy", "0.5",
      "--out", "x"], "torch", "train"),
])
def test_a_stage_whose_extra_is_missing_says_which_in_one_line(
    command: list[str], package: str, extra: str
) -> None:
    done = run_without([package], command)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [f"nestdnn: error: 'nestdnn {command[0]}' needs {package}, which this"
                     f" install lacks: pip install 'nestdnn[{extra}]'"]


def test_serve_on_the_default_backend_never_loads_torch(tmp_path: Path) -> None:
    """`nestdnn serve` in its own process, on a directory of only the `.nest` and its
    profile: it builds the weightless graphs it needs (saying so), an app registers and
    frames run on onnxruntime; the process then has onnxruntime's library mapped and none of
    torch's (a module import of torch would have mapped libtorch)."""
    models = synthetic_models_dir(tmp_path / "models", ["cam"])
    shutil.rmtree(models / "cam.nest.onnxruntime", ignore_errors=True)
    assert sorted(p.name for p in models.iterdir()) == ["cam.nest", "cam.profile.json"]
    port = free_port()
    env = {**os.environ, ADMIN_TOKEN_ENV: "admin-token-for-the-test"}
    command = [sys.executable, "-m", "nestdnn", "serve", "--models", str(models),
               "--port", str(port), "--state-dir", str(tmp_path / "state")]
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        client = DaemonClient(f"http://127.0.0.1:{port}", admin_token=env[ADMIN_TOKEN_ENV])
        wait_healthy(client, process)
        app = client.register("cam", fps=30)
        frame = np.random.default_rng(0).standard_normal((1, 16, 16)).astype(np.float32)
        answers = [client.infer(app.id, frame) for _ in range(5)]
        assert {a["descendant"] for a in answers} == {app.descendant}
        tensor = {"name": "input", "shape": [1, 16, 16], "datatype": "FP32",
                  "data": frame.ravel().tolist()}
        v2 = client.http.post("/v2/models/cam/infer", json={"inputs": [tensor]},
                              headers={"authorization": f"Bearer {app.token}"})
        assert v2.json()["model_version"] == str(app.descendant)
        mapped = mapped_files(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert any("onnxruntime" in path for path in mapped)
    assert [path for path in mapped if "/torch/" in path or "libtorch" in path] == []
    assert [path for path in mapped if "tritonclient" in path or "gevent" in path] == []
    assert "cam: building 3 onnxruntime graphs" in (tmp_path / "serve.log").read_text()
    assert list((models / "cam.nest.onnxruntime").rglob("d*.onnx"))


def mapped_files(pid: int) -> set[str]:
    """The files a process has mapped (its loaded shared libraries among them)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(client: DaemonClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "nestdnn serve exited"
        with contextlib.suppress(httpx.TransportError):
            if client.http.get("/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("nestdnn serve did not become healthy")
