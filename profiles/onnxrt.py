"""The onnxruntime backend: sessions of descendants built from the `.nest` alone (no torch).

A descendant's session is its weightless ONNX graph (`nestdnn.onnx_graph`, cached beside the
`.nest` per version of the file: ``NAME.nest.onnxruntime/<sha256[:16]>/dK.onnx``, a few kB)
plus its weights, read from the `.nest` and folded (`nestdnn.inference`), handed to the
session by name; onnxruntime copies them in at creation, so nothing else keeps them.

Sessions run one intra-op thread (the daemon's processor model) with every graph
optimisation on: measured here, the NCHWc layout onnxruntime applies at that level is what
brings VGG-16 x0.25 at batch 1 to the machine's one-thread sgemm rate (without it: 1.1-1.8x
slower). The CPU memory arena is off: as fast here, and a session then holds its weights plus
~0.1-0.2 MB, where an arena rounded its buffers up to power-of-two chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nestdnn.arch import model_graph
from nestdnn.derived import DerivedCache
from nestdnn.errors import NestError
from nestdnn.inference import fold_plan, folded_weights
from nestdnn.nestfile import NestFile
from profiles.latency import Runner, fixed_input

log = logging.getLogger(__name__)

KIND = "onnxruntime"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a NestError naming the package to install."""
    try:
        import onnxruntime
    except ImportError as e:
        raise NestError("the onnxruntime backend needs the 'onnxruntime' package"
                        " (pip install onnxruntime)") from e
    return onnxruntime


def graph_cache(nest: NestFile) -> DerivedCache:
    """The cache of ``nest``'s weightless ONNX graphs."""
    return DerivedCache(nest.path, nest.sha256, KIND, ".onnx")


def descendant_graphs(nest: NestFile, indices: Sequence[int],
                      after_each: Callable[[], None] | None = None) -> list[bytes]:
    """The weightless graphs of the given descendants, built (and cached) where missing."""
    cache = graph_cache(nest)
    graphs = []
    for k in indices:
        graphs.append(cache.get_or_build(k, lambda k: _build_graph(nest, k)))
        if after_each is not None:
            after_each()
    return graphs


def _build_graph(nest: NestFile, k: int) -> bytes:
    from nestdnn.onnx_graph import descendant_onnx

    log.info("building the onnxruntime graph of %s descendant %d", nest.path.name, k)
    return descendant_onnx(nest.manifest.config(k))


def descendant_weights(nest: NestFile, k: int) -> dict[str, np.ndarray]:
    """Descendant ``k``'s inference weights (batch norms folded), read from the file."""
    return folded_weights(fold_plan(model_graph(nest.manifest.config(k))), nest.state(k))


def session(graph: bytes, weights: dict[str, np.ndarray], threads: int) -> Any:
    """A CPU session of ``graph`` with ``weights`` supplied by name (copied in)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False  # measured: no slower here, and it holds only what
    # the session uses (an arena rounds up to power-of-two chunks: +0.1-1 MB per session)
    names = list(weights)
    options.add_external_initializers(
        names, [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names])
    try:
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise NestError(f"onnxruntime cannot load the graph: {e}") from e


def load_session(nest: NestFile, graph: bytes, k: int, threads: int) -> Any:
    """Descendant ``k``'s session, ready to run (one warm-up inference done)."""
    created = session(graph, descendant_weights(nest, k), threads)
    created.run([OUTPUT_NAME], {INPUT_NAME: fixed_input(nest.manifest.input_shape)})
    return created


def logits(created: Any, batch: np.ndarray) -> np.ndarray:
    """The model's logits for a (N, C, H, W) float32 batch."""
    return created.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def ort_runner(created: Any, shape: Sequence[int]) -> Runner:
    """One batch-1 inference on the fixed input."""
    x = fixed_input(shape)
    feeds = {INPUT_NAME: x}
    outputs = [OUTPUT_NAME]

    def run() -> object:
        return created.run(outputs, feeds)

    return run
