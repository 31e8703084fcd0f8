"""Peak resident memory of loading and running one descendant, in a fresh subprocess.

``python -m profiles.memory torch MODEL.nest K`` (or ``tflite FILE.tflite``) imports the
runtime, sets the thread count and warms the runtime up on a tiny operation (so that thread
pools and allocator arenas exist), then resets the kernel's peak-RSS counter by writing 5 to
``/proc/self/clear_refs`` and reads ``VmRSS`` as the baseline. It then loads the descendant,
runs ``runs`` batch-1 inferences and reads ``VmHWM``, the peak RSS since the reset. It prints
both as JSON. A fresh process per (descendant, backend) keeps other descendants' weights,
freed-but-retained heap and the import-time peak out of the figure.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nestdnn.errors import NestError
from profiles.schema import Backend, MemoryStats

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


def torch_peak(nest_path: Path, index: int, threads: int, runs: int) -> MemoryStats:
    """Baseline and peak RSS of loading descendant ``index`` and running it with torch."""
    import torch

    from nestdnn.nested import load_descendant
    from nestdnn.nestfile import read_manifest
    from profiles.torch_backend import torch_input

    torch.set_num_threads(threads)
    x = torch_input(read_manifest(nest_path).input_shape)
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, torch.ones(2, x.shape[1], 3, 3), padding=1).sum()
    reset_peak_rss()
    baseline = status_bytes("VmRSS")
    model = load_descendant(nest_path, index)
    with torch.inference_mode():
        for _ in range(runs):
            model(x)
    return MemoryStats(baseline_rss_bytes=baseline, peak_rss_bytes=status_bytes("VmHWM"), runs=runs)


def tflite_peak(model_path: Path, threads: int, runs: int) -> MemoryStats:
    """Baseline and peak RSS of loading a TFLite file and invoking it."""
    from profiles.tflite import tflite_input, tflite_interpreter_class

    interpreter_class = tflite_interpreter_class()
    reset_peak_rss()
    baseline = status_bytes("VmRSS")
    interpreter = interpreter_class(model_path=str(model_path), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = tflite_input(detail)
    for _ in range(runs):
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
    return MemoryStats(baseline_rss_bytes=baseline, peak_rss_bytes=status_bytes("VmHWM"), runs=runs)


def main(argv: Sequence[str] | None = None) -> int:
    """Subprocess entry point: print the MemoryStats of one descendant as JSON."""
    parser = argparse.ArgumentParser(prog="python -m profiles.memory")
    parser.add_argument("backend", choices=["torch", "tflite"])
    parser.add_argument("model", type=Path, help="the .nest (torch) or the .tflite file")
    parser.add_argument("index", type=int, help="descendant index (torch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.backend == "torch":
        stats = torch_peak(args.model, args.index, args.threads, args.runs)
    else:
        stats = tflite_peak(args.model, args.threads, args.runs)
    print(json.dumps(stats.model_dump()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NestError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
