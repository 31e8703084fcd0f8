"""The machine's yardstick: a fixed conv stack timed beside every backend's descendants.

Three seeded 3x3 convs with ReLUs and a max pool on a 1x28x28 input (about 5.5 M MACs). Its
median, timed in the same rounds as a backend's descendants, says how fast the machine was
while they were measured, so latencies taken at different times compare as ratios to it; the
daemon times it again at start to scale the profile's latencies to the machine's speed now.
It runs on the backend being measured (torch, or onnxruntime from the same weights), so the
daemon can time it without torch. The weights come from numpy's seeded generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from profiles.latency import Runner

INPUT_SHAPE = (1, 28, 28)
CHANNELS = ((1, 16), (16, 32), (32, 32))
POOL_AFTER = 1  # the max pool follows the second conv
SEED = 0


def reference_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each conv, seeded: the same numbers on every machine and backend."""
    rng = np.random.default_rng(SEED)
    return [((rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(np.float32),
             (rng.standard_normal(c_out) * 0.1).astype(np.float32)) for c_in, c_out in CHANNELS]


def reference_onnx() -> bytes:
    """The reference stack as an ONNX model (input ``input``, output ``out``)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, x = [], [], "input"
    weights = reference_weights()
    for i, (weight, bias) in enumerate(weights):
        initializers += [numpy_helper.from_array(weight, f"w{i}"),
                         numpy_helper.from_array(bias, f"b{i}")]
        relu = "out" if i == len(weights) - 1 else f"r{i}"
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [relu])]
        x = relu
        if i == POOL_AFTER:
            nodes.append(helper.make_node("MaxPool", [x], ["p"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = "p"
    graph = helper.make_graph(
        nodes, "nestdnn-reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *INPUT_SHAPE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def onnxruntime_reference_runner(threads: int) -> Runner:
    """The reference stack on onnxruntime, one batch-1 run per call."""
    from profiles.latency import fixed_input
    from profiles.onnxrt import onnxruntime

    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False  # as the descendants' sessions (profiles.onnxrt)
    session = ort.InferenceSession(reference_onnx(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {"input": fixed_input(INPUT_SHAPE)}

    def run() -> Any:
        return session.run(["out"], feeds)

    return run

