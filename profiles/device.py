"""The device a profile is measured on, and how busy it is while measuring."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy
import torch

from profiles.schema import Conditions, Device, LatencyStats

CPUINFO = Path("/proc/cpuinfo")
CPU_PRESSURE = Path("/proc/pressure/cpu")
TFLITE_PACKAGES = ("tflite-runtime", "ai-edge-litert")


def cpu_model() -> str:
    """The CPU's 'model name' from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tflite_runtime_version() -> str | None:
    """'tflite-runtime 2.14.0' (or the ai-edge-litert fallback), None if neither is installed."""
    for package in TFLITE_PACKAGES:
        version = package_version(package)
        if version is not None:
            return f"{package} {version}"
    return None


def package_version(package: str) -> str | None:
    """An installed distribution's version, None if it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_device(threads: int) -> Device:
    """CPU, cores, the thread count used, OS and library versions of this machine."""
    return Device(
        cpu_model=cpu_model(),
        cores=os.cpu_count() or 1,
        threads=threads,
        os=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=numpy.__version__,
        tflite_runtime=tflite_runtime_version(),
        onnxruntime=package_version("onnxruntime"),
    )


def cpu_stall_us() -> int | None:
    """Total microseconds some task waited for a CPU (Linux PSI), None without PSI."""
    try:
        first = CPU_PRESSURE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(item.split("=", 1) for item in first.split()[1:])
    return int(fields["total"]) if "total" in fields else None


@dataclass
class ConditionsRecorder:
    """Records wall time, CPU pressure and load between ``start()`` and ``finish()``."""

    started: datetime | None = None
    _t0: float = 0.0
    _stall0: int | None = None

    def start(self) -> None:
        self.started = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        self._stall0 = cpu_stall_us()

    def finish(self, reference: LatencyStats | None = None) -> Conditions:
        """The conditions since ``start()``, with the reference kernel's latency if timed."""
        if self.started is None:
            raise RuntimeError("ConditionsRecorder.finish() before start()")
        duration = time.perf_counter() - self._t0
        stall = cpu_stall_us()
        pressure = None
        if stall is not None and self._stall0 is not None and duration > 0:
            pressure = min(1.0, (stall - self._stall0) / 1e6 / duration)
        return Conditions(
            started=self.started,
            duration_s=duration,
            cpu_pressure=pressure,
            load_average=os.getloadavg()[0],
            reference=reference,
        )
