"""Fused server optimizer step: (acc, cnt) of one round -> new global PEFT parameters, in one pass.

Math
----
Per element i of the flat buffer, with ``acc``/``cnt`` from :func:`hpcfed.kernels.masked_accumulate`:

    active_i = (cnt_i > 0) and mask_i                 (mask_i = true when no explicit mask is given)
    Delta_i  = acc_i / cnt_i                          (weighted mean client update, a pseudo-gradient)

and only where active_i (elsewhere theta and every state tensor are left bitwise unchanged):

* ``'avg'``  -- FedAvg with server learning rate (McMahan et al., AISTATS 2017; eta = 1 is plain FedAvg):
      theta <- theta + eta * Delta
* ``'avgm'`` -- FedAvgM, server momentum (Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", arXiv:1909.06335, 2019):
      m <- mu * m + Delta ;  theta <- theta + eta * m
* ``'adam'`` / ``'yogi'`` -- FedAdam / FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
  Algorithm 2), with optional Adam-style bias correction (Kingma & Ba, ICLR 2015):
      m <- beta1 * m + (1 - beta1) * Delta
      adam: v <- beta2 * v + (1 - beta2) * Delta^2
      yogi: v <- v - (1 - beta2) * Delta^2 * sign(v - Delta^2)
      m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)      (m_hat = m, v_hat = v without bias correction)
      theta <- theta + eta * m_hat / (sqrt(v_hat) + tau)           (tau = ``eps``, the adaptivity degree)
  evaluated like torch.optim.Adam as  theta + (eta / bc1) * m / (sqrt(v) / sqrt(bc2) + tau),
  with bc1 = 1 - beta1^t, bc2 = 1 - beta2^t computed in float64 on the host.

Caveat: t is the global round number of this update, so an element first trained at round t > 1 gets less
bias correction than a per-element step count would give it (the paper has no bias correction at all).

Memory traffic per element (no mask): avg 16 B, avgm 24 B, adam/yogi 32 B (+1 B with a mask); inactive
elements skip all loads but cnt (and the mask).

Block size
----------
``BLOCK_SIZE = 1024`` elements per program, ``num_warps = 4`` (8 fp32 per thread). Up to five input and three
output streams plus an IEEE division and square root per element: the smaller tile keeps register pressure
low enough for full occupancy. Chosen a priori (no GPU was available for tuning, see docs/kernels.md).
"""

from __future__ import annotations

import math

import torch

from . import _backend as B
from ._backend import tl, triton_jit

BLOCK_SIZE = 1024

#: optimizer name -> (kernel code, state tensors it keeps)
OPTIMIZERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "avg": (0, ()),
    "avgm": (1, ("m",)),
    "adam": (2, ("m", "v")),
    "yogi": (3, ("m", "v")),
}


