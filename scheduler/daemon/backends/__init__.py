"""Inference backends of the model manager, chosen by name; each imports its runtime lazily.

``onnxruntime`` (the default): sessions built from the `.nest` alone, no torch.
``torch``: PyTorch eager on the nested handle (in-place upgrades and downgrades).
``tflite``: the TFLite runtime on flatbuffers converted from the `.nest` (litert-torch).
"""

from __future__ import annotations

from profiles.schema import Backend
from scheduler.daemon.backends.base import InferenceBackend, LoadedModel, softmax

__all__ = ["InferenceBackend", "LoadedModel", "make_backend", "softmax"]


def make_backend(name: Backend, threads: int) -> InferenceBackend:
    """The backend called ``name``, running ``threads`` intra-op threads."""
    if name == "onnxruntime":
        from scheduler.daemon.backends.onnxrt import OrtBackend

        return OrtBackend(threads)
    if name == "tflite":
        from scheduler.daemon.backends.tflite import TfliteBackend

        return TfliteBackend(threads)
    from scheduler.daemon.backends.pytorch import TorchBackend

    return TorchBackend(threads)
