"""Backend selection, the guarded Triton import and argument checks shared by every hpcfed kernel.

Dispatch rule (see ``docs/kernels.md``)
---------------------------------------
Each public kernel takes ``backend: str | None = None``:

* ``None``      -> use the environment variable ``HPCFED_KERNEL_BACKEND`` if it is set (and non-empty),
                   else ``'auto'``. An explicit keyword always wins over the environment.
* ``'auto'``    -> ``'triton'`` when Triton imported and the tensors live on a CUDA device, ``'torch'``
                   otherwise (CPU tensors always take the pure-torch reference under ``'auto'``, even
                   with ``TRITON_INTERPRET=1``, because the interpreter is a debugging tool, ~1000x slower).
* ``'triton'``  -> force the fused Triton kernel. Raises ``RuntimeError`` if Triton is not importable, or if
                   the tensors are not on CUDA and the Triton interpreter (``TRITON_INTERPRET=1``) is off.
* ``'torch'``   -> force the pure-torch reference (``*_ref``).

The Triton kernels are declared with :func:`triton_jit` rather than ``triton.jit`` directly. It is the same
``triton.jit`` applied lazily at the first launch, keyed on whether ``TRITON_INTERPRET`` is set at that
moment. That keeps ``import hpcfed.kernels`` working without Triton (the guard below) and makes the
interpreter switch independent of import order (``triton.jit`` otherwise decides interpreted vs compiled
once, when the module defining the kernel is imported).
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Callable

import torch

try:  # Guarded: hpcfed must import (and fall back to torch) on machines without Triton.
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: BaseException | None = None
except Exception as _exc:  # ImportError, or a broken install raising at import time.
    triton = None  # type: ignore[assignment]
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = _exc

    class _MissingTritonLanguage:
        """Stands in for ``triton.language`` so that ``BLOCK_SIZE: tl.constexpr`` annotations still evaluate."""

        constexpr = object

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(_missing_triton_message())

    tl = _MissingTritonLanguage()  # type: ignore[assignment]


ENV_VAR = "HPCFED_KERNEL_BACKEND"
BACKENDS = ("auto", "triton", "torch")

#: Number of calls of each public dispatcher, keyed by kernel name (e.g. ``"masked_accumulate"``).
dispatch_counts: collections.Counter[str] = collections.Counter()
#: Same calls keyed by ``(kernel name, resolved backend)``, e.g. ``("server_update", "triton")``.
backend_counts: collections.Counter[tuple[str, str]] = collections.Counter()


def _missing_triton_message() -> str:
    return (
        "backend='triton' was requested but Triton could not be imported "
        f"({TRITON_IMPORT_ERROR!r}). Install triton (Linux, CUDA) or use backend='torch' / "
        f"{ENV_VAR}=torch."
    )


def interpreter_enabled() -> bool:
    """True when Triton kernels launched now would run in the Triton CPU interpreter (``TRITON_INTERPRET=1``)."""
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:  # triton >= 3.4 reads the environment variable at every access
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def resolve_backend(t: torch.Tensor, backend: str | None) -> str:
    """Return ``'triton'`` or ``'torch'`` for a kernel call whose main tensor is ``t``.

    ``backend`` is ``None`` (defer to ``$HPCFED_KERNEL_BACKEND``, default ``'auto'``), ``'auto'``,
    ``'triton'`` or ``'torch'`` (case-insensitive). See the module docstring for the rule.
    """
    source = "backend argument"
    choice = backend
    if choice is None:
        choice = os.environ.get(ENV_VAR, "").strip() or "auto"
        source = f"environment variable {ENV_VAR}"
    if not isinstance(choice, str) or choice.strip().lower() not in BACKENDS:
        raise ValueError(f"invalid kernel backend {choice!r} from the {source}; expected one of {BACKENDS}")
    choice = choice.strip().lower()
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if (HAS_TRITON and t.device.type == "cuda") else "torch"
    if not HAS_TRITON:
        raise RuntimeError(_missing_triton_message())
    if t.device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"backend='triton' (from the {source}) needs CUDA tensors, got tensors on {t.device}; Triton only "
            "runs CPU tensors in its interpreter: set TRITON_INTERPRET=1 (slow, for tests), or use backend='torch'."
        )
    return "triton"


def record(kernel: str, backend: str) -> None:
    dispatch_counts[kernel] += 1
    backend_counts[(kernel, backend)] += 1


class _LazyJITFunction:
    """``triton.jit(fn)``, built at the first launch for the current interpreter setting and cached."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._jitted: dict[bool, Any] = {}
        functools.update_wrapper(self, fn)

    def jitted(self) -> Any:
        if not HAS_TRITON:
            raise RuntimeError(_missing_triton_message())
        key = interpreter_enabled()
        fn = self._jitted.get(key)
        if fn is None:
            fn = self._jitted[key] = triton.jit(self.fn)
        return fn

    def __getitem__(self, grid: Any) -> Any:
        return self.jitted()[grid]


