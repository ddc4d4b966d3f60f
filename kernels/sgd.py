"""Fused masked SGD (+ momentum, Nesterov, coupled weight decay) step over the flat PEFT buffer.

Math
----
Exactly ``torch.optim.SGD`` (single-tensor path, ``dampening=0``, ``maximize=False``), per element, with a
per-element learning rate lr_i = lr * s_i (s = ``lr_scale``, 1 when ``None``):

    d <- g + wd * theta                                     (coupled L2 weight decay, only if wd != 0)
    if mu != 0:
        b <- d                 at step 1 (torch creates the buffer as a clone of d)
        b <- mu * b + d        at steps > 1
        d <- d + mu * b        if nesterov (Sutskever et al., ICML 2013, as formulated in torch)
        d <- b                 otherwise (heavy ball, Polyak 1964)
    theta <- theta - lr_i * d

Only elements with mask_i true are touched; elsewhere theta and b stay bitwise unchanged. g may be fp32, bf16
or fp16 (upcast to fp32 in registers); theta and b are fp32.

Memory traffic per element with momentum: reads theta, g, b (12 B, fp32 g) [+ 1 B mask, + 4 B lr_scale],
writes theta, b (8 B); without momentum 8 B read, 4 B written.

Block size
----------
``BLOCK_SIZE = 2048`` elements per program, ``num_warps = 8`` (8 fp32 per thread): at most four input
streams and ~4 flops per element, the same streaming regime as masked_accumulate. Chosen a priori (no GPU was
available for tuning, see docs/kernels.md).
"""

from __future__ import annotations

import torch

from . import _backend as B
from ._backend import tl, triton_jit

