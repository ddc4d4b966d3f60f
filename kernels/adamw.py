"""Fused masked AdamW step of a client's local optimizer over the flat PEFT buffer.

Math
----
AdamW with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019),
in exactly the form of ``torch.optim.AdamW`` (single-tensor path, ``amsgrad=False``, ``maximize=False``), with
a per-element learning rate lr_i = lr * s_i (s = ``lr_scale``, 1 when ``None``) and step t >= 1:

    theta <- theta * (1 - lr_i * wd)                              (decoupled weight decay)
    m     <- m + (1 - beta1) * (g - m)                            (= beta1 m + (1 - beta1) g, torch.lerp)
    v     <- v * beta2 + (1 - beta2) * g * g
    theta <- theta - (lr_i / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc1 = 1 - beta1^t, bc2 = 1 - beta2^t

(i.e. theta -= lr_i * m_hat / (sqrt(v_hat) + eps) with m_hat = m / bc1, v_hat = v / bc2; Kingma & Ba, "Adam",
ICLR 2015.) Only elements with mask_i true are touched; elsewhere theta, m and v stay bitwise unchanged. The
gradient g may be fp32, bf16 or fp16 and is upcast to fp32 in registers; parameters and state are fp32.

Memory traffic per element: reads theta, g, m, v (16 B with an fp32 gradient, 14 B bf16) [+ 1 B mask,
+ 4 B lr_scale], writes theta, m, v (12 B). torch.optim.AdamW's single-tensor path makes ~6 passes.

Block size
----------
``BLOCK_SIZE = 1024`` elements per program, ``num_warps = 4`` (8 fp32 per thread): five to six input
streams and a division + square root per element, so the smaller tile keeps register use moderate.
Chosen a priori (no GPU was available for tuning, see docs/kernels.md).
"""

from __future__ import annotations

import math

import torch

from . import _backend as B
from ._backend import tl, triton_jit

