"""`nestdnn demo --quick`: the whole story on synthetic data, resuming after being killed,
and its refusal of a busy port."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

NESTDNN = [sys.executable, "-m", "nestdnn.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demo(directory: Path) -> list[str]:
    return [*NESTDNN, "demo", "--quick", "--dir", str(directory), "--port", str(_free_port())]


def _roadmap(directory: Path) -> dict:
    try:
        return json.loads((directory / "prune" / "roadmap.json").read_text())
    except (OSError, ValueError):
        return {"steps": []}


def _kill_during_pruning(directory: Path) -> None:
    """Start the demo and kill it (SIGTERM: no clean-up) once pruning has recorded a step."""
    process = subprocess.Popen(
        _demo(directory), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    try:
        while len(_roadmap(directory)["steps"]) < 2:  # the vanilla model and one pruned step
            assert process.poll() is None, "the demo ended before pruning recorded a step"
            assert time.monotonic() < deadline, "pruning recorded no step in 10 minutes"
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert _roadmap(directory)["stopped"] is None, "pruning finished before the kill"


@pytest.mark.slow
def test_quick_demo_resumes_after_being_killed_and_plays_the_whole_scenario(
    tmp_path: Path,
) -> None:
    _kill_during_pruning(tmp_path)

    run = subprocess.run(_demo(tmp_path), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "[train] reusing" in out
    assert re.search(r"resuming \S+ after step [12]", run.stderr)  # pruning went on
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
    assert re.search(r"synthetic-vgg11\.nest: 3 descendants, from \d+\.\d% of the vanilla", out)
    assert (tmp_path / "models" / "synthetic-vgg11.nest").exists()
    assert (tmp_path / "models" / "synthetic-vgg11.profile.json").exists()
    # Three apps on one model share its copies: they hold less than one copy each would.
    three_apps = out.split("== album starts")[1].split("==")[0]
    held, copies = map(float, re.search(
        r"memory (\d+\.\d+) MB held.*\(one copy per app: (\d+\.\d+) MB", three_apps).groups())
    assert 0 < held < copies

    again = subprocess.run(_demo(tmp_path), capture_output=True, text=True, timeout=600)
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
