"""masked_adamw_step / masked_sgd_step: Triton vs reference vs fp64, vs torch.optim, masking, lr_scale."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfed import kernels as K
from hpcfed.kernels import adamw, sgd

MASK_KINDS = ("none", "zeros", "ones", "random", "random_u8")
GRAD_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BIG = 2**20 + 3
ODD = 2 * 2048 + 3  # = conftest SIZES[-1]: a non-power-of-two above every kernel's BLOCK_SIZE
#: Fixed grid shared by AdamW and SGD: (n, mask kind, gradient dtype, with lr_scale); each mask kind once.
GRID = [(1, "ones", "fp32", False), (7, "none", "bf16", True), (7, "zeros", "fp32", True),
        (ODD, "random", "bf16", True), (ODD, "random_u8", "fp32", False)]
#: Hypothesis examples per test (~10-60 ms each in the CPU interpreter; fewer on a GPU, where each new
#: specialization of a kernel is a Triton compilation).
FUZZ = settings(max_examples=15 if torch.cuda.is_available() else 50, deadline=None)
ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)
SGD = dict(lr=5e-2, momentum=0.9, weight_decay=1e-2, nesterov=True)


def _inputs(n, mask_kind, grad_dtype, with_lr_scale, seed, H, p=0.5):
    gen = torch.Generator().manual_seed(seed)
    d = H.DEVICE
    return dict(
        param=torch.randn(n, generator=gen).to(d),
        grad=torch.randn(n, generator=gen).to(grad_dtype).to(d),
        s1=torch.randn(n, generator=gen).mul_(0.1).to(d),  # exp_avg / momentum buffer
        s2=torch.rand(n, generator=gen).mul_(0.01).to(d),  # exp_avg_sq
        lr_scale=torch.rand(n, generator=gen).add_(0.5).to(d) if with_lr_scale else None,
        mask=H.make_mask(mask_kind, n, gen, p=p),
    )


def _gold(x, H):
    g = H.clone_all(x, torch.float64)
    g["grad"] = x["grad"].double()  # the exact (bf16 or fp32) gradient values
    return g


def _adamw(fn, y, step, hyper=ADAMW, **kw):
    fn(y["param"], y["grad"], y["s1"], y["s2"], step=step, mask=y["mask"], lr_scale=y["lr_scale"], **hyper, **kw)


def _sgd(fn, y, step, hyper=SGD, **kw):
    fn(y["param"], y["grad"], y["s1"], step=step, mask=y["mask"], lr_scale=y["lr_scale"], **hyper, **kw)


def _check(run, state_names, n, mask_kind, grad_dtype, with_lr_scale, H, seed=0, p=0.5):
    x = _inputs(n, mask_kind, grad_dtype, with_lr_scale, seed, H, p)
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


def _adamw_runner(step, hyper=ADAMW):
    def run(y, which):
        if which == "ref":
            _adamw(K.masked_adamw_step_ref, y, step, hyper)
        else:
            _adamw(K.masked_adamw_step, y, step, hyper, backend=which)
    return run


def _sgd_runner(step, hyper=SGD):
    def run(y, which):
        if which == "ref":
            _sgd(K.masked_sgd_step_ref, y, step, hyper)
        else:
            _sgd(K.masked_sgd_step, y, step, hyper, backend=which)
    return run


# ------------------------------------------------------------------------------------------------------- AdamW
@pytest.mark.parametrize("n,mask_kind,grad,with_lr_scale", GRID)
def test_triton_adamw_matches_reference(n, mask_kind, grad, with_lr_scale, helpers):
    assert ODD == helpers.SIZES[-1] and ODD > adamw.BLOCK_SIZE
    _check(_adamw_runner(3), ("s1", "s2"), n, mask_kind, GRAD_DTYPES[grad], with_lr_scale, helpers)


@FUZZ
@given(n=st.integers(1, 3 * adamw.BLOCK_SIZE + 5), mask_kind=st.sampled_from(MASK_KINDS), p=st.floats(0, 1),
       grad=st.sampled_from(list(GRAD_DTYPES)), with_lr_scale=st.booleans(), step=st.integers(1, 1000),
       lr=st.floats(1e-5, 0.1), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.9, 0.99999),
       eps=st.floats(1e-10, 1e-2), weight_decay=st.floats(0.0, 0.5), seed=st.integers(0, 2**32 - 1))
def test_triton_adamw_matches_reference_fuzz(n, mask_kind, p, grad, with_lr_scale, step, lr, beta1, beta2, eps,
                                             weight_decay, seed, helpers):
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    _check(_adamw_runner(step, hyper), ("s1", "s2"), n, mask_kind, GRAD_DTYPES[grad], with_lr_scale, helpers,
           seed=seed, p=p)


@pytest.mark.slow
@pytest.mark.parametrize("grad,mask_kind", [("bf16", "random"), ("fp32", "none")])
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
@pytest.mark.parametrize("n,mask_kind,grad,with_lr_scale", GRID)
def test_triton_sgd_matches_reference(n, mask_kind, grad, with_lr_scale, helpers):
    assert ODD == helpers.SIZES[-1] and ODD > sgd.BLOCK_SIZE
    _check(_sgd_runner(3), ("s1",), n, mask_kind, GRAD_DTYPES[grad], with_lr_scale, helpers)


@pytest.mark.parametrize(
    "hyper,step",
    [(dict(lr=0.1), 1), (dict(lr=0.1, momentum=0.9), 1), (dict(lr=0.1, momentum=0.5, weight_decay=0.1), 2),
     (dict(lr=0.1, momentum=0.9, nesterov=True), 1)],
    ids=["plain", "momentum-first-step", "momentum-wd", "nesterov-first-step"],
)
def test_triton_sgd_variants_match_reference(hyper, step, helpers):
    states = ("s1",) if hyper.get("momentum") else ()
    _check(_sgd_runner(step, hyper), states, 1000, "random", torch.float32, False, helpers, seed=3)


@FUZZ
@given(n=st.integers(1, 3 * sgd.BLOCK_SIZE + 5), mask_kind=st.sampled_from(MASK_KINDS), p=st.floats(0, 1),
       grad=st.sampled_from(list(GRAD_DTYPES)), with_lr_scale=st.booleans(), step=st.integers(1, 5),
       lr=st.floats(1e-4, 1.0), momentum=st.just(0.0) | st.floats(0.01, 0.99), nesterov=st.booleans(),
       weight_decay=st.just(0.0) | st.floats(1e-4, 0.1), seed=st.integers(0, 2**32 - 1))
def test_triton_sgd_matches_reference_fuzz(n, mask_kind, p, grad, with_lr_scale, step, lr, momentum, nesterov,
                                           weight_decay, seed, helpers):
    hyper = dict(lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay)
    states = ("s1",) if momentum else ()
    _check(_sgd_runner(step, hyper), states, n, mask_kind, GRAD_DTYPES[grad], with_lr_scale, helpers, seed=seed,
           p=p)


@pytest.mark.slow
@pytest.mark.parametrize("grad,mask_kind", [("fp32", "random_u8"), ("bf16", "none")])
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
