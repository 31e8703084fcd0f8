"""`nestdnn import`: torchvision state_dicts become checkpoints computing the same function."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from nestdnn.checkpoint import load_checkpoint
from nestdnn.cli import main
from nestdnn.errors import NestError
from nestdnn.importers import (
    IMAGENET_MEAN,
    adaptive_pool_matrix,
    import_torchvision,
)
from pruning.roadmap import load_roadmap

NUM_CLASSES = 5
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "vgg16": torchvision.models.vgg16,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}


@dataclass
class Saved:
    """A randomly initialised torchvision model (eval mode) and its state_dict's file."""

    name: str
    model: nn.Module
    path: Path


class Zoo:
    """torchvision models built and saved once per module, on first use (they are big)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._saved: dict[str, Saved] = {}

    def get(self, name: str) -> Saved:
        if name not in self._saved:
            model = randomised(BUILDERS[name](num_classes=NUM_CLASSES))
            path = self.root / f"{name}.pt"
            torch.save(model.state_dict(), path)
            self._saved[name] = Saved(name, model, path)
        return self._saved[name]


def randomised(model: nn.Module) -> nn.Module:
    """Batch norms with statistics and affine parameters of their own, so a mix-up shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("torchvision"))


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def max_difference(ours: nn.Module, theirs: nn.Module, size: int) -> float:
    x = images(size)
    with torch.no_grad():
        return float((ours(x) - theirs(x)).abs().max())


def import_args(saved: Saved, out: Path, *extra: str) -> list[str]:
    return ["import", f"torchvision:{saved.name}", "--weights", str(saved.path),
            "--out", str(out), *extra]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nestdnn: error: ")
    return err


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("name", list(BUILDERS))
def test_imported_model_equals_torchvision(zoo: Zoo, name: str) -> None:
    saved = zoo.get(name)
    model, meta = import_torchvision(f"torchvision:{name}", saved.path)
    assert model.config.num_classes == NUM_CLASSES and model.config.in_channels == 3
    assert max_difference(model, saved.model, 224) <= 1e-5
    assert meta["source"] == f"torchvision:{name}" and meta["mean"] == list(IMAGENET_MEAN)


@pytest.mark.parametrize("size", [32, 64])
def test_vgg16_at_other_sizes_folds_the_adaptive_pooling(zoo: Zoo, size: int) -> None:
    # 32: the 1x1 feature map is spread over torchvision's 7x7 pool; 64: 2x2 bins overlap
    saved = zoo.get("vgg16")
    model, _ = import_torchvision("torchvision:vgg16", saved.path, input_size=size)
    assert model.state_dict()["classifier.0.weight"].shape[-1] == size // 32
    assert max_difference(model, saved.model, size) <= 1e-5


def test_adaptive_pool_matrix_is_torchs_pooling() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    pooled = torch.nn.functional.adaptive_avg_pool1d(x.unsqueeze(0), 7).squeeze(0)
    torch.testing.assert_close(x @ adaptive_pool_matrix(5, 7).T, pooled)


