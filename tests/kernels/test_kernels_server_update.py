"""server_update: Triton kernel vs torch reference vs fp64, hand-written FedAdam/FedYogi loop, masking."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfed import kernels as K
from hpcfed.kernels.server import BLOCK_SIZE

MASK_KINDS = ("none", "zeros", "ones", "random", "random_u8")
BIG = 2**20 + 3
ODD = 2 * 2048 + 3  # = conftest SIZES[-1]: a non-power-of-two above every kernel's BLOCK_SIZE
OPTIMIZERS = ("avg", "avgm", "adam", "yogi")
HYPER = dict(lr=0.3, momentum=0.8, beta1=0.9, beta2=0.99, eps=1e-3)
#: Fixed grid per optimizer: (n, mask kind); each mask kind once.
GRID = [(1, "ones"), (7, "none"), (7, "random_u8"), (ODD, "zeros"), (ODD, "random")]
#: Hypothesis examples per test (~10-60 ms each in the CPU interpreter; fewer on a GPU, where each new
#: specialization of a kernel is a Triton compilation).
FUZZ = settings(max_examples=15 if torch.cuda.is_available() else 50, deadline=None)


def _inputs(optimizer, n, mask_kind, seed, H, p=0.5):
    gen = torch.Generator().manual_seed(seed)
    d = H.DEVICE
    cnt = torch.randint(0, 4, (n,), generator=gen).float() * 1.5  # about a quarter of the entries untrained
    acc = torch.randn(n, generator=gen) * cnt
    state = {k: torch.randn(n, generator=gen) * 0.1 for k in K.SERVER_OPTIMIZERS[optimizer][1]}
    if "v" in state:
        v = state["v"].abs_()
        if optimizer == "yogi":
            # sign(v - Delta^2) is discontinuous: keep v away from Delta^2 so that fp32 and fp64 agree on it.
            delta_sq = (acc.double() / cnt.double().clamp_min(1)) ** 2
            near = (v.double() - delta_sq).abs() < 1e-3 * (v.double() + delta_sq + 1e-30)
            v[near] += 1e-2
    return dict(theta=torch.randn(n, generator=gen).to(d), acc=acc.to(d), cnt=cnt.to(d),
                state={k: t.to(d) for k, t in state.items()}, mask=H.make_mask(mask_kind, n, gen, p=p))


def _copy(x, dtype=None):
    cast = (lambda t: t.clone()) if dtype is None else (lambda t: t.clone().to(dtype))
    return dict(theta=cast(x["theta"]), acc=cast(x["acc"]), cnt=cast(x["cnt"]),
                state={k: cast(t) for k, t in x["state"].items()}, mask=x["mask"])


def _run(fn, y, optimizer, step, bias_correction, hyper=HYPER, **kw):
    fn(y["theta"], y["acc"], y["cnt"], y["state"], optimizer=optimizer, step=step, mask=y["mask"],
       bias_correction=bias_correction, **hyper, **kw)


def _check_against_reference(optimizer, n, mask_kind, H, seed=0, step=3, bias_correction=True, hyper=HYPER, p=0.5):
    x = _inputs(optimizer, n, mask_kind, seed, H, p)
    gold, ref, ker = _copy(x, torch.float64), _copy(x), _copy(x)
    _run(K.server_update_ref, gold, optimizer, step, bias_correction, hyper)
    _run(K.server_update, ref, optimizer, step, bias_correction, hyper, backend="torch")
    _run(K.server_update, ker, optimizer, step, bias_correction, hyper, backend="triton")
    off = ~((x["cnt"] > 0) & H.active(x["mask"], n))
    H.assert_err_bound("theta", ker["theta"], ref["theta"], gold["theta"])
    H.assert_unchanged_bitwise("theta", ker["theta"], x["theta"], off)
    H.assert_unchanged_bitwise("theta (torch)", ref["theta"], x["theta"], off)
    for k in x["state"]:
        H.assert_err_bound(k, ker["state"][k], ref["state"][k], gold["state"][k])
        H.assert_unchanged_bitwise(k, ker["state"][k], x["state"][k], off)
        H.assert_unchanged_bitwise(f"{k} (torch)", ref["state"][k], x["state"][k], off)
    if bool((~off).any()):
        assert not torch.equal(ker["theta"][~off], x["theta"][~off]), "no active entry was updated"


@pytest.mark.parametrize("n,mask_kind", GRID)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_triton_matches_reference(optimizer, n, mask_kind, helpers):
    assert ODD == helpers.SIZES[-1] and ODD > BLOCK_SIZE
    _check_against_reference(optimizer, n, mask_kind, helpers)


@pytest.mark.parametrize("optimizer", ["adam", "yogi"])
def test_triton_matches_reference_without_bias_correction(optimizer, helpers):
    _check_against_reference(optimizer, 1000, "random", helpers, seed=4, step=7, bias_correction=False)


@FUZZ
@given(optimizer=st.sampled_from(OPTIMIZERS), n=st.integers(1, 3 * BLOCK_SIZE + 5),
       mask_kind=st.sampled_from(MASK_KINDS), p=st.floats(0, 1), step=st.integers(1, 1000),
       bias_correction=st.booleans(), lr=st.floats(1e-3, 2.0), momentum=st.floats(0.0, 0.99),
       beta1=st.floats(0.0, 0.99), beta2=st.floats(0.9, 0.9999), eps=st.floats(1e-6, 0.1),
       seed=st.integers(0, 2**32 - 1))
def test_triton_matches_reference_fuzz(optimizer, n, mask_kind, p, step, bias_correction, lr, momentum, beta1, beta2,
                                       eps, seed, helpers):
    hyper = dict(lr=lr, momentum=momentum, beta1=beta1, beta2=beta2, eps=eps)
    _check_against_reference(optimizer, n, mask_kind, helpers, seed=seed, step=step,
                             bias_correction=bias_correction, hyper=hyper, p=p)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,mask_kind", [("yogi", "random_u8")] + [(o, "none") for o in OPTIMIZERS])
def test_triton_matches_reference_big(optimizer, mask_kind, helpers):
    _check_against_reference(optimizer, BIG, mask_kind, helpers, seed=2)


# ------------------------------------------------------------------------------- hand-written per-element loops
def _python_server_loop(opt, theta, acc, cnt, m, v, mask, step, bias_correction, lr, momentum, beta1, beta2, eps):
    """The update formulas written element by element with python floats (Reddi et al. 2021, Alg. 2)."""
    theta, m, v = list(theta), list(m), list(v)
    for i in range(len(theta)):
        if cnt[i] <= 0 or not mask[i]:
            continue
        delta = acc[i] / cnt[i]
        if opt == "avg":
            theta[i] = theta[i] + lr * delta
            continue
        if opt == "avgm":
            m[i] = momentum * m[i] + delta
            theta[i] = theta[i] + lr * m[i]
            continue
        m[i] = beta1 * m[i] + (1 - beta1) * delta
        if opt == "adam":
            v[i] = beta2 * v[i] + (1 - beta2) * delta**2
        else:
            gap = v[i] - delta**2
            sign = (gap > 0) - (gap < 0)
            v[i] = v[i] - (1 - beta2) * delta**2 * sign
        m_hat = m[i] / (1 - beta1**step) if bias_correction else m[i]
        v_hat = v[i] / (1 - beta2**step) if bias_correction else v[i]
        theta[i] = theta[i] + lr * m_hat / (math.sqrt(v_hat) + eps)
    return theta, m, v


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(  # bias correction only exists for adam and yogi
    "optimizer,bias_correction", [("avg", True), ("avgm", True), ("adam", True), ("adam", False), ("yogi", True),
                                  ("yogi", False)])
def test_matches_python_loop_over_rounds(optimizer, backend, bias_correction, helpers):
    d, n, rounds = helpers.DEVICE, 24, 4
    gen = torch.Generator().manual_seed(11)
    theta = torch.randn(n, generator=gen)
    state = K.init_server_state(optimizer, n, d)
    py_theta, py_m, py_v = theta.tolist(), [0.0] * n, [0.0] * n
    theta = theta.to(d)
    theta0 = theta.clone()
    for t in range(1, rounds + 1):
        cnt = torch.randint(0, 3, (n,), generator=gen).float()
        cnt[0] = 0.0  # never trained
        acc = torch.randn(n, generator=gen) * cnt * 0.1
        mask = torch.rand(n, generator=gen) < 0.8
        mask[1] = False  # trained but explicitly masked out
        cnt[1] = 2.0
        K.server_update(theta, acc.to(d), cnt.to(d), state, optimizer=optimizer, step=t, mask=mask.to(d),
                        bias_correction=bias_correction, backend=backend, **HYPER)
        py_theta, py_m, py_v = _python_server_loop(optimizer, py_theta, acc.tolist(), cnt.tolist(), py_m, py_v,
                                                   mask.tolist(), t, bias_correction, **HYPER)
    torch.testing.assert_close(theta.cpu().double(), torch.tensor(py_theta, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    if "m" in state:
        torch.testing.assert_close(state["m"].cpu().double(), torch.tensor(py_m, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-7)
    if "v" in state:
        torch.testing.assert_close(state["v"].cpu().double(), torch.tensor(py_v, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-9)
        assert (state["v"][:2] == 0).all()
    assert torch.equal(theta[:2], theta0[:2])  # cnt == 0, and mask false: untouched


def test_yogi_differs_from_adam(helpers):
    """Guards the variant switch: same inputs, the second moments must differ after a few rounds."""
    d, n = helpers.DEVICE, 64
    gen = torch.Generator().manual_seed(3)
    theta = {o: torch.zeros(n, device=d) for o in ("adam", "yogi")}
    states = {o: K.init_server_state(o, n, d) for o in ("adam", "yogi")}
    for t in range(1, 4):
        acc = (torch.randn(n, generator=gen) * (4 - t)).to(d)
        cnt = torch.ones(n, device=d)
        for o in ("adam", "yogi"):
            K.server_update(theta[o], acc, cnt, states[o], optimizer=o, step=t, backend="triton", **HYPER)
    assert not torch.allclose(states["adam"]["v"], states["yogi"]["v"])


def test_init_server_state_and_errors(helpers):
    d = helpers.DEVICE
    assert K.init_server_state("avg", 5, d) == {}
    assert set(K.init_server_state("avgm", 5, d)) == {"m"}
    s = K.init_server_state("yogi", 5, d)
    assert set(s) == {"m", "v"} and all(t.dtype == torch.float32 and t.shape == (5,) and not t.any()
                                        for t in s.values())
    with pytest.raises(ValueError, match="unknown server optimizer"):
        K.init_server_state("sgd", 5, d)
    theta, acc, cnt = torch.zeros(5, device=d), torch.zeros(5, device=d), torch.ones(5, device=d)
    with pytest.raises(ValueError, match="unknown server optimizer"):
        K.server_update(theta, acc, cnt, {}, optimizer="fedprox", lr=1.0, step=1)
    with pytest.raises(KeyError, match="'v'"):
        K.server_update(theta, acc, cnt, {"m": torch.zeros(5, device=d)}, optimizer="adam", lr=1.0, step=1)
    with pytest.raises(ValueError, match="1-based"):
        K.server_update(theta, acc, cnt, K.init_server_state("adam", 5, d), optimizer="adam", lr=1.0, step=0)
    with pytest.raises(ValueError, match="shape"):
        K.server_update(theta, acc, cnt, {"m": torch.zeros(4, device=d)}, optimizer="avgm", lr=1.0, step=1)
