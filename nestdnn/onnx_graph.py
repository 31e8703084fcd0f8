"""The ONNX graph of a descendant, written from its family's layer graph (no torch).

`descendant_onnx(config)` writes the inference graph (`nestdnn.inference`: batch norms folded
into convs) as an ONNX model whose weight initializers are *external stubs*: names, shapes and
dtypes only. The weights never leave the `.nest`: whoever creates a session supplies them by
name (`nestdnn.inference.folded_weights`; onnxruntime's ``add_external_initializers`` copies
them in), so these files are a few kilobytes, can ship beside the `.nest` and be cached keyed
by its hash. ``with_weights=True`` embeds the weights instead (a standalone model file).

Input ``input`` is (N, C, H, W) with a dynamic batch ``N``; output ``logits`` is (N, classes).
The ``onnx`` package is needed to write graphs, never to run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nestdnn.arch import ModelConfig, model_graph
from nestdnn.arch.graph import INPUT, Activation, Add, BatchNorm, Dropout, GlobalAvgPool, Linear
from nestdnn.arch.graph import MaxPool as MaxPoolNode
from nestdnn.errors import NestError
from nestdnn.inference import BN_TENSORS, FoldedConv, fold_plan, folded_weights

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # opset 17's IR version: every supported onnxruntime reads it
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXTERNAL_LOCATION = "supplied-by-the-session"


def descendant_onnx(config: ModelConfig, weights: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The serialized ONNX model of a config; weights embedded if given, else external stubs.

    With stubs, every initializer that `folded_weights` produces is declared by name, shape
    and dtype and must be supplied when the session is created.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise NestError("writing ONNX graphs needs the 'onnx' package (pip install onnx)") from e
    graph = model_graph(config)
    plan = fold_plan(graph)
    shapes = _initializer_shapes(plan, graph)
    writer = _Writer(helper, shapes, graph.output)
    for step in plan:
        writer.emit(step)
    names = writer.initializers
    if weights is None:
        initializers = [_stub(TensorProto, name, shapes[name]) for name in names]
    else:
        initializers = [numpy_helper.from_array(np.ascontiguousarray(weights[name]), name)
                        for name in names]
    size = config.input_size
    proto = helper.make_graph(
        writer.nodes, f"nestdnn-{config.arch}", [helper.make_tensor_value_info(
            INPUT_NAME, TensorProto.FLOAT, ["batch", config.in_channels, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                       ["batch", config.num_classes])],
        initializers + writer.constants)
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              ir_version=ONNX_IR_VERSION, producer_name="nestdnn")
    if weights is not None:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every initializer the session must be given (float32)."""
    graph = model_graph(config)
    return _initializer_shapes(fold_plan(graph), graph)


def _initializer_shapes(plan: list[Any], graph: Any) -> dict[str, tuple[int, ...]]:
    state = graph.state()
    shapes: dict[str, tuple[int, ...]] = {}
    for step in plan:
        if isinstance(step, FoldedConv):
            weight = state[f"{step.conv.name}.weight"].shape
            shapes[f"{step.conv.name}.weight"] = weight
            shapes[f"{step.conv.name}.bias"] = (weight[0],)
        elif isinstance(step, Linear):
            weight = state[f"{step.name}.weight"].shape
            shapes[f"{step.name}.weight"] = weight
            shapes[f"{step.name}.bias"] = (weight[0],)
        elif isinstance(step, BatchNorm):
            for t in BN_TENSORS:
                shapes[f"{step.name}.{t}"] = state[f"{step.name}.{t}"].shape
    return shapes


def _stub(tensor_proto: Any, name: str, shape: tuple[int, ...]) -> Any:
    """An initializer declared by name, shape and dtype whose data the session supplies."""
    stub = tensor_proto(name=name, dims=list(shape), data_type=tensor_proto.FLOAT)
    stub.data_location = tensor_proto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", EXTERNAL_LOCATION
    return stub


class _Writer:
    """Turns inference steps into ONNX nodes, naming values and collecting initializers."""

    def __init__(self, helper: Any, shapes: Mapping[str, tuple[int, ...]], output: str) -> None:
        self._helper = helper
        self._shapes = shapes
        self._output = output
        self.nodes: list[Any] = []
        self.initializers: list[str] = []
        self.constants: list[Any] = []
        self._names: dict[str, str] = {INPUT: INPUT_NAME}

    def emit(self, step: Any) -> None:
        x = [self._names[v] for v in step.inputs]
        out = step.output
        if isinstance(step, FoldedConv):
            conv = step.conv
            weight = self._weight(f"{conv.name}.weight")
            groups = self._shapes[weight][0] if conv.depthwise else 1
            self._node("Conv", [x[0], weight, self._weight(f"{conv.name}.bias")], out,
                       kernel_shape=[conv.kernel] * 2, strides=[conv.stride] * 2,
                       pads=[conv.padding] * 4, group=groups)
        elif isinstance(step, Activation):
            if step.kind == "relu":
                self._node("Relu", x, out)
            else:
                self._node("Clip", [x[0], self._constant(f"{out}.min", 0.0),
                                    self._constant(f"{out}.max", 6.0)], out)
        elif isinstance(step, MaxPoolNode):
            self._node("MaxPool", x, out, kernel_shape=[step.kernel] * 2,
                       strides=[step.stride] * 2, pads=[step.padding] * 4,
                       ceil_mode=int(step.ceil_mode))
        elif isinstance(step, Add):
            self._node("Add", x, out)
        elif isinstance(step, GlobalAvgPool):
            self._node("GlobalAveragePool", x, f"{out}.pooled")
            self._node("Flatten", [self._names[f"{out}.pooled"]], out, axis=1)
        elif isinstance(step, Dropout):
            self._names[out] = x[0]  # the identity in eval mode
        elif isinstance(step, Linear):
            self._node("Gemm", [x[0], self._weight(f"{step.name}.weight"),
                                self._weight(f"{step.name}.bias")], out, transB=1)
        elif isinstance(step, BatchNorm):
            self._node("BatchNormalization",
                       [x[0], *(self._weight(f"{step.name}.{t}") for t in BN_TENSORS)], out,
                       epsilon=step.eps)
        else:
            raise NestError(f"no ONNX form for graph node {type(step).__name__}")

    def _weight(self, name: str) -> str:
        self.initializers.append(name)
        return name

    def _constant(self, name: str, value: float) -> str:
        self.constants.append(self._helper.make_tensor(name, 1, [], [value]))  # 1: FLOAT
        return name

    def _node(self, op: str, inputs: list[str], value: str, **attrs: Any) -> None:
        """One node writing ``value`` (named ``logits`` if it is the graph's output)."""
        name = OUTPUT_NAME if value == self._output else f"v.{value}"
        self._names[value] = name
        self.nodes.append(self._helper.make_node(op, inputs, [name], name=name, **attrs))


__all__ = ["EXTERNAL_LOCATION", "INPUT_NAME", "ONNX_OPSET", "OUTPUT_NAME", "descendant_onnx",
           "folded_weights", "weight_shapes"]