BLOCK_SIZE = 2048
GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------------------- Triton kernel
@triton_jit
def _masked_sgd_kernel(
    param_ptr,  # *fp32 (n,), updated in place
    grad_ptr,  # *fp32 | *bf16 | *fp16 (n,)
    buf_ptr,  # *fp32 (n,), momentum buffer, updated in place when HAS_MOMENTUM
    mask_ptr,  # *uint8 (n,), read only when HAS_MASK
    lr_scale_ptr,  # *fp32 (n,), read only when HAS_LR_SCALE
    n_elements,
    lr,
    neg_lr,  # -lr
    momentum,
    weight_decay,
    HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    FIRST_STEP: tl.constexpr,
    NESTEROV: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_LR_SCALE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    INT64: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    if INT64:
        pid = pid.to(tl.int64)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    live = offsets < n_elements
    if HAS_MASK:
        live = live & (tl.load(mask_ptr + offsets, mask=live, other=0) != 0)
    p = tl.load(param_ptr + offsets, mask=live, other=0.0)
    d = tl.load(grad_ptr + offsets, mask=live, other=0.0).to(tl.float32)
    if HAS_WEIGHT_DECAY:
        d = d + weight_decay * p
    if HAS_MOMENTUM:
        if FIRST_STEP:
            buf = d
        else:
            buf = tl.load(buf_ptr + offsets, mask=live, other=0.0)
            buf = buf * momentum + d
        tl.store(buf_ptr + offsets, buf, mask=live)
        if NESTEROV:
            d = d + momentum * buf
        else:
            d = buf
    if HAS_LR_SCALE:
        s = tl.load(lr_scale_ptr + offsets, mask=live, other=0.0)
        p = p - (s * lr) * d
    else:
        p = p + neg_lr * d
    tl.store(param_ptr + offsets, p, mask=live)


# -------------------------------------------------------------------------------------------------- Python wrapper
def _masked_sgd_triton(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    step: int = 1,
    mask: torch.Tensor | None = None,
    lr_scale: torch.Tensor | None = None,
    block_size: int | None = None,
) -> None:
    """Launch :func:`_masked_sgd_kernel` (arguments already validated by the dispatcher)."""
    has_momentum = momentum != 0
    B.require_fp32(param=param, momentum_buf=momentum_buf if has_momentum else None, lr_scale=lr_scale)
    n = param.numel()
    if n == 0:
        return
    bs = B.check_block_size(block_size or BLOCK_SIZE)
    _masked_sgd_kernel[(B.cdiv(n, bs),)](
        param, grad,
        momentum_buf if has_momentum else param,
        B.mask_as_uint8(mask) if mask is not None else param,
        lr_scale if lr_scale is not None else param,
        n,
        float(lr), -float(lr), float(momentum), float(weight_decay),
        HAS_WEIGHT_DECAY=weight_decay != 0,
        HAS_MOMENTUM=has_momentum,
        FIRST_STEP=int(step) <= 1,
        NESTEROV=bool(nesterov),
        HAS_MASK=mask is not None,
        HAS_LR_SCALE=lr_scale is not None,
        BLOCK_SIZE=bs,
        INT64=B.needs_int64(n, bs),
        num_warps=B.num_warps_for(bs),
    )


# ------------------------------------------------------------------------------------------------------- reference
def masked_sgd_step_ref(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    step: int = 1,
    mask: torch.Tensor | None = None,
    lr_scale: torch.Tensor | None = None,
) -> None:
    """Pure-torch reference of :func:`masked_sgd_step` (same arguments, no ``backend``; any float dtype).

    Without mask and lr_scale this is op for op torch.optim.SGD's single-tensor update.
    """
    d = grad.to(param.dtype)
    if weight_decay != 0:
        d = d.add(param, alpha=weight_decay)
    buf_new = None
    if momentum != 0:
        if int(step) <= 1:
            buf_new = d.clone()
        else:
            buf_new = momentum_buf if mask is None else momentum_buf.clone()
            buf_new.mul_(momentum).add_(d)
        d = d.add(buf_new, alpha=momentum) if nesterov else buf_new
    p_new = param if mask is None else param.clone()
    if lr_scale is None:
        p_new.add_(d, alpha=-lr)
    else:
        p_new.sub_(torch.mul(lr_scale, lr).mul_(d))
    if mask is None:
        if buf_new is not None and buf_new is not momentum_buf:
            momentum_buf.copy_(buf_new)
        return
    keep = B.bool_mask(mask)
    torch.where(keep, p_new, param, out=param)
    if buf_new is not None:
        torch.where(keep, buf_new, momentum_buf, out=momentum_buf)


# ------------------------------------------------------------------------------------------------------ dispatcher
def masked_sgd_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buf: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    step: int = 1,
    mask: torch.Tensor | None = None,
    lr_scale: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """One SGD step over the masked entries of a flat parameter buffer, in place, in one pass over memory.

    Same math as ``torch.optim.SGD`` with ``dampening=0`` (per element, ``lr_i = lr * lr_scale_i``)::

        d = grad + weight_decay * param
        buf = d (step 1) | momentum * buf + d (step > 1)      -- only if momentum != 0
        d = d + momentum * buf (nesterov) | buf                -- only if momentum != 0
        param -= lr_i * d

    Entries where ``mask`` is false keep ``param`` and ``momentum_buf`` bitwise unchanged.

    Args:
        param: (n,) float32, contiguous; updated in place.
        grad: (n,) float32, bfloat16 or float16.
        momentum_buf: (n,) float32 momentum buffer, updated in place; required when ``momentum != 0`` (its
            contents are ignored and overwritten at ``step == 1``, as torch creates it then; keep it zero-filled
            if masks change between steps so that newly unmasked entries start from zero), may be ``None``
            when ``momentum == 0``.
        lr, momentum, weight_decay, nesterov: as torch.optim.SGD (nesterov needs momentum > 0).
        step: 1-based step t of this update (only used to initialise the momentum buffer at t = 1).
        mask: optional (n,) bool/uint8 (non-zero = update); ``None`` updates every entry.
        lr_scale: optional (n,) float32 per-element multiplier of ``lr``.
        backend: ``None``/``'auto'``/``'triton'``/``'torch'``, see :func:`resolve_backend`.
    """
    if nesterov and momentum == 0:
        raise ValueError("Nesterov momentum requires momentum != 0 (dampening is always 0)")
    if momentum != 0 and momentum_buf is None:
        raise ValueError("momentum != 0 needs a momentum_buf tensor (e.g. torch.zeros_like(param))")
    if int(step) < 1:
        raise ValueError(f"step is 1-based, got {step}")
    buf = momentum_buf if momentum != 0 else None
    B.check_same("param", param, grad=grad, momentum_buf=buf, mask=mask, lr_scale=lr_scale)
    B.check_float((torch.float32, torch.float64), param=param, momentum_buf=buf, lr_scale=lr_scale)
    B.check_float(GRAD_DTYPES + (torch.float64,), grad=grad)
    B.check_mask(mask)
    chosen = B.resolve_backend(param, backend)
    B.record("masked_sgd_step", chosen)
    kw = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, step=int(step), mask=mask,
              lr_scale=lr_scale)
    if chosen == "triton":
        _masked_sgd_triton(param, grad, buf, **kw)
    else:
        B.run_torch(masked_sgd_step_ref, param.numel(), param.device, param, grad, buf, **kw)
