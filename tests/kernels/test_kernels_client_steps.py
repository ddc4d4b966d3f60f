"""masked_adamw_step / masked_sgd_step: Triton vs reference vs fp64, vs torch.optim, masking, lr_scale."""

from __future__ import annotations

import pytest
import torch

from hpcfed import kernels as K

SMALL_SIZES = (1, 7, 1000)
MASK_KINDS = ("none", "zeros", "ones", "random", "random_u8")
GRAD_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BIG = 2**20 + 3
ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)
SGD = dict(lr=5e-2, momentum=0.9, weight_decay=1e-2, nesterov=True)


def _inputs(n, mask_kind, grad_dtype, with_lr_scale, seed, H):
    gen = torch.Generator().manual_seed(seed)
    d = H.DEVICE
    return dict(
        param=torch.randn(n, generator=gen).to(d),
        grad=torch.randn(n, generator=gen).to(grad_dtype).to(d),
        s1=torch.randn(n, generator=gen).mul_(0.1).to(d),  # exp_avg / momentum buffer
        s2=torch.rand(n, generator=gen).mul_(0.01).to(d),  # exp_avg_sq
        lr_scale=torch.rand(n, generator=gen).add_(0.5).to(d) if with_lr_scale else None,
        mask=H.make_mask(mask_kind, n, gen),
    )


def _gold(x, H):
    g = H.clone_all(x, torch.float64)
    g["grad"] = x["grad"].double()  # the exact (bf16 or fp32) gradient values
    return g


def _adamw(fn, y, step, **kw):
    fn(y["param"], y["grad"], y["s1"], y["s2"], step=step, mask=y["mask"], lr_scale=y["lr_scale"], **ADAMW, **kw)


def _sgd(fn, y, step, hyper=SGD, **kw):
    fn(y["param"], y["grad"], y["s1"], step=step, mask=y["mask"], lr_scale=y["lr_scale"], **hyper, **kw)


def _check(run, state_names, n, mask_kind, grad_dtype, with_lr_scale, H, seed=0, step=3):
    x = _inputs(n, mask_kind, grad_dtype, with_lr_scale, seed, H)
    gold, ref, ker = _gold(x, H), H.clone_all(x), H.clone_all(x)
    run(gold, "ref")
    run(ref, "torch")
    run(ker, "triton")
    off = ~H.active(x["mask"], n)
    for name in ("param",) + state_names:
        H.assert_err_bound(name, ker[name], ref[name], gold[name])
        H.assert_unchanged_bitwise(name, ker[name], x[name], off)
        H.assert_unchanged_bitwise(f"{name} (torch)", ref[name], x[name], off)
        if bool((~off).any()):
            assert not torch.equal(ker[name][~off], x[name][~off]), f"{name}: nothing updated"


def _adamw_runner(step):
    def run(y, which):
        if which == "ref":
            _adamw(K.masked_adamw_step_ref, y, step)
        else:
            _adamw(K.masked_adamw_step, y, step, backend=which)
    return run


def _sgd_runner(step, hyper=SGD):
    def run(y, which):
        if which == "ref":
            _sgd(K.masked_sgd_step_ref, y, step, hyper)
        else:
            _sgd(K.masked_sgd_step, y, step, hyper, backend=which)
    return run


# ------------------------------------------------------------------------------------------------------- AdamW
@pytest.mark.parametrize("grad", list(GRAD_DTYPES))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("n", SMALL_SIZES)
def test_triton_adamw_matches_reference(n, mask_kind, grad, helpers):
    _check(_adamw_runner(3), ("s1", "s2"), n, mask_kind, GRAD_DTYPES[grad], n == 1000, helpers)