BLOCK_SIZE = 1024
GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------------------- Triton kernel
@triton_jit
def _masked_adamw_kernel(
    param_ptr,  # *fp32 (n,), updated in place
    grad_ptr,  # *fp32 | *bf16 | *fp16 (n,)
    exp_avg_ptr,  # *fp32 (n,), m, updated in place
    exp_avg_sq_ptr,  # *fp32 (n,), v, updated in place
    mask_ptr,  # *uint8 (n,), read only when HAS_MASK
    lr_scale_ptr,  # *fp32 (n,), read only when HAS_LR_SCALE
    n_elements,
    decay,  # 1 - lr * wd      (used without lr_scale)
    lr_wd,  # lr * wd          (used with lr_scale)
    beta1_complement,  # 1 - beta1
    beta2,
    beta2_complement,  # 1 - beta2
    eps,
    step_size,  # lr / bc1
    bc2_sqrt,  # sqrt(1 - beta2^t)
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
    g = tl.load(grad_ptr + offsets, mask=live, other=0.0).to(tl.float32)
    m = tl.load(exp_avg_ptr + offsets, mask=live, other=0.0)
    v = tl.load(exp_avg_sq_ptr + offsets, mask=live, other=0.0)
    if HAS_LR_SCALE:
        s = tl.load(lr_scale_ptr + offsets, mask=live, other=0.0)
        p = p * (1.0 - lr_wd * s)
        elem_step = step_size * s
    else:
        p = p * decay
        elem_step = step_size
    m = m + beta1_complement * (g - m)
    v = v * beta2 + beta2_complement * (g * g)
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p - elem_step * tl.div_rn(m, denom)
    tl.store(param_ptr + offsets, p, mask=live)
    tl.store(exp_avg_ptr + offsets, m, mask=live)
    tl.store(exp_avg_sq_ptr + offsets, v, mask=live)


# -------------------------------------------------------------------------------------------------- Python wrapper
def _scalars(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int) -> dict[str, float]:
    """Host-side (float64) constants, computed as torch.optim.AdamW does."""
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return dict(decay=1.0 - lr * weight_decay, lr_wd=lr * weight_decay, beta1_complement=1.0 - beta1,
                beta2=float(beta2), beta2_complement=1.0 - beta2, eps=float(eps), step_size=lr / bc1,
                bc2_sqrt=math.sqrt(bc2))


def _masked_adamw_triton(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    mask: torch.Tensor | None = None,
    lr_scale: torch.Tensor | None = None,
    block_size: int | None = None,
) -> None:
    """Launch :func:`_masked_adamw_kernel` (arguments already validated by the dispatcher)."""
    B.require_fp32(param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, lr_scale=lr_scale)
    n = param.numel()
    if n == 0:
        return
    bs = B.check_block_size(block_size or BLOCK_SIZE)
    s = _scalars(lr, beta1, beta2, eps, weight_decay, step)
    _masked_adamw_kernel[(B.cdiv(n, bs),)](
        param, grad, exp_avg, exp_avg_sq,
        B.mask_as_uint8(mask) if mask is not None else param,
        lr_scale if lr_scale is not None else param,
        n,
        s["decay"], s["lr_wd"], s["beta1_complement"], s["beta2"], s["beta2_complement"], s["eps"],
        s["step_size"], s["bc2_sqrt"],
        HAS_MASK=mask is not None,
        HAS_LR_SCALE=lr_scale is not None,
        BLOCK_SIZE=bs,
        INT64=B.needs_int64(n, bs),
        num_warps=B.num_warps_for(bs),
    )


# ------------------------------------------------------------------------------------------------------- reference
def masked_adamw_step_ref(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    mask: torch.Tensor | None = None,
    lr_scale: torch.Tensor | None = None,
) -> None:
    """Pure-torch reference of :func:`masked_adamw_step` (same arguments, no ``backend``; any float dtype).

    Without mask and lr_scale this is op for op torch.optim.AdamW's single-tensor update.
    """
    s = _scalars(lr, beta1, beta2, eps, weight_decay, step)
    g = grad.to(param.dtype)
    if mask is None:
        p_new, m_new, v_new = param, exp_avg, exp_avg_sq  # update in place, as torch.optim.AdamW does
    else:
        p_new, m_new, v_new = param.clone(), exp_avg.clone(), exp_avg_sq.clone()
    if lr_scale is None:
        p_new.mul_(s["decay"])
    else:
        p_new.mul_(torch.mul(lr_scale, -s["lr_wd"]).add_(1.0))
    m_new.lerp_(g, s["beta1_complement"])
    v_new.mul_(s["beta2"]).addcmul_(g, g, value=s["beta2_complement"])
    denom = v_new.sqrt().div_(s["bc2_sqrt"]).add_(s["eps"])
    if lr_scale is None:
        p_new.addcdiv_(m_new, denom, value=-s["step_size"])
    else:
        p_new.sub_(torch.div(m_new, denom).mul_(torch.mul(lr_scale, s["step_size"])))
    if mask is not None:
        keep = B.bool_mask(mask)
        torch.where(keep, p_new, param, out=param)
        torch.where(keep, m_new, exp_avg, out=exp_avg)
        torch.where(keep, v_new, exp_avg_sq, out=exp_avg_sq)


# ------------------------------------------------------------------------------------------------------ dispatcher
def masked_adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    mask: torch.Tensor | None = None,
    lr_scale: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """One AdamW step over the masked entries of a flat parameter buffer, in place, in one pass over memory.

    Same math as ``torch.optim.AdamW`` (Loshchilov & Hutter, ICLR 2019; decoupled weight decay), per element
    with ``lr_i = lr * lr_scale_i``::

        param   *= 1 - lr_i * weight_decay
        exp_avg  = beta1 * exp_avg + (1 - beta1) * grad
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad^2
        param   -= lr_i * (exp_avg / (1 - beta1^step)) / (sqrt(exp_avg_sq / (1 - beta2^step)) + eps)

    Entries where ``mask`` is false keep ``param``, ``exp_avg``, ``exp_avg_sq`` bitwise unchanged.

    Args:
        param: (n,) float32, contiguous; updated in place.
        grad: (n,) float32, bfloat16 or float16 (upcast to fp32 in the kernel).
        exp_avg, exp_avg_sq: (n,) float32 first/second moment, updated in place (zeros before step 1).
        lr, beta1, beta2, eps, weight_decay: as torch.optim.AdamW. step: 1-based step t of this update.
        mask: optional (n,) bool/uint8 (non-zero = update); ``None`` updates every entry.
        lr_scale: optional (n,) float32 per-element multiplier of ``lr`` (also scales the decay, as lr does).
        backend: ``None``/``'auto'``/``'triton'``/``'torch'``, see :func:`resolve_backend`.
    """
    if int(step) < 1:
        raise ValueError(f"step is 1-based, got {step}")
    B.check_same("param", param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, mask=mask, lr_scale=lr_scale)
    B.check_float((torch.float32, torch.float64), param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                  lr_scale=lr_scale)
    B.check_float(GRAD_DTYPES + (torch.float64,), grad=grad)
    B.check_mask(mask)
    chosen = B.resolve_backend(param, backend)
    B.record("masked_adamw_step", chosen)
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=int(step), mask=mask,
              lr_scale=lr_scale)
    if chosen == "triton":
        _masked_adamw_triton(param, grad, exp_avg, exp_avg_sq, **kw)
    else:
        B.run_torch(masked_adamw_step_ref, param.numel(), param.device, param, grad, exp_avg, exp_avg_sq, **kw)