# --------------------------------------------------------------------------------------------------- Triton kernel
@triton_jit
def _server_update_kernel(
    theta_ptr,  # *fp32 (n,), updated in place
    acc_ptr,  # *fp32 (n,)
    cnt_ptr,  # *fp32 (n,)
    m_ptr,  # *fp32 (n,), first moment / momentum (avgm, adam, yogi), updated in place
    v_ptr,  # *fp32 (n,), second moment (adam, yogi), updated in place
    mask_ptr,  # *uint8 (n,), read only when HAS_MASK
    n_elements,
    lr,  # eta
    momentum,  # mu (avgm)
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,  # tau
    step_size,  # eta / bc1
    bc2_sqrt,  # sqrt(bc2)
    OPTIMIZER: tl.constexpr,  # 0 avg, 1 avgm, 2 adam, 3 yogi
    HAS_MASK: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    INT64: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    if INT64:
        pid = pid.to(tl.int64)
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    in_bounds = offsets < n_elements
    cnt = tl.load(cnt_ptr + offsets, mask=in_bounds, other=0.0)
    live = in_bounds & (cnt > 0.0)
    if HAS_MASK:
        live = live & (tl.load(mask_ptr + offsets, mask=in_bounds, other=0) != 0)
    acc = tl.load(acc_ptr + offsets, mask=live, other=0.0)
    theta = tl.load(theta_ptr + offsets, mask=live, other=0.0)
    delta = tl.div_rn(acc, tl.where(live, cnt, 1.0))
    if OPTIMIZER == 0:
        theta = theta + lr * delta
    elif OPTIMIZER == 1:
        m = tl.load(m_ptr + offsets, mask=live, other=0.0)
        m = m * momentum + delta
        tl.store(m_ptr + offsets, m, mask=live)
        theta = theta + lr * m
    else:
        m = tl.load(m_ptr + offsets, mask=live, other=0.0)
        v = tl.load(v_ptr + offsets, mask=live, other=0.0)
        m = m * beta1 + one_minus_beta1 * delta
        delta_sq = delta * delta
        if OPTIMIZER == 2:
            v = v * beta2 + one_minus_beta2 * delta_sq
        else:
            gap = v - delta_sq
            sign = tl.where(gap > 0.0, 1.0, tl.where(gap < 0.0, -1.0, 0.0))
            v = v - one_minus_beta2 * delta_sq * sign
        tl.store(m_ptr + offsets, m, mask=live)
        tl.store(v_ptr + offsets, v, mask=live)
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        theta = theta + step_size * tl.div_rn(m, denom)
    tl.store(theta_ptr + offsets, theta, mask=live)


# -------------------------------------------------------------------------------------------------- Python wrapper
def _scalars(optimizer: str, lr: float, step: int, momentum: float, beta1: float, beta2: float, eps: float,
             bias_correction: bool) -> dict[str, float]:
    """Host-side (float64) hyper-parameters shared by the kernel and the reference."""
    if optimizer in ("adam", "yogi") and bias_correction:
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
    else:
        bc1 = bc2 = 1.0
    return dict(lr=float(lr), momentum=float(momentum), beta1=float(beta1), one_minus_beta1=1.0 - beta1,
                beta2=float(beta2), one_minus_beta2=1.0 - beta2, eps=float(eps), step_size=lr / bc1,
                bc2_sqrt=math.sqrt(bc2))


def _server_update_triton(
    theta: torch.Tensor,
    acc: torch.Tensor,
    cnt: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    optimizer: str,
    lr: float,
    step: int,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-3,
    bias_correction: bool = True,
    mask: torch.Tensor | None = None,
    block_size: int | None = None,
) -> None:
    """Launch :func:`_server_update_kernel` (arguments already validated by the dispatcher)."""
    code, keys = OPTIMIZERS[optimizer]
    m = state["m"] if "m" in keys else theta  # dummy pointers are never read for optimizers without state
    v = state["v"] if "v" in keys else theta
    B.require_fp32(theta=theta, acc=acc, cnt=cnt, m=m, v=v)
    n = theta.numel()
    if n == 0:
        return
    bs = B.check_block_size(block_size or BLOCK_SIZE)
    s = _scalars(optimizer, lr, step, momentum, beta1, beta2, eps, bias_correction)
    _server_update_kernel[(B.cdiv(n, bs),)](
        theta, acc, cnt, m, v,
        B.mask_as_uint8(mask) if mask is not None else cnt,
        n,
        s["lr"], s["momentum"], s["beta1"], s["one_minus_beta1"], s["beta2"], s["one_minus_beta2"], s["eps"],
        s["step_size"], s["bc2_sqrt"],
        OPTIMIZER=code,
        HAS_MASK=mask is not None,
        BLOCK_SIZE=bs,
        INT64=B.needs_int64(n, bs),
        num_warps=B.num_warps_for(bs),
    )


# ------------------------------------------------------------------------------------------------------- reference
def server_update_ref(
    theta: torch.Tensor,
    acc: torch.Tensor,
    cnt: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    optimizer: str,
    lr: float,
    step: int,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-3,
    bias_correction: bool = True,
    mask: torch.Tensor | None = None,
) -> None:
    """Pure-torch reference of :func:`server_update` (same arguments, no ``backend``; any float dtype)."""
    s = _scalars(optimizer, lr, step, momentum, beta1, beta2, eps, bias_correction)
    active = cnt > 0
    if mask is not None:
        active &= B.bool_mask(mask)
    delta = torch.div(acc, torch.where(active, cnt, 1.0))
    if optimizer == "avg":
        torch.where(active, delta.mul_(s["lr"]).add_(theta), theta, out=theta)
        return
    m = state["m"]
    if optimizer == "avgm":
        m_new = torch.mul(m, s["momentum"]).add_(delta)
        torch.where(active, m_new, m, out=m)
        torch.where(active, m_new.mul_(s["lr"]).add_(theta), theta, out=theta)
        return
    v = state["v"]
    m_new = torch.mul(m, s["beta1"]).add_(delta, alpha=s["one_minus_beta1"])
    delta_sq = delta.mul_(delta)
    if optimizer == "adam":
        v_new = torch.mul(v, s["beta2"]).add_(delta_sq, alpha=s["one_minus_beta2"])
    else:
        v_new = torch.sub(v, delta_sq).sign_().mul_(delta_sq).mul_(-s["one_minus_beta2"]).add_(v)
    torch.where(active, m_new, m, out=m)
    torch.where(active, v_new, v, out=v)
    denom = v_new.sqrt_().div_(s["bc2_sqrt"]).add_(s["eps"])
    torch.where(active, m_new.div_(denom).mul_(s["step_size"]).add_(theta), theta, out=theta)


# ------------------------------------------------------------------------------------------------------ dispatcher
def init_server_state(optimizer: str, n: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Zero optimizer state for :func:`server_update`: {} (avg), {'m'} (avgm), {'m', 'v'} (adam, yogi), (n,) fp32."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {optimizer!r}; expected one of {tuple(OPTIMIZERS)}")
    return {k: torch.zeros(n, dtype=torch.float32, device=device) for k in OPTIMIZERS[optimizer][1]}


def server_update(
    theta: torch.Tensor,
    acc: torch.Tensor,
    cnt: torch.Tensor,
    state: dict[str, torch.Tensor],
    *,
    optimizer: str,
    lr: float,
    step: int,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-3,
    bias_correction: bool = True,
    mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Apply the server optimizer to the global PEFT buffer, in place, in one pass over memory.

    With ``Delta = acc / cnt`` on elements where ``cnt > 0`` (and ``mask``, if given):

    * ``'avg'``:  ``theta += lr * Delta`` (FedAvg with server learning rate; McMahan et al., AISTATS 2017)
    * ``'avgm'``: ``m = momentum * m + Delta; theta += lr * m`` (FedAvgM; Hsu et al., arXiv:1909.06335)
    * ``'adam'``: ``m = b1 m + (1-b1) Delta; v = b2 v + (1-b2) Delta^2``
    * ``'yogi'``: ``m = b1 m + (1-b1) Delta; v = v - (1-b2) Delta^2 sign(v - Delta^2)``
      and for both ``theta += lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^step)``,
      ``v_hat = v / (1 - b2^step)`` if ``bias_correction`` else ``m``, ``v`` (FedAdam / FedYogi: Reddi et al.,
      "Adaptive Federated Optimization", ICLR 2021, Algorithm 2; ``eps`` is the paper's tau).

    Elsewhere (``cnt == 0`` or mask false) ``theta`` and the state are left bitwise unchanged.

    Args:
        theta: (n,) float32, contiguous; global parameters, updated in place.
        acc, cnt: (n,) float32; the round's sums from :func:`masked_accumulate` (not modified).
        state: dict of (n,) float32 tensors, updated in place: ``'m'`` for avgm/adam/yogi, ``'v'`` for
            adam/yogi; create it with :func:`init_server_state`.
        optimizer: ``'avg'``, ``'avgm'``, ``'adam'`` or ``'yogi'``.
        lr: server learning rate eta. step: 1-based index t of this update (bias correction).
        momentum: mu of avgm. beta1, beta2, eps: Adam/Yogi hyper-parameters (eps = tau, default 1e-3).
        mask: optional (n,) bool/uint8, further restricts the updated elements.
        backend: ``None``/``'auto'``/``'triton'``/``'torch'``, see :func:`resolve_backend`.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {optimizer!r}; expected one of {tuple(OPTIMIZERS)}")
    keys = OPTIMIZERS[optimizer][1]
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"server optimizer {optimizer!r} needs state {missing}; use init_server_state()")
    if optimizer in ("adam", "yogi") and bias_correction and int(step) < 1:
        raise ValueError(f"step is 1-based, got {step}")
    B.check_same("theta", theta, acc=acc, cnt=cnt, mask=mask, **{f"state[{k!r}]": state[k] for k in keys})
    B.check_float((torch.float32, torch.float64), theta=theta, acc=acc, cnt=cnt,
                  **{f"state[{k!r}]": state[k] for k in keys})
    B.check_mask(mask)
    chosen = B.resolve_backend(theta, backend)
    B.record("server_update", chosen)
    kw = dict(optimizer=optimizer, lr=lr, step=int(step), momentum=momentum, beta1=beta1, beta2=beta2, eps=eps,
              bias_correction=bias_correction, mask=mask)
    if chosen == "triton":
        _server_update_triton(theta, acc, cnt, {k: state[k] for k in keys}, **kw)
    else:
        B.run_torch(server_update_ref, theta.numel(), theta.device, theta, acc, cnt, {k: state[k] for k in keys},
                    **kw)