@pytest.mark.parametrize("grad,mask_kind", [("bf16", "random"), pytest.param("fp32", "none", marks=pytest.mark.slow)])
def test_triton_adamw_matches_reference_big(grad, mask_kind, helpers):
    _check(_adamw_runner(1), ("s1", "s2"), BIG, mask_kind, GRAD_DTYPES[grad], True, helpers, seed=1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_adamw_matches_torch_optim(backend, helpers):
    d, n = helpers.DEVICE, 257
    gen = torch.Generator().manual_seed(7)
    p0 = torch.randn(n, generator=gen)
    grads = [torch.randn(n, generator=gen) for _ in range(5)]
    ref = torch.nn.Parameter(p0.clone().to(d))
    opt = torch.optim.AdamW([ref], lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"], foreach=False)
    param, m, v = p0.clone().to(d), torch.zeros(n, device=d), torch.zeros(n, device=d)
    for t, g in enumerate(grads, start=1):
        ref.grad = g.to(d)
        opt.step()
        K.masked_adamw_step(param, g.to(d), m, v, step=t, backend=backend, **ADAMW)
    st = opt.state[ref]
    torch.testing.assert_close(param, ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m, st["exp_avg"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v, st["exp_avg_sq"], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(param, p0.to(d))


# --------------------------------------------------------------------------------------------------------- SGD
@pytest.mark.parametrize("grad", list(GRAD_DTYPES))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("n", SMALL_SIZES)
def test_triton_sgd_matches_reference(n, mask_kind, grad, helpers):
    _check(_sgd_runner(3), ("s1",), n, mask_kind, GRAD_DTYPES[grad], n == 1000, helpers)


@pytest.mark.parametrize(
    "hyper,step",
    [(dict(lr=0.1), 1), (dict(lr=0.1, momentum=0.9), 1), (dict(lr=0.1, momentum=0.5, weight_decay=0.1), 2),
     (dict(lr=0.1, momentum=0.9, nesterov=True), 1)],
    ids=["plain", "momentum-first-step", "momentum-wd", "nesterov-first-step"],
)
def test_triton_sgd_variants_match_reference(hyper, step, helpers):
    states = ("s1",) if hyper.get("momentum") else ()
    _check(_sgd_runner(step, hyper), states, 1000, "random", torch.float32, False, helpers, seed=3, step=step)


@pytest.mark.parametrize("grad,mask_kind", [("fp32", "random_u8"), pytest.param("bf16", "none", marks=pytest.mark.slow)])
def test_triton_sgd_matches_reference_big(grad, mask_kind, helpers):
    _check(_sgd_runner(2), ("s1",), BIG, mask_kind, GRAD_DTYPES[grad], True, helpers, seed=1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    "momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2), (0.5, False, 1e-1)]
)
def test_sgd_matches_torch_optim(momentum, nesterov, weight_decay, backend, helpers):
    d, n = helpers.DEVICE, 257
    gen = torch.Generator().manual_seed(8)
    p0 = torch.randn(n, generator=gen)
    grads = [torch.randn(n, generator=gen) for _ in range(5)]
    ref = torch.nn.Parameter(p0.clone().to(d))
    opt = torch.optim.SGD([ref], lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                          foreach=False)
    param = p0.clone().to(d)
    buf = torch.full((n,), float("nan"), device=d) if momentum else None  # step 1 must overwrite it
    for t, g in enumerate(grads, start=1):
        ref.grad = g.to(d)
        opt.step()
        K.masked_sgd_step(param, g.to(d), buf, lr=0.05, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay, step=t, backend=backend)
    torch.testing.assert_close(param, ref.detach(), rtol=1e-6, atol=1e-6)
    if momentum:
        torch.testing.assert_close(buf, opt.state[ref]["momentum_buffer"], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------ shared behaviours
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lr_scale_is_a_per_element_learning_rate(backend, helpers):
    """lr_scale = c everywhere must equal lr * c (AdamW: also in the decoupled decay; SGD: in the step)."""
    d, n = helpers.DEVICE, 100
    x = _inputs(n, "none", torch.float32, False, 9, helpers)
    scaled, plain = helpers.clone_all(x), helpers.clone_all(x)
    c = torch.full((n,), 3.0, device=d)
    K.masked_adamw_step(scaled["param"], x["grad"], scaled["s1"], scaled["s2"], step=2, lr_scale=c,
                        backend=backend, **ADAMW)
    K.masked_adamw_step(plain["param"], x["grad"], plain["s1"], plain["s2"], step=2, backend=backend,
                        **{**ADAMW, "lr": 3 * ADAMW["lr"]})
    torch.testing.assert_close(scaled["param"], plain["param"], rtol=1e-6, atol=1e-7)
    scaled, plain = helpers.clone_all(x), helpers.clone_all(x)
    K.masked_sgd_step(scaled["param"], x["grad"], scaled["s1"], step=2, lr_scale=c, backend=backend, **SGD)
    K.masked_sgd_step(plain["param"], x["grad"], plain["s1"], step=2, backend=backend, **{**SGD, "lr": 3 * SGD["lr"]})
    torch.testing.assert_close(scaled["param"], plain["param"], rtol=1e-6, atol=1e-7)
    head = torch.ones(n, device=d)
    head[:10] = 0.0  # lr_scale 0 freezes parameters (but AdamW still updates its moments)
    y = helpers.clone_all(x)
    K.masked_adamw_step(y["param"], x["grad"], y["s1"], y["s2"], step=2, lr_scale=head, backend=backend, **ADAMW)
    assert torch.equal(y["param"][:10], x["param"][:10]) and not torch.equal(y["param"][10:], x["param"][10:])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_masked_out_nan_gradients_do_not_leak(backend, helpers):
    n = 300
    x = _inputs(n, "random", torch.bfloat16, True, 10, helpers)
    x["grad"][~x["mask"]] = float("nan")
    y = helpers.clone_all(x)
    _adamw(K.masked_adamw_step, y, 4, backend=backend)
    assert all(torch.isfinite(y[k]).all() for k in ("param", "s1", "s2"))
    y = helpers.clone_all(x)
    _sgd(K.masked_sgd_step, y, 4, backend=backend)
    assert torch.isfinite(y["param"]).all() and torch.isfinite(y["s1"]).all()


def test_sgd_argument_errors(helpers):
    d = helpers.DEVICE
    p, g = torch.zeros(4, device=d), torch.zeros(4, device=d)
    with pytest.raises(ValueError, match="Nesterov"):
        K.masked_sgd_step(p, g, torch.zeros(4, device=d), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="momentum_buf"):
        K.masked_sgd_step(p, g, None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="1-based"):
        K.masked_adamw_step(p, g, p.clone(), p.clone(), step=0, **ADAMW)
    with pytest.raises(TypeError, match="grad"):
        K.masked_sgd_step(p, g.to(torch.int32), None, lr=0.1)
    K.masked_sgd_step(p, g + 1, None, lr=0.1)  # momentum 0 needs no buffer
    assert (p == -0.1).all()
