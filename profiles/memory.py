"""Resident memory of loading and running one descendant, in a fresh subprocess.

``python -m profiles.memory BACKEND MODEL K`` (torch or onnxruntime on the ``.nest``, tflite
on a flatbuffer) imports the runtime, sets the thread count, warms the runtime up on the
reference stack and on one load of the descendant (thread pools, allocator arenas and
per-shape caches are paid once per process, not per load). It then takes the baseline
(``VmRSS`` after a garbage collection and ``malloc_trim``), resets the kernel's peak-RSS
counter (5 to ``/proc/self/clear_refs``), loads the descendant again and runs ``runs`` batch-1
inferences. It reports the peak (``VmHWM``: weights, activations, transient copies while
loading) and the resident growth that stays while the model is held (trimmed ``VmRSS`` minus
the baseline): what the daemon's ledger accounts for the descendant on that backend. A fresh
process per (descendant, backend) keeps other descendants and the import-time peak out.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from nestdnn.errors import NestError
from profiles.latency import Runner
from profiles.schema import BACKENDS, Backend, MemoryStats

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK_RSS = "5"
TIMEOUT_S = 600


def measure_memory(
    backend: Backend, model_path: Path, index: int, threads: int, runs: int
) -> MemoryStats:
    """Run the measurement in a fresh interpreter and parse its JSON answer."""
    command = [sys.executable, "-m", "profiles.memory", backend, str(model_path), str(index)]
    command += ["--threads", str(threads), "--runs", str(runs)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise NestError(f"memory measurement of {model_path} timed out after {TIMEOUT_S} s") from e
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NestError(f"memory measurement of {model_path} ({backend}) failed: {reason}")
    return MemoryStats.model_validate_json(done.stdout.strip().splitlines()[-1])


def status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (e.g. VmRSS, VmHWM) in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise NestError(f"{PROC_STATUS} has no {field}: peak RSS needs Linux")
    return int(match.group(1)) * 1024


def reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux >= 4.0)."""
    try:
        CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError as e:
        raise NestError(f"cannot reset the peak-RSS counter ({CLEAR_REFS}): {e}") from e


def release_freed_heap() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``, ~0.1 ms; a no-op
    elsewhere), so that resident memory follows what is held, not what was once held."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def trimmed_rss() -> int:
    """VmRSS after a garbage collection and `release_freed_heap`."""
    gc.collect()
    release_freed_heap()
    return status_bytes("VmRSS")


def loaded_memory(load: Callable[[], Runner], runs: int) -> MemoryStats:
    """Peak and resident RSS of loading a model and ``runs`` inferences, in steady state.

    The model is loaded, run and dropped once first, so that what a process pays once (thread
    pools, allocator arenas, caches per layer shape) is not counted; then the baseline is
    taken trimmed, the peak counter reset, the model loaded and run again. The resident figure
    is the trimmed RSS while the model is held, minus the baseline: what holding it costs a
    long-running daemon, which also trims after every model it frees.
    """
    warm = load()
    warm()
    del warm
    baseline = trimmed_rss()
    reset_peak_rss()
    run = load()
    for _ in range(runs):
        run()
    peak = status_bytes("VmHWM")
    resident = trimmed_rss() - baseline
    del run
    return MemoryStats(baseline_rss_bytes=baseline, peak_rss_bytes=max(peak, baseline),
                       runs=runs, resident_bytes=max(0, resident))


def torch_memory(nest_path: Path, index: int, threads: int, runs: int) -> MemoryStats:
    """Loading descendant ``index`` and running it with torch."""
    import torch

    from nestdnn.nested import load_descendant
    from nestdnn.nestfile import read_manifest
    from profiles.torch_backend import reference_runner, torch_runner

    torch.set_num_threads(threads)
    shape = read_manifest(nest_path).input_shape
    with torch.inference_mode():
        reference_runner()()  # thread pools and allocator arenas exist before the baseline
        return loaded_memory(lambda: torch_runner(load_descendant(nest_path, index), shape),
                             runs)


def onnxruntime_memory(nest_path: Path, index: int, threads: int, runs: int) -> MemoryStats:
    """Creating descendant ``index``'s onnxruntime session (graph cached) and running it."""
    from nestdnn.nestfile import NestFile
    from profiles.onnxrt import descendant_graphs, load_session, ort_runner
    from profiles.reference import onnxruntime_reference_runner

    onnxruntime_reference_runner(threads)()  # the runtime's thread pool and arena exist
    with NestFile(nest_path) as nest:
        graph = descendant_graphs(nest, [index])[0]
        shape = nest.manifest.input_shape
        return loaded_memory(lambda: ort_runner(load_session(nest, graph, index, threads),
                                                shape), runs)


def tflite_memory(model_path: Path, threads: int, runs: int) -> MemoryStats:
    """Loading a TFLite file into an interpreter and invoking it."""
    from profiles.tflite import tflite_runner

    return loaded_memory(lambda: tflite_runner(model_path, threads), runs)


def main(argv: Sequence[str] | None = None) -> int:
    """Subprocess entry point: print the MemoryStats of one descendant as JSON."""
    parser = argparse.ArgumentParser(prog="python -m profiles.memory")
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("model", type=Path, help="the .nest (torch, onnxruntime) or .tflite file")
    parser.add_argument("index", type=int, help="descendant index (torch, onnxruntime)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.backend == "torch":
        stats = torch_memory(args.model, args.index, args.threads, args.runs)
    elif args.backend == "onnxruntime":
        stats = onnxruntime_memory(args.model, args.index, args.threads, args.runs)
    else:
        stats = tflite_memory(args.model, args.threads, args.runs)
    print(json.dumps(stats.model_dump()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NestError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
