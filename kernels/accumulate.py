"""Fused masked, weighted accumulation of one client's PEFT update into the server's running sums.

Math
----
For every element i of the flat PEFT buffer (n elements), with the client weight w (a python float, e.g. the
client's number of samples) and the per-element mask m_i in {0, 1} (m_i = 1 for all i when ``mask is None``):

    acc_i <- acc_i + w * m_i * (theta_client_i - theta_global_i)
    cnt_i <- cnt_i + w * m_i

After all clients of a round, ``acc / cnt`` (where ``cnt > 0``) is the weighted mean update of the clients that
trained element i -- the FedAvg pseudo-gradient (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017) restricted per element to the clients whose mask covers it --
consumed by :func:`hpcfed.kernels.server_update`.

Where m_i = 0 neither acc_i nor cnt_i is written (bitwise unchanged, even for NaN/Inf client values).

Memory traffic per element: 16 B read (acc, cnt, theta_client, theta_global) + 1 B mask + 8 B written = 25 B;
the unfused torch sequence (sub, mul, mul, add, mul, add) moves ~3x that.

Block size
----------
``BLOCK_SIZE = 2048`` elements per program, ``num_warps = 8`` (8 fp32 per thread = two 16-byte vector accesses
per stream). The kernel is pure streaming with 2 flops per element, so larger tiles amortise index math and
keep more bytes in flight; 2048 was chosen a priori (no GPU was available for tuning, see docs/kernels.md) and
can be re-tuned with ``python -m benchmarks.kernels --device cuda --block-sizes 512 1024 2048 4096``.
"""

from __future__ import annotations

import torch

from . import _backend as B
from ._backend import tl, triton_jit

BLOCK_SIZE = 2048


# --------------------------------------------------------------------------------------------------- Triton kernel
@triton_jit
def _masked_accumulate_kernel(
    acc_ptr,  # *fp32 (n,), updated in place
    cnt_ptr,  # *fp32 (n,), updated in place
    theta_client_ptr,  # *fp32 (n,)
    theta_global_ptr,  # *fp32 (n,)
    mask_ptr,  # *uint8 (n,), read only when HAS_MASK
    weight,  # fp32 scalar
    n_elements,
    HAS_MASK: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    INT64: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    if INT64:
        pid = pid.to(tl.int64)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    live = offsets < n_elements
    if HAS_MASK:
        # Masked-out elements are neither loaded (beyond the mask byte) nor stored.
        live = live & (tl.load(mask_ptr + offsets, mask=live, other=0) != 0)
    theta_c = tl.load(theta_client_ptr + offsets, mask=live)
    theta_g = tl.load(theta_global_ptr + offsets, mask=live)
    acc = tl.load(acc_ptr + offsets, mask=live)
    cnt = tl.load(cnt_ptr + offsets, mask=live)
    tl.store(acc_ptr + offsets, acc + weight * (theta_c - theta_g), mask=live)
    tl.store(cnt_ptr + offsets, cnt + weight, mask=live)


# -------------------------------------------------------------------------------------------------- Python wrapper
def _masked_accumulate_triton(
    acc: torch.Tensor,
    cnt: torch.Tensor,
    theta_client: torch.Tensor,
    theta_global: torch.Tensor,
    weight: float,
    mask: torch.Tensor | None = None,
    *,
    block_size: int | None = None,
) -> None:
    """Launch :func:`_masked_accumulate_kernel` (arguments already validated by the dispatcher)."""
    B.require_fp32(acc=acc, cnt=cnt, theta_client=theta_client, theta_global=theta_global)
    n = acc.numel()
    if n == 0:
        return
    bs = B.check_block_size(block_size or BLOCK_SIZE)
    grid = (B.cdiv(n, bs),)
    _masked_accumulate_kernel[grid](
        acc,
        cnt,
        theta_client,
        theta_global,
        B.mask_as_uint8(mask) if mask is not None else acc,  # dummy pointer, never read without a mask
        float(weight),
        n,
        HAS_MASK=mask is not None,
        BLOCK_SIZE=bs,
        INT64=B.needs_int64(n, bs),
        num_warps=B.num_warps_for(bs),
    )


# ------------------------------------------------------------------------------------------------------- reference
def masked_accumulate_ref(
    acc: torch.Tensor,
    cnt: torch.Tensor,
    theta_client: torch.Tensor,
    theta_global: torch.Tensor,
    weight: float,
    mask: torch.Tensor | None = None,
) -> None:
    """Pure-torch reference of :func:`masked_accumulate` (same arguments, no ``backend``; any float dtype)."""
    diff = torch.sub(theta_client, theta_global)
    if mask is None:
        acc.add_(diff, alpha=weight)
        cnt.add_(weight)
        return
    m = B.bool_mask(mask)
    torch.where(m, diff.mul_(weight).add_(acc), acc, out=acc)
    torch.where(m, cnt + weight, cnt, out=cnt)


# ------------------------------------------------------------------------------------------------------ dispatcher
def masked_accumulate(
    acc: torch.Tensor,
    cnt: torch.Tensor,
    theta_client: torch.Tensor,
    theta_global: torch.Tensor,
    weight: float,
    mask: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> None:
    """Fold one client's update into the round's sums, in place, in one pass over memory.

    ``acc += weight * mask * (theta_client - theta_global)`` and ``cnt += weight * mask``; where the mask is
    false, ``acc`` and ``cnt`` are left bitwise unchanged. Afterwards ``acc / cnt`` (where ``cnt > 0``) is the
    per-element weighted FedAvg update (McMahan et al., AISTATS 2017), see :func:`server_update`.

    Args:
        acc: (n,) float32, contiguous; running sum of weighted client deltas, updated in place.
        cnt: (n,) float32, contiguous; running sum of client weights per element, updated in place.
        theta_client: (n,) float32; the client's flat PEFT parameters after local training.
        theta_global: (n,) float32; the global flat PEFT parameters the client started from.
        weight: python float, the client's aggregation weight (e.g. its number of samples).
        mask: optional (n,) bool or uint8 (non-zero = true); elements this client trained. ``None`` = all.
        backend: ``None``/``'auto'``/``'triton'``/``'torch'``, see :func:`resolve_backend`.

    All tensors must share one shape and device. The Triton path needs float32 (the reference also takes float64).
    """
    B.check_same("acc", acc, cnt=cnt, theta_client=theta_client, theta_global=theta_global, mask=mask)
    B.check_float((torch.float32, torch.float64), acc=acc, cnt=cnt, theta_client=theta_client,
                  theta_global=theta_global)
    B.check_mask(mask)
    chosen = B.resolve_backend(acc, backend)
    B.record("masked_accumulate", chosen)
    if chosen == "triton":
        _masked_accumulate_triton(acc, cnt, theta_client, theta_global, weight, mask)
    else:
        B.run_torch(masked_accumulate_ref, acc.numel(), acc.device, acc, cnt, theta_client, theta_global, weight,
                    mask)
