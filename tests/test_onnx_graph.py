"""The onnxruntime backend's graphs: torch-free, weightless, and equal to the torch models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from nestdnn.arch import ARCHS, model_graph
from nestdnn.errors import NestError
from nestdnn.inference import FoldedConv, fold_plan, folded_weights
from nestdnn.models import build_model
from nestdnn.onnx_graph import descendant_onnx, weight_shapes
from profiles.onnxrt import session


def randomised(arch: str, in_channels: int, size: int,
               width_mult: float = 0.125) -> torch.nn.Module:
    """A small model with non-trivial batch-norm statistics (the folding has work to do)."""
    torch.manual_seed(0)
    model = build_model(arch, in_channels=in_channels, num_classes=7, input_size=size,
                        width_mult=width_mult)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32), (3, 64)])
def test_sessions_compute_the_torch_models_logits(arch: str, in_channels: int,
                                                  size: int) -> None:
    model = randomised(arch, in_channels, size)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    weights = folded_weights(fold_plan(model_graph(model.config)), state)
    x = np.random.default_rng(1).standard_normal((3, in_channels, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = session(descendant_onnx(model.config), weights, threads=1).run(
        ["logits"], {"input": x})[0]
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_graphs_are_weightless_and_every_batch_norm_folds() -> None:
    model = randomised("resnet20", 1, 28, width_mult=0.5)  # the reproduce model's size
    data = descendant_onnx(model.config)
    proto = onnx.load_from_string(data)
    weight_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    assert len(data) < weight_bytes / 20  # (7.3 kB for 277 kB of weights)
    assert {n.op_type for n in proto.graph.node} == {
        "Conv", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    plan = fold_plan(model_graph(model.config))
    assert all(step.norm is not None for step in plan if isinstance(step, FoldedConv))
    stubs = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert stubs == weight_shapes(model.config)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_embedded_weights_make_a_standalone_model() -> None:
    model = randomised("vgg11", 3, 32)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    weights = folded_weights(fold_plan(model_graph(model.config)), state)
    proto = onnx.load_from_string(descendant_onnx(model.config, weights))
    onnx.checker.check_model(proto)
    assert {t.name for t in proto.graph.initializer} == set(weights)


def test_a_session_missing_a_weight_is_a_clear_error() -> None:
    model = randomised("vgg11", 1, 28)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    weights = folded_weights(fold_plan(model_graph(model.config)), state)
    weights.pop("classifier.bias")
    with pytest.raises(NestError, match="onnxruntime cannot load the graph"):
        session(descendant_onnx(model.config), weights, threads=1)


def test_graph_building_and_folding_import_no_torch() -> None:
    code = ("import sys, nestdnn.onnx_graph, nestdnn.inference, profiles.onnxrt;"
            " assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
