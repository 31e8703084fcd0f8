"""The device install: serving needs no torch, and a stage that does says which extra."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