def triton_jit(fn: Callable[..., Any]) -> _LazyJITFunction:
    """Decorator: ``triton.jit`` applied lazily (see the module docstring)."""
    return _LazyJITFunction(fn)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def num_warps_for(block_size: int) -> int:
    """8 fp32 elements per thread (two 16-byte vector accesses per stream), clamped to 1..16 warps."""
    return max(1, min(16, block_size // 256))


def needs_int64(n: int, block_size: int) -> bool:
    """Whether ``pid * BLOCK_SIZE + arange`` can overflow int32 (n >= 2^31 elements, ~8.6 GB of fp32)."""
    return n + block_size >= 2**31


def check_block_size(block_size: int) -> int:
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"BLOCK_SIZE must be a power of two >= 16, got {block_size}")
    return block_size


# ------------------------------------------------------------------------------------------------ torch path
#: Elements per slice when the torch reference runs on CPU tensors (256 KiB per fp32 buffer). All kernels are
#: elementwise, so running the reference slice by slice is the same math; it keeps the reference's temporaries
#: cache-resident and below glibc's mmap threshold (whole-buffer temporaries of 10^7 fp32 = 40 MB are fresh
#: mmap'd pages, i.e. page faults, on every call). Measured 2.5x faster for masked_adamw_step at 10^7 on the
#: benchmark CPU; 2^15..2^17 were within 10%.
TORCH_CHUNK = 1 << 16


def _slice(x: Any, sl: slice) -> Any:
    if isinstance(x, torch.Tensor):
        return x.view(-1)[sl]
    if isinstance(x, dict):
        return {k: _slice(v, sl) for k, v in x.items()}
    return x


def run_torch(fn: Callable[..., None], n: int, device: torch.device, *args: Any, **kwargs: Any) -> None:
    """Run the torch reference ``fn``: whole buffers on accelerators, TORCH_CHUNK-element slices on CPU."""
    if device.type != "cpu" or n <= TORCH_CHUNK:
        fn(*args, **kwargs)
        return
    for start in range(0, n, TORCH_CHUNK):
        sl = slice(start, start + TORCH_CHUNK)
        fn(*(_slice(a, sl) for a in args), **{k: _slice(v, sl) for k, v in kwargs.items()})


# ----------------------------------------------------------------------------------------------- argument checks
def check_same(name0: str, t0: torch.Tensor, **others: torch.Tensor | None) -> None:
    """All tensors: same shape and device as ``t0``, contiguous (they are used as flat buffers)."""
    if not isinstance(t0, torch.Tensor):
        raise TypeError(f"{name0} must be a torch.Tensor, got {type(t0).__name__}")
    for name, t in (name0, t0), *others.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.shape != t0.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(t0.shape)} (same as {name0})")
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device}, expected {t0.device} (same as {name0})")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (kernels treat it as a flat (n,) buffer)")


def check_float(allowed: tuple[torch.dtype, ...], **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in allowed:
            raise TypeError(f"{name} has dtype {t.dtype}, expected one of {allowed}")


def check_mask(mask: torch.Tensor | None) -> None:
    if mask is not None and mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"mask must be torch.bool or torch.uint8, got {mask.dtype}")


def bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Mask as a bool tensor (a uint8 mask counts every non-zero byte as true)."""
    return mask if mask.dtype == torch.bool else mask != 0


def mask_as_uint8(mask: torch.Tensor) -> torch.Tensor:
    """Zero-copy uint8 view of a bool/uint8 mask, so that the kernels load plain bytes and test ``!= 0``."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def require_fp32(**tensors: torch.Tensor | None) -> None:
    """The Triton path keeps parameters and optimizer state in fp32 (the references also accept fp64)."""
    for name, t in tensors.items():
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"the Triton kernels need fp32 {name}, got {t.dtype}; use backend='torch' for others")
