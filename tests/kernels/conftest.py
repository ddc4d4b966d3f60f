"""Shared fixtures of the hpcfed.kernels tests.

Without a CUDA device the Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 is set here, at
conftest import, before anything imports triton (hpcfed.kernels also reads it at every launch, so import order
does not matter). With a CUDA device the Triton path runs compiled on the GPU and the variable is left alone.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

try:
    from hpcfed import kernels as K  # noqa: E402
except ImportError as exc:  # pragma: no cover - environment problem, not a test failure mode
    raise ImportError(
        "hpcfed.kernels is not importable; install the project first (pip install -e .): the kernels/ folder "
        "is mapped to hpcfed.kernels by pyproject.toml's package-dir and is not on sys.path otherwise"
    ) from exc

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BIG = 2**20 + 3
SMALL_SIZES = (1, 7, 1000)
MASK_KINDS = ("none", "zeros", "ones", "random", "random_u8")


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests decide the backend themselves; a user's HPCFED_KERNEL_BACKEND must not leak in."""
    monkeypatch.delenv(K.ENV_VAR, raising=False)


@pytest.fixture(autouse=True)
def _skip_triton_without_triton(request):
    """Tests that force the Triton path carry 'triton' in their id; skip them where Triton cannot import."""
    if not K.HAS_TRITON and "triton" in request.node.name:
        pytest.skip(f"triton is not importable: {K._backend.TRITON_IMPORT_ERROR!r}")


@pytest.fixture
def device() -> str:
    return DEVICE


def make_mask(kind: str, n: int, gen: torch.Generator, device: str = DEVICE) -> torch.Tensor | None:
    """'none' -> None; 'zeros'/'ones' -> constant bool; 'random' -> bool p=0.5; 'random_u8' -> uint8 in {0,1,7}."""
    if kind == "none":
        return None
    if kind == "zeros":
        return torch.zeros(n, dtype=torch.bool, device=device)
    if kind == "ones":
        return torch.ones(n, dtype=torch.bool, device=device)
    if kind == "random":
        return (torch.rand(n, generator=gen) < 0.5).to(device)
    if kind == "random_u8":
        vals = torch.tensor([0, 1, 7], dtype=torch.uint8)
        return vals[torch.randint(0, 3, (n,), generator=gen)].to(device)
    raise ValueError(kind)


def active(mask: torch.Tensor | None, n: int, device: str = DEVICE) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask != 0


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float32/float64 tensor (compares NaN, -0.0 and +0.0 exactly)."""
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def assert_unchanged_bitwise(name: str, after: torch.Tensor, before: torch.Tensor, where: torch.Tensor) -> None:
    diff = bits(after)[where] != bits(before)[where]
    assert not bool(diff.any()), f"{name}: {int(diff.sum())} masked-out entries changed"


def assert_err_bound(name: str, kernel: torch.Tensor, ref32: torch.Tensor, gold: torch.Tensor) -> None:
    """Issue criterion: max|kernel - fp64 gold| <= 2 * max|fp32 torch reference - fp64 gold| + 1e-6."""
    assert gold.dtype == torch.float64 and kernel.dtype == ref32.dtype == torch.float32
    assert torch.isfinite(gold).all(), f"{name}: non-finite gold values, bad test data"
    if gold.numel() == 0:
        return
    k_err = (kernel.double() - gold).abs().max().item()
    r_err = (ref32.double() - gold).abs().max().item()
    assert k_err <= 2 * r_err + 1e-6, f"{name}: kernel error {k_err:.3e} > 2 * torch error {r_err:.3e} + 1e-6"


def clone_all(tensors: dict, dtype: torch.dtype | None = None) -> dict:
    """Clone every tensor (floating ones cast to ``dtype`` if given); None stays None."""
    out = {}
    for k, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.clone()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
        out[k] = t
    return out


@pytest.fixture
def helpers():
    """The helper functions above, for test modules (no tests/kernels/__init__.py, so no package imports)."""

    class H:
        pass

    for f in (make_mask, active, bits, assert_unchanged_bitwise, assert_err_bound, clone_all):
        setattr(H, f.__name__, staticmethod(f))
    H.DEVICE, H.BIG, H.SMALL_SIZES, H.MASK_KINDS = DEVICE, BIG, SMALL_SIZES, MASK_KINDS
    return H
