"""The TFLite backend: the runtime's interpreter and the conversion cache (no torch import).

TFLite models are converted from the ``.nest`` through ``nestdnn.export`` (litert-torch) and
cached next to it, keyed by the ``.nest``'s content hash:
``MODEL.nest.tflite/<sha256[:16]>/d{k}.tflite``. A cache of another hash (an older version of
the file) is removed when a new one is written.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nestdnn.errors import NestError
from profiles.latency import Runner, fixed_input

log = logging.getLogger(__name__)


class BackendUnavailable(NestError):
    """A backend cannot be used on this machine (runtime or converter not installed)."""


def tflite_interpreter_class() -> type:
    """``tflite_runtime``'s Interpreter, or ``ai_edge_litert``'s (same API)."""
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise BackendUnavailable(
                "no TFLite runtime: install tflite-runtime (or ai-edge-litert)"
            ) from e
    return Interpreter


def tflite_runner(model_path: Path, threads: int) -> Runner:
    """One TFLite invocation (set input, invoke, read output) on a fixed input."""
    interpreter = tflite_interpreter_class()(model_path=str(model_path), num_threads=threads)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise NestError(
            f"{model_path}: expected one input and one output, found"
            f" {len(inputs)} and {len(outputs)}"
        )
    x = tflite_input(inputs[0])
    in_index, out_index = inputs[0]["index"], outputs[0]["index"]

    def run() -> np.ndarray:
        interpreter.set_tensor(in_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(out_index)

    return run


def tflite_input(detail: dict[str, Any]) -> np.ndarray:
    """``fixed_input`` in the interpreter's input shape and dtype."""
    shape = [int(s) for s in detail["shape"]]
    return fixed_input(shape[1:]).astype(detail["dtype"])


def tflite_cache_dir(nest_path: Path, sha256: str) -> Path:
    """Where the TFLite conversions of this version of ``nest_path`` are kept."""
    return nest_path.with_name(nest_path.name + ".tflite") / sha256[:16]


def converted_descendants(
    nest_path: Path,
    sha256: str,
    indices: Sequence[int],
    after_each: Callable[[], None] | None = None,
) -> list[Path]:
    """TFLite files of the given descendants, converting (atomically) the ones not cached yet."""
    tflite_interpreter_class()  # fail before a long conversion if nothing could run it
    cache = tflite_cache_dir(nest_path, sha256)
    targets = [cache / f"d{k}.tflite" for k in indices]
    export = _tflite_exporter() if not all(t.is_file() for t in targets) else None
    cache.mkdir(parents=True, exist_ok=True)
    for k, target in zip(indices, targets, strict=True):
        if export is not None and not target.is_file():
            log.info("converting descendant %d of %s to TFLite", k, nest_path.name)
            export(nest_path, k, "tflite", target)
        if after_each is not None:
            after_each()
    _remove_stale_caches(cache)
    return targets


def _tflite_exporter() -> Callable[[Path, int, str, Path], Path]:
    """``nestdnn.export.export_descendant``, if litert-torch (the converter) is installed."""
    if importlib.util.find_spec("litert_torch") is None:
        raise BackendUnavailable(
            "TFLite conversion needs litert-torch (pip install 'nestdnn[export]')"
        )
    from nestdnn.export import export_descendant

    return export_descendant


def _remove_stale_caches(current: Path) -> None:
    """Delete conversions of other versions of the same ``.nest`` file."""
    for sibling in current.parent.iterdir():
        if sibling.is_dir() and sibling != current:
            log.info("removing stale TFLite cache %s", sibling)
            shutil.rmtree(sibling, ignore_errors=True)
