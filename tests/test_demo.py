"""`nestdnn demo --quick`: the whole story on synthetic data, and its refusal of a busy port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

NESTDNN = [sys.executable, "-m", "nestdnn.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_quick_demo_plays_the_whole_scenario(tmp_path: Path) -> None:
    run = subprocess.run(
        [*NESTDNN, "demo", "--quick", "--dir", str(tmp_path), "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for event in [
        "camera starts",
        "doorbell starts",
        "album starts",
        "doorbell's priority -> 3",
        "camera stops",
        "album stops",
        "doorbell stops",
    ]:
        assert f"== {event}" in out
    assert out.count("   why: ") == 7
    assert (tmp_path / "models" / "synthetic-vgg11.nest").exists()
    assert (tmp_path / "models" / "synthetic-vgg11.profile.json").exists()
    # Three apps do not all fit their largest descendant: someone runs a smaller one.
    three_apps = out.split("== album starts")[1].split("==")[0]
    assert "memory" in three_apps and " 0 " in three_apps

    again = subprocess.run(
        [*NESTDNN, "demo", "--quick", "--dir", str(tmp_path), "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in ("train", "prune", "recover", "profile"):
        assert f"[{stage}] reusing" in again.stdout


def test_demo_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        run = subprocess.run(
            [*NESTDNN, "demo", "--quick", "--dir", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2
    assert f"port {port} is already in use" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "train").exists()
