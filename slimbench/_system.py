"""Small process-level measurements shared by the harness and the evaluators."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator

_STATUS = "/proc/self/status"


def _read_status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _read_status_kib("VmRSS")
    return None if kib is None else kib * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) of this process; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak resident memory observed inside a ``measure_peak_rss`` block."""

    peak_rss_bytes: int | None = None
    start_rss_bytes: int | None = None
    method: str = "unavailable"

    @property
    def growth_bytes(self) -> int | None:
        if self.peak_rss_bytes is None or self.start_rss_bytes is None:
            return None
        return self.peak_rss_bytes - self.start_rss_bytes


@contextlib.contextmanager
def measure_peak_rss() -> Iterator[PeakMemory]:
    """Peak RSS of this process during the block (VmHWM after a reset on Linux).

    Falls back to ``resource.ru_maxrss`` (the peak since process start) where the high-water
    mark cannot be reset; ``method`` says which one was used.
    """
    result = PeakMemory(start_rss_bytes=rss_bytes())
    reset = _reset_peak_rss()
    try:
        yield result
    finally:
        hwm = _read_status_kib("VmHWM")
        if reset and hwm is not None:
            result.peak_rss_bytes, result.method = hwm * 1024, "VmHWM"
        else:
            import resource

            result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            result.method = "ru_maxrss (since process start)"


@dataclass
class PeakGpu:
    """Peak GPU memory allocated by torch inside a ``measure_peak_gpu`` block (None off CUDA)."""

    peak_bytes: int | None = None


@contextlib.contextmanager
def measure_peak_gpu(device) -> Iterator[PeakGpu]:
    """``torch.cuda.max_memory_allocated`` of ``device`` during the block, the peak statistics
    reset at its start; ``peak_bytes`` stays None unless ``device`` is a CUDA device."""
    import torch

    result = PeakGpu()
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        yield result
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        torch.cuda.synchronize(device)
        result.peak_bytes = int(torch.cuda.max_memory_allocated(device))


def gpu_info() -> dict | None:
    """GPU name, count, compute capability and memory, CUDA runtime and driver versions (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "count": torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.total_memory), "cuda_runtime": torch.version.cuda, "driver": _driver_version()}


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Stopwatch:
    """Collects named wall-clock durations (seconds)."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.perf_counter() - start


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
