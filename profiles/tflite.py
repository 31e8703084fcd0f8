"""The TFLite backend: the runtime's interpreter and the conversion cache (no torch import).

TFLite models are converted from the ``.nest`` through ``nestdnn.export`` (litert-torch) and
cached next to it, keyed by the ``.nest``'s content hash (`nestdnn.derived.DerivedCache`:
``MODEL.nest.tflite/<sha256[:16]>/d{k}.tflite`` with an index of their hashes; a corrupt file
or one of another version of the `.nest` is converted again, never used).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nestdnn.derived import DerivedCache
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


def converted_descendants(
    nest_path: Path,
    sha256: str,
    indices: Sequence[int],
    after_each: Callable[[], None] | None = None,
) -> list[Path]:
    """TFLite files of the given descendants, converted where the cache has no valid one."""
    tflite_interpreter_class()  # fail before a long conversion if nothing could run it
    cache = DerivedCache(nest_path, sha256, "tflite", ".tflite")
    missing = [k for k in indices if cache.get(k) is None]
    export = _tflite_exporter() if missing else None
    for k in indices:
        if export is not None and k in missing:
            log.info("converting descendant %d of %s to TFLite", k, nest_path.name)
            cache.get_or_build(k, lambda k: _converted(export, nest_path, k))
        if after_each is not None:
            after_each()
    return [cache.path(k) for k in indices]


def _converted(export: Callable[[Path, int, str, Path], Path], nest_path: Path, k: int) -> bytes:
    """Descendant ``k`` converted to a flatbuffer (through a temporary file)."""
    with tempfile.TemporaryDirectory() as tmp:
        return export(nest_path, k, "tflite", Path(tmp) / f"d{k}.tflite").read_bytes()


def _tflite_exporter() -> Callable[[Path, int, str, Path], Path]:
    """``nestdnn.export.export_descendant``, if litert-torch (the converter) is installed."""
    if importlib.util.find_spec("litert_torch") is None:
        raise BackendUnavailable(
            "TFLite conversion needs litert-torch (pip install 'nestdnn[export]')"
        )
    from nestdnn.export import export_descendant

    return export_descendant
