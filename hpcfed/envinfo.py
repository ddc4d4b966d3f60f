"""What a run ran on: library versions, the MPI library, CPU and GPU models (recorded in ``run_info.json``)."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from importlib import metadata
from typing import Optional

# Distributions whose installed version is recorded, by their pip (distribution) names.
PACKAGES = ("torch", "transformers", "peft", "timm", "open_clip_torch", "triton", "mpi4py")

# Asks the MPI library for its version without MPI_Init (allowed by MPI-3), in a child process so that this
# process's own mpi4py initialization (at its first ``from mpi4py import MPI``) is left as it would have been.
_MPI_VERSION_SNIPPET = (
    "import mpi4py; mpi4py.rc.initialize = False; mpi4py.rc.finalize = False\n"
    "from mpi4py import MPI; print(MPI.Get_library_version())"
)


def _dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except Exception:  # noqa: BLE001 - not installed (PackageNotFoundError) or broken metadata
        return None


def _torch_version() -> Optional[str]:
    """``torch.__version__`` (with the build's local tag, e.g. ``2.6.0+cu124``), read from ``torch/version.py``
    when torch is not imported yet; the distribution's version if that fails; None without torch."""
    version = _dist_version("torch")
    if version is None:
        return None
    if "torch" in sys.modules:
        return str(getattr(sys.modules["torch"], "__version__", version))
    try:
        text = metadata.distribution("torch").locate_file("torch/version.py").read_text()
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
        return found.group(1) if found else version
    except Exception:  # noqa: BLE001
        return version


def _first_line(text: str) -> Optional[str]:
    for line in text.replace("\0", "").splitlines():  # the C string's NUL terminator can come along
        if line.strip():
            return line.strip()
    return None


def mpi_library_version(timeout_s: float = 20.0) -> Optional[str]:
    """First line of ``MPI.Get_library_version()`` (e.g. ``Open MPI v5.0.8, package: ...``), else None.

    When this process has already imported ``mpi4py.MPI`` it is asked directly; otherwise a short child
    process asks it with MPI initialization turned off, so that recording the version never initializes MPI
    here (which a single-process or torchrun job must not do). None when mpi4py or its MPI library is absent.
    """
    mod = sys.modules.get("mpi4py.MPI")
    try:
        if mod is not None:
            return _first_line(mod.Get_library_version())
        out = subprocess.run([sys.executable, "-c", _MPI_VERSION_SNIPPET], capture_output=True, text=True,
                             timeout=timeout_s, stdin=subprocess.DEVNULL)
        return _first_line(out.stdout) if out.returncode == 0 else None
    except Exception:  # noqa: BLE001 - recording the environment never fails a run
        return None


def cpu_model() -> Optional[str]:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    try:
        return platform.processor().strip() or None
    except Exception:  # noqa: BLE001
        return None


def cpu_bf16_native() -> Optional[bool]:
    """Whether this CPU runs bf16 matmuls natively (oneDNN's bf16 check: AVX-512 BF16 / AMX, or AVX-512 core on
    x86; the bf16 extension on Arm), so that bf16 autocast on CPU is not slower than fp32. False on e.g. an
    AVX2-only CPU, where bf16 is emulated (a local step measured ~20-50x slower than fp32 here: README, "bf16").
    None when torch or its oneDNN build cannot tell."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a private torch API; unknown is not an error
        return None


def warn_if_bf16_emulated(device, bf16: bool, key: str, log) -> bool:
    """Log one warning when ``bf16`` autocast is asked for on a CPU ``device`` that would emulate it
    (:func:`cpu_bf16_native` is False), naming the config key ``key`` and the fix; returns whether it warned.
    The run keeps bf16 (a silent switch to fp32 would change results under the same config hash)."""
    if not bf16 or getattr(device, "type", str(device)) != "cpu" or cpu_bf16_native() is not False:
        return False
    log.warning("%s=true on a CPU without native bf16 (%s): bf16 is emulated and each step is many times slower "
                "than fp32; set %s=false on this machine", key, cpu_model() or "unknown CPU", key)
    return True


def gpu_models() -> Optional[list[str]]:
    """Names of the visible CUDA devices (``torch.cuda.get_device_name``), or None without CUDA / torch."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return None


def environment_info() -> dict:
    """The software and hardware a run ran on, JSON-serializable; never raises.

    Returns:
        ``{"versions": {"python": ..., "torch": ..., "transformers": ..., "peft": ..., "timm": ...,
        "open_clip_torch": ..., "triton": ..., "mpi4py": ...}, "mpi_library": ..., "cpu_model": ...,
        "cpu_bf16_native": ..., "gpu_models": ...}``. Package versions come from the installed distributions' metadata (nothing is
        imported for them; torch's is ``torch.__version__``, with its build tag); a package that is not
        installed is None. ``mpi_library`` is the first line of ``mpi4py.MPI.Get_library_version()`` (None
        without mpi4py or its MPI library), ``cpu_model`` the ``/proc/cpuinfo`` model name (or
        ``platform.processor()``), ``cpu_bf16_native`` as :func:`cpu_bf16_native`, ``gpu_models`` the list of
        visible CUDA device names (this imports torch), or None when CUDA is not available.
    """
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    versions.update({name: _torch_version() if name == "torch" else _dist_version(name) for name in PACKAGES})
    return {
        "versions": versions,
        "mpi_library": mpi_library_version() if versions["mpi4py"] is not None else None,
        "cpu_model": cpu_model(),
        "cpu_bf16_native": cpu_bf16_native(),
        "gpu_models": gpu_models(),
    }