def test_the_command_writes_a_checkpoint_of_the_same_model(
    zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = zoo.get("mobilenet_v2")
    names = [f"kind{i}" for i in range(NUM_CLASSES)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "imported"
    args = import_args(saved, out, "--class-names-file", str(tmp_path / "classes.txt"),
                       "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert main(args) == 0
    assert "mobilenetv2: 5 classes" in capsys.readouterr().out
    model, meta = load_checkpoint(out / "vanilla.pt")
    assert max_difference(model, saved.model, 224) <= 1e-5
    assert meta["class_names"] == names and meta["std"] == [0.25] * 3
    assert (out / "import.json").is_file()


def test_safetensors_and_wrapped_state_dicts_import(zoo: Zoo, tmp_path: Path) -> None:
    saved = zoo.get("mobilenet_v2")
    state = saved.model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "wrapped.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "wrapped.pt"):
        model, _ = import_torchvision("torchvision:mobilenet_v2", path)
        assert max_difference(model, saved.model, 224) <= 1e-5


def test_prune_accepts_the_imported_checkpoint(zoo: Zoo, tmp_path: Path) -> None:
    saved = zoo.get("mobilenet_v2")
    out = tmp_path / "imported"
    assert main(import_args(saved, out, "--input-size", "64")) == 0
    prune = tmp_path / "prune"
    assert main([
        "prune", "--model", str(out / "vanilla.pt"), "--dataset", "synthetic",
        "--min-accuracy", "0", "--max-steps", "1", "--retrain-epochs", "0.02",
        "--batch-size", "8", "--triplets", "8", "--threads", "1", "--out", str(prune),
    ]) == 0  # fmt: skip
    roadmap = load_roadmap(prune / "roadmap.json")
    assert roadmap.model_config["arch"] == "mobilenetv2" and len(roadmap.steps) == 2


# ------------------------------------------------------------------------------ bad input


def test_a_state_dict_of_another_architecture_names_the_first_mismatch(
    zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = zoo.get("resnet18")
    args = import_args(saved, tmp_path / "out", "--class-names", "a,b,c,d,e")
    args[1] = "torchvision:resnet50"
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "does not match torchvision:resnet50: layer1.0.conv1.weight has shape" in err
    assert "(64, 64, 3, 3), expected (64, 64, 1, 1)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.pop("features.3.conv.1.1.running_var"),
     "missing features.3.conv.1.1.running_var (expected shape (144,))"),
    (lambda s: s.update({"features.5.conv.2.weight": torch.zeros(32, 190, 1, 1)}),
     "features.5.conv.2.weight has shape (32, 190, 1, 1), expected (32, 192, 1, 1)"),
    (lambda s: s.update({"fc.weight": torch.zeros(5, 1280)}),
     "unexpected fc.weight (shape (5, 1280))"),
    (lambda s: s.pop("classifier.1.weight"),
     "expected classifier.1.weight with 2 dimensions, found no such key"),
])  # fmt: skip
def test_mismatching_tensors_are_named(zoo: Zoo, tmp_path: Path, edit: Callable[[dict], object],
                                       message: str) -> None:
    state = dict(zoo.get("mobilenet_v2").model.state_dict())
    edit(state)
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(NestError) as e:
        import_torchvision("torchvision:mobilenet_v2", tmp_path / "edited.pt")
    assert f"edited.pt does not match torchvision:mobilenet_v2: {message}" in str(e.value)


class Payload:
    """Unpickling this runs a shell command (what a malicious weights file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "x": Payload(marker)}, path)
    args = ["import", "torchvision:resnet18", "--weights", str(path), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "evil.pt is refused: it holds pickled Python objects besides tensors" in (
        one_line_error(capsys))
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused(tmp_path: Path) -> None:
    torch.save(torchvision.models.mobilenet_v2(num_classes=2), tmp_path / "model.pt")
    with pytest.raises(NestError, match=r"is refused: .*save the model's state_dict"):
        import_torchvision("torchvision:mobilenet_v2", tmp_path / "model.pt")


@pytest.mark.parametrize(("args", "message"), [
    (["--input-size", "32"], "torchvision:mobilenet_v2 imports at --input-size 64 or more"),
    (["--class-names", "a,b"], "2 class names given; the classifier has 5 classes"),
    (["--class-names", "a,b,,d,e"], "class names must be non-empty and distinct"),
    (["--mean", "0.5"], "--mean and --std need 3 values each"),
    (["--std", "1,0,1"], "--std values must be positive"),
])  # fmt: skip
def test_bad_options_are_one_line_errors(
    zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
    message: str
) -> None:
    assert main(import_args(zoo.get("mobilenet_v2"), tmp_path / "out", *args)) == 2
    assert message in one_line_error(capsys)


def test_unknown_sources_and_unreadable_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01\x00")
    cases = [
        ("torchvision:alexnet", "missing.pt", "cannot import 'torchvision:alexnet'; choose one of"),
        ("torchvision:resnet18", "missing.pt", "weights file not found"),
        ("torchvision:resnet18", "junk.pt", "junk.pt is not a readable torch weights file"),
        ("torchvision:resnet18", "junk.safetensors", "is not a readable safetensors file"),
    ]
    for source, file, message in cases:
        args = ["import", source, "--weights", str(tmp_path / file), "--out", str(tmp_path)]
        assert main(args) == 2
        assert message in one_line_error(capsys)
