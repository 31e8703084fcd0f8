"""Exporting descendants (pt, ONNX, TFLite, safetensors) and the `inspect` / `export` commands."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_nestfile import FAMILIES, same_state, write_synthetic_nest

from nestdnn.checkpoint import load_checkpoint
from nestdnn.cli.export import configure_export, run_export
from nestdnn.cli.inspect import configure_inspect, run_inspect
from nestdnn.errors import NestError
from nestdnn.export import (
    TFLITE_EXTRA_MESSAGE,
    export_all,
    export_descendant,
    load_standalone,
    save_standalone,
)
from nestdnn.nested import load_descendant
from nestdnn.nestfile import read_manifest

HAS_LITERT = importlib.util.find_spec("litert_torch") is not None


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def nest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param) / "model.nest"
    write_synthetic_nest(path, request.param)
    return path


@pytest.fixture(scope="module")
def vgg_nest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "model.nest"
    write_synthetic_nest(path, "vgg")
    return path


def batch(model: torch.nn.Module, n: int) -> torch.Tensor:
    c = model.config
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=gen)


def reference(path: Path, k: int, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An input batch and descendant k's torch output on it."""
    model = load_descendant(path, k)
    x = batch(model, n)
    with torch.inference_mode():
        return x.numpy(), model(x).numpy()


# ------------------------------------------------------------------------------------ pt


def test_pt_export_is_a_checkpoint_of_the_descendant(nest: Path, tmp_path: Path) -> None:
    out = export_descendant(nest, 1, "pt", tmp_path / "d1.pt")
    model, meta = load_checkpoint(out)
    assert same_state(model.state_dict(), load_descendant(nest, 1).state_dict())
    assert meta["descendant"] == 1 and meta["source"] == str(nest)
    assert meta["val_accuracy"] == read_manifest(nest).descendants[1].val_accuracy
    assert set(torch.load(out, weights_only=True)) == {"config", "state_dict", "meta"}


def test_standalone_safetensors_round_trip(nest: Path, tmp_path: Path) -> None:
    original = load_descendant(nest, 2)
    out = export_descendant(nest, 2, "safetensors", tmp_path / "d2.safetensors")
    model, meta = load_standalone(out)
    assert not model.training and meta["descendant"] == 2
    assert same_state(model.state_dict(), original.state_dict())
    save_standalone(model, tmp_path / "again.safetensors", note="x")
    assert load_standalone(tmp_path / "again.safetensors")[1] == {"note": "x"}


def test_bad_standalone_files_are_rejected(vgg_nest: Path, tmp_path: Path) -> None:
    good = export_descendant(vgg_nest, 0, "safetensors", tmp_path / "d0.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(NestError, match="file is truncated or not a safetensors file"):
        load_standalone(cut)
    with pytest.raises(NestError, match="not a standalone nestdnn model"):
        load_standalone(vgg_nest)


# ---------------------------------------------------------------------------------- ONNX


def test_onnx_export_matches_torch(nest: Path, tmp_path: Path) -> None:
    import onnxruntime

    out = export_descendant(nest, 1, "onnx", tmp_path / "d1.onnx")
    x, expected = reference(nest, 1, n=3)  # batch 3: the batch dimension is dynamic
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input": x})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------- TFLite


def tflite_interpreter(path: Path) -> object:
    """tflite-runtime's interpreter, or ai-edge-litert's (same API) if it is missing."""
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LITERT, reason="litert-torch (extra 'export') is not installed")
@pytest.mark.parametrize("k", [1])
def test_tflite_export_matches_torch(nest: Path, tmp_path: Path, k: int) -> None:
    out = export_descendant(nest, k, "tflite", tmp_path / f"d{k}.tflite")
    x, expected = reference(nest, k, n=1)
    interpreter = tflite_interpreter(out)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == x.shape
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(outp["index"]), expected, atol=1e-4, rtol=0)


