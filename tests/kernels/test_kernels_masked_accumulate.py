"""masked_accumulate: Triton kernel vs torch reference vs fp64, masking, and the FedAvg semantics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfed import kernels as K
from hpcfed.kernels.accumulate import BLOCK_SIZE

MASK_KINDS = ("none", "zeros", "ones", "random", "random_u8")
BIG = 2**20 + 3
ODD = 2 * 2048 + 3  # = conftest SIZES[-1]: a non-power-of-two above every kernel's BLOCK_SIZE
#: Hypothesis examples per test (~10-60 ms each in the CPU interpreter; fewer on a GPU, where each new
#: specialization of a kernel is a Triton compilation).
FUZZ = settings(max_examples=15 if torch.cuda.is_available() else 50, deadline=None)
WEIGHTS = st.floats(1e-3, 1e4) | st.floats(-1e4, -1e-3)  # client weights; the kernel does not need them > 0


def _inputs(n, mask_kind, seed, H, p=0.5):
    gen = torch.Generator().manual_seed(seed)
    d = H.DEVICE
    return dict(
        acc=torch.randn(n, generator=gen).to(d),  # mid-round: already holds other clients' sums
        cnt=torch.rand(n, generator=gen).mul_(5).to(d),
        theta_client=torch.randn(n, generator=gen).to(d),
        theta_global=torch.randn(n, generator=gen).to(d),
        mask=H.make_mask(mask_kind, n, gen, p=p),
    )


def _check_against_reference(n, mask_kind, weight, H, seed=0, p=0.5):
    x = _inputs(n, mask_kind, seed, H, p)
    gold = H.clone_all(x, torch.float64)
    K.masked_accumulate_ref(gold["acc"], gold["cnt"], gold["theta_client"], gold["theta_global"], weight,
                            gold["mask"])
    ref = H.clone_all(x)
    K.masked_accumulate(ref["acc"], ref["cnt"], ref["theta_client"], ref["theta_global"], weight, ref["mask"],
                        backend="torch")
    ker = H.clone_all(x)
    before = K.backend_counts[("masked_accumulate", "triton")]
    K.masked_accumulate(ker["acc"], ker["cnt"], ker["theta_client"], ker["theta_global"], weight, ker["mask"],
                        backend="triton")
    assert K.backend_counts[("masked_accumulate", "triton")] == before + 1
    for name in ("acc", "cnt"):
        H.assert_err_bound(name, ker[name], ref[name], gold[name])
        off = ~H.active(x["mask"], n)
        H.assert_unchanged_bitwise(name, ker[name], x[name], off)
        H.assert_unchanged_bitwise(name, ref[name], x[name], off)
    on = H.active(x["mask"], n)
    if bool(on.any()):  # the kernel did something where it should
        assert not torch.equal(ker["acc"][on], x["acc"][on])
        torch.testing.assert_close(ker["cnt"][on], x["cnt"][on] + torch.tensor(weight).float(), rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("n,mask_kind,weight", [
    (1, "ones", 3.7), (7, "none", 3.7), (7, "random_u8", 0.25), (ODD, "zeros", 3.7), (ODD, "random", 1234.5)])
def test_triton_matches_reference(n, mask_kind, weight, helpers):
    assert ODD == helpers.SIZES[-1] and ODD > BLOCK_SIZE
    _check_against_reference(n, mask_kind, weight, helpers)


@FUZZ
@given(n=st.integers(1, 3 * BLOCK_SIZE + 5), mask_kind=st.sampled_from(MASK_KINDS), p=st.floats(0, 1),
       weight=WEIGHTS, seed=st.integers(0, 2**32 - 1))
def test_triton_matches_reference_fuzz(n, mask_kind, p, weight, seed, helpers):
    _check_against_reference(n, mask_kind, weight, helpers, seed=seed, p=p)


@pytest.mark.slow
@pytest.mark.parametrize("mask_kind", ["random_u8", "none", "random"])
def test_triton_matches_reference_big(mask_kind, helpers):
    _check_against_reference(BIG, mask_kind, 1234.5, helpers, seed=1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_weighted_mean_over_clients(backend, helpers):
    """Three clients with different masks: acc/cnt is the per-element weighted mean of the covering clients."""
    d, n = helpers.DEVICE, 11
    gen = torch.Generator().manual_seed(5)
    theta_g = torch.randn(n, generator=gen, dtype=torch.float64)
    clients = [(theta_g + torch.randn(n, generator=gen, dtype=torch.float64),
                float(w), torch.rand(n, generator=gen) < 0.6) for w in (1.0, 2.0, 5.0)]
    clients[1][2][0] = clients[1][2][1] = False  # element 0 is covered by clients 0 and 2 only ...
    for _, _, m in clients:
        m[n - 1] = False  # ... and nobody trains the last element
    acc = torch.zeros(n, device=d)
    cnt = torch.zeros(n, device=d)
    for theta_c, w, m in clients:
        K.masked_accumulate(acc, cnt, theta_c.float().to(d), theta_g.float().to(d), w, m.to(d), backend=backend)
    num = sum(w * m * (tc - theta_g) for tc, w, m in clients)
    den = sum(w * m.double() for _, w, m in clients)
    assert cnt[n - 1].item() == 0 and acc[n - 1].item() == 0
    torch.testing.assert_close(cnt.cpu().double(), den, rtol=0, atol=0)
    seen = den > 0
    torch.testing.assert_close((acc.cpu().double() / cnt.cpu().double())[seen], (num / den)[seen],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_finite_masked_out_values_do_not_leak(backend, helpers):
    d, n = helpers.DEVICE, 64
    acc, cnt = torch.zeros(n, device=d), torch.zeros(n, device=d)
    theta_c = torch.randn(n, device=d)
    theta_c[::2] = float("nan")
    theta_c[1::4] = float("inf")
    mask = torch.zeros(n, dtype=torch.bool, device=d)
    mask[3::4] = True
    K.masked_accumulate(acc, cnt, theta_c, torch.zeros(n, device=d), 2.0, mask, backend=backend)
    assert torch.isfinite(acc).all() and torch.isfinite(cnt).all()
    assert torch.equal(acc[mask], 2.0 * theta_c[mask]) and (cnt[mask] == 2.0).all() and (cnt[~mask] == 0).all()


def test_triton_mask_none_equals_all_ones(helpers):
    x = _inputs(1000, "none", 3, helpers)
    a, b = helpers.clone_all(x), helpers.clone_all(x)
    ones = torch.ones(1000, dtype=torch.uint8, device=helpers.DEVICE)
    K.masked_accumulate(a["acc"], a["cnt"], a["theta_client"], a["theta_global"], 0.5, None, backend="triton")
    K.masked_accumulate(b["acc"], b["cnt"], b["theta_client"], b["theta_global"], 0.5, ones, backend="triton")
    assert torch.equal(a["acc"], b["acc"]) and torch.equal(a["cnt"], b["cnt"])
