"""The `nestdnn` command: help, stage wiring, the train and inspect commands, error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nestdnn import cli
from nestdnn.checkpoint import load_checkpoint

SUBCOMMANDS = [
    "train",
    "prune",
    "recover",
    "inspect",
    "profile",
    "export",
    "schedule",
    "trace",
    "simulate",
    "serve",
    "demo",
]


def tiny_train_args(out: Path, *extra: str) -> list[str]:
    """A `train` command on a small synthetic set that runs in a few seconds."""
    return [
        "-q",
        "train",
        "--dataset",
        "synthetic",
        "--input-size",
        "16",
        "--synthetic-classes",
        "4",
        "--synthetic-channels",
        "1",
        "--synthetic-samples",
        "400",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def error_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `nestdnn argv`, check it failed with exit 2 and one error line, return that line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("nestdnn: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"    {name} " in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nestdnn {name}")
    summary = next(cmd.summary for cmd in cli.COMMANDS if cmd.name == name)
    assert summary.lower() in out.lower() or len(out.splitlines()) > 4


def test_missing_stage_module_is_an_error_not_a_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ghost = cli.Command("ghost", "a stage nobody wrote", "nestdnn.no_such_stage")
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, ghost))
    with pytest.raises(ModuleNotFoundError, match=r"nestdnn\.no_such_stage"):
        cli.main(["ghost", "--help"])


def test_missing_dependency_inside_a_stage_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_stage.py").write_text("import no_such_dependency_for_nestdnn\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_for_nestdnn"):
        cli._load_stage(cli.Command("broken", "a broken stage", "broken_stage"))


def test_train_writes_checkpoint_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = tiny_train_args(out, "--arch", "vgg11", "--width-mult", "0.125")
    assert cli.main(args) == 0
    assert "test accuracy" in capsys.readouterr().out

    raw = torch.load(out / "vanilla.pt", weights_only=True)
    assert set(raw) == {"config", "state_dict", "meta"}
    model, meta = load_checkpoint(out / "vanilla.pt")
    assert model.config.arch == "vgg11"
    assert (model.config.in_channels, model.config.input_size, model.config.num_classes) == (
        1,
        16,
        4,
    )
    assert meta["class_names"] == ["class0", "class1", "class2", "class3"]

    report = json.loads((out / "train.json").read_text())
    assert report["params"] == model.count_params()
    assert report["macs"] == model.count_macs()
    assert report["test_accuracy"] == meta["test_accuracy"]
    assert 0.0 <= report["val_accuracy"] <= 1.0
    assert report["command"].startswith("nestdnn -q train --dataset synthetic")
    assert len(report["history"]) == 1

    # Rerunning the finished command resumes from the saved state instead of retraining.
    assert cli.main(args) == 0
    assert json.loads((out / "train.json").read_text())["history"] == report["history"]


def test_a_streamed_image_folder_is_trained_and_pruned_streamed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 256, (12, 12), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / "images" / label / f"{i}.png")
    data = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "images")]
    train = ["-q", "train", "--arch", "vgg11", "--width-mult", "0.0625", *data, "--loader",
             "stream", "--workers", "0", "--epochs", "1", "--batch-size", "8", "--threads", "1",
             "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(train) == 0
    _, meta = load_checkpoint(tmp_path / "run" / "vanilla.pt")
    assert meta["streaming"] is True and meta["class_names"] == ["a", "b"]
    prune = ["-q", "prune", "--model", str(tmp_path / "run" / "vanilla.pt"), *data[:2],
             "--min-accuracy", "0", "--min-retrain-steps", "2", "--max-steps", "1",
             "--triplets", "8", "--workers", "0", "--threads", "1",
             "--out", str(tmp_path / "prune")]  # fmt: skip
    assert cli.main(prune) == 0
    roadmap = json.loads((tmp_path / "prune" / "roadmap.json").read_text())
    assert roadmap["dataset"]["streaming"] is True
    assert [a["retrain_steps"] for a in roadmap["attempts"]] == [2]


def test_train_with_explicit_widths(tmp_path: Path) -> None:
    args = tiny_train_args(
        tmp_path, "--arch", "vgg11", "--width-mult", "0.125", "--widths", "features.0=3"
    )
    assert cli.main([*args, "--epochs", "0.1"]) == 0
    model, _ = load_checkpoint(tmp_path / "vanilla.pt")
    assert model.config.widths["features.0"] == 3
    assert model.config.widths["features.4"] == 16  # the rest follows --width-mult


def test_inspect_shows_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_train_args(tmp_path, "--arch", "vgg11", "--width-mult", "0.125", "--epochs", "0.1")
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "vanilla.pt")]) == 0
    assert "vgg11, 1x16x16 -> 4 classes" in capsys.readouterr().out
    assert cli.main(["inspect", "--json", str(tmp_path / "vanilla.pt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "vgg11"
    assert info["meta"]["dataset"] == "synthetic"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arch", "vgg99"], "unknown arch 'vgg99'"),
        (["--arch", "vgg11", "--widths", "features.0=9999"], "allows 1..64"),
        (["--arch", "vgg11", "--lr", "-1"], "learning rate must be positive"),
    ],
)
def test_bad_train_input_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert message in error_of(capsys, tiny_train_args(tmp_path, *extra))


def test_missing_data_path_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-q", "train", "--arch", "vgg16", "--dataset", "fashion-mnist"]
    args += ["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]
    assert "data directory does not exist" in error_of(capsys, args)


def test_corrupt_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "vanilla.pt"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    assert "not a readable checkpoint" in error_of(capsys, ["inspect", str(bad)])


def test_inspect_hands_nest_files_to_the_nest_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "model.nest"
    bad.write_bytes(b"not safetensors")
    error = error_of(capsys, ["inspect", str(bad)])
    assert str(bad) in error
    assert "checkpoint" not in error


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--dataset", "synthetic"]) == 2
    assert "required" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == 2


def test_corrupt_checkpoint_from_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "vanilla.pt"
    bad.write_bytes(b"\x80\x02garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "nestdnn.cli", "inspect", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nestdnn: error: {bad} is not a readable checkpoint")