def test_tflite_without_the_extra_is_a_clear_error(
    vgg_nest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # makes the import fail
    with pytest.raises(NestError) as caught:
        export_descendant(vgg_nest, 0, "tflite", tmp_path / "d0.tflite")
    assert str(caught.value) == TFLITE_EXTRA_MESSAGE
    assert not list(tmp_path.iterdir())  # no partial file left behind


# -------------------------------------------------------------------------------- export


def test_export_all_writes_every_descendant(vgg_nest: Path, tmp_path: Path) -> None:
    written = export_all(vgg_nest, "pt", tmp_path / "out")
    assert [p.name for p in written] == ["model.d0.pt", "model.d1.pt", "model.d2.pt"]
    for k, path in enumerate(written):
        assert same_state(
            load_checkpoint(path)[0].state_dict(), load_descendant(vgg_nest, k).state_dict()
        )


def test_export_refuses_bad_requests(vgg_nest: Path, tmp_path: Path) -> None:
    with pytest.raises(NestError, match="unknown export format 'keras'"):
        export_descendant(vgg_nest, 0, "keras", tmp_path / "m")
    with pytest.raises(NestError, match="no descendant 7"):
        export_descendant(vgg_nest, 7, "pt", tmp_path / "m.pt")
    with pytest.raises(NestError, match="is a directory"):
        export_descendant(vgg_nest, 0, "pt", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NestError, match="must be a directory"):
        export_all(vgg_nest, "pt", tmp_path / "file")


# ----------------------------------------------------------------------------------- CLI


def parse(configure: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_inspect_prints_the_descendant_table(
    vgg_nest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = read_manifest(vgg_nest)
    assert run_inspect(parse(configure_inspect, [str(vgg_nest)])) == 0
    text = capsys.readouterr().out
    for d in manifest.descendants:
        assert f"{d.params:,}" in text and f"{d.macs:,}" in text and f"{d.bytes:,}" in text
        assert f"{d.val_accuracy:.2%}" in text
    size = vgg_nest.stat().st_size
    largest = manifest.descendants[-1].bytes
    assert f"file {size:,} bytes = largest descendant {largest:,} bytes" in text
    assert f"{sum(d.bytes for d in manifest.descendants):,}" in text


def test_inspect_json(vgg_nest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_inspect(parse(configure_inspect, [str(vgg_nest), "--json"]))
    summary = json.loads(capsys.readouterr().out)
    manifest = read_manifest(vgg_nest)
    assert [d["val_accuracy"] for d in summary["descendants"]] == [
        d.val_accuracy for d in manifest.descendants
    ]
    largest = manifest.descendants[-1].bytes
    assert summary["file_bytes"] == vgg_nest.stat().st_size
    assert summary["overhead_over_largest"] == pytest.approx(summary["file_bytes"] / largest - 1)
    assert summary["accumulated_bytes"] == sum(d.bytes for d in manifest.descendants)


def test_inspect_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nest"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(NestError, match="file is truncated or not a safetensors file"):
        run_inspect(parse(configure_inspect, [str(bad)]))


def test_export_command(vgg_nest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "one.onnx"
    assert (
        run_export(
            parse(
                configure_export,
                [str(vgg_nest), "--descendant", "2", "--format", "onnx", "--out", str(out)],
            )
        )
        == 0
    )
    assert capsys.readouterr().out.split() == [str(out)] and out.is_file()
    run_export(
        parse(
            configure_export,
            [str(vgg_nest), "--all", "--format", "safetensors", "--out", str(tmp_path / "all")],
        )
    )
    assert len(capsys.readouterr().out.split()) == 3
    with pytest.raises(SystemExit):  # exactly one of --descendant / --all
        parse(configure_export, [str(vgg_nest), "--format", "pt", "--out", str(out)])
    with pytest.raises(NestError, match=r"no such \.nest file"):
        run_export(
            parse(
                configure_export,
                [str(tmp_path / "missing.nest"), "-k", "0", "--format", "pt", "--out", str(out)],
            )
        )
