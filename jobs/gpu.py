"""GPU facts from NVIDIA's management library (nvidia-ml-py / pynvml), without torch: /health
reports them and the model store checks free VRAM before loading weights. NVML never decides the
device: recon.device.resolve_device does (CUDA only when torch can use it).

Every function answers "no GPU" (None / 0) instead of raising on a host without the NVIDIA driver,
so the API and CPU workers run unchanged there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

_GB = 1024**3
_lock = threading.Lock()
_initialised: bool | None = None  # None: not tried yet; False: no driver on this host


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when there is no usable NVIDIA driver."""
    global _initialised
    with _lock:
        if _initialised is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialised = True
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
                log.info("no NVIDIA GPU available: %s", exc)
                _initialised = False
        if not _initialised:
            return None
    import pynvml

    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_count() -> int:
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        log.warning("NVML device count failed: %s", exc)
        return 0


def _memory(index: int) -> tuple[Any, Any, Any] | None:
    """(pynvml, device handle, memory info) of GPU `index`, or None when there is no such GPU."""
    nvml = _nvml()
    if nvml is None or index >= gpu_count():
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return nvml, handle, nvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception as exc:  # a GPU that fell off the bus reads as "no GPU", not a crash
        log.warning("NVML query of GPU %d failed: %s", index, exc)
        return None


def gpu_info(index: int = 0) -> dict[str, Any] | None:
    """The spec's /health `gpu` object for device `index` (GB = GiB, rounded to 0.1), or None."""
    found = _memory(index)
    if found is None:
        return None
    nvml, handle, mem = found
    try:
        name, driver = _text(nvml.nvmlDeviceGetName(handle)), _text(nvml.nvmlSystemGetDriverVersion())
    except Exception as exc:
        log.warning("NVML name/driver query failed: %s", exc)
        return None
    return {
        "name": name,
        "driver_version": driver,
        "memory_total_gb": round(mem.total / _GB, 1),
        "memory_free_gb": round(mem.free / _GB, 1),
        "memory_used_gb": round(mem.used / _GB, 1),
    }


def free_vram_gb(index: int = 0) -> float | None:
    """Free memory of GPU `index` in GiB (unrounded), or None when there is no GPU."""
    found = _memory(index)
    return None if found is None else found[2].free / _GB


def torch_cuda_build() -> bool:
    """Whether the installed torch is a CUDA build, read from its version file without importing
    torch (the API process must stay light): with the CPU wheel a visible GPU is never used, as
    recon.device.resolve_device decides, and /health must say "cpu" as the workers do."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        text = version_file.read_text()
    except OSError:
        return False
    return re.search(r"^cuda\b[^=]*=\s*['\"]", text, flags=re.MULTILINE) is not None
