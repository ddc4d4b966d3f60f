"""Byzantine-robust aggregation (hpcfed/fl/robust.py) and the gather it needs (Comm.all_gather): each rule
against a numpy reference (Hypothesis: odd/even m, ties, weights), independence of the clients' order and of
the column chunking, the gather on 1 rank and on 2 gloo ranks with unequal row counts, and a synthetic attack
in which the robust rules stay near the honest mean while the plain mean does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hpcfed.dist import CountingComm, LocalComm, TorchDistComm
from hpcfed.fl import attacks, robust

SETTINGS = settings(max_examples=30, deadline=None)


# -------------------------------------------------------------------------------------- references


def ref_krum_scores(u: np.ndarray, f: int) -> np.ndarray:
    m = u.shape[0]
    d = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)  # (m, m)
    return np.array([np.sort(np.delete(d[i], i))[:m - f - 2].sum() for i in range(m)])


def ref_centered_clip(u, w, tau, iters, v0):
    v = v0.copy()
    for _ in range(iters):
        z = u - v
        norms = np.linalg.norm(z, axis=1)
        r = np.median(norms) if tau is None else tau
        scale = np.where(norms > r, r / np.maximum(norms, 1e-300), 1.0)
        v = v + (w * scale) @ z
    return v


def ref_norm_bound(u, w, max_norm):
    norms = np.linalg.norm(u, axis=1)
    r = np.median(norms) if max_norm is None else max_norm
    return (w * np.where(norms > r, r / np.maximum(norms, 1e-300), 1.0)) @ u


@st.composite
def update_sets(draw, min_m: int = 1, max_m: int = 9):
    """(U (m, n) float32 numpy, weights (m,) float64): values from a few integers (ties) or from floats."""
    m = draw(st.integers(min_m, max_m))
    n = draw(st.integers(1, 6))
    ties = draw(st.booleans())
    elem = st.integers(-3, 3).map(float) if ties else \
        st.floats(-100, 100, allow_nan=False, width=32)
    u = np.array(draw(st.lists(elem, min_size=m * n, max_size=m * n)), dtype=np.float32).reshape(m, n)
    w = np.array(draw(st.lists(st.floats(0.1, 10), min_size=m, max_size=m)), dtype=np.float64)
    return u, w


def close(a: torch.Tensor, b: np.ndarray, scale: float = 1.0) -> None:
    torch.testing.assert_close(a.double(), torch.from_numpy(np.asarray(b, dtype=np.float64)),
                               rtol=1e-5, atol=1e-5 * max(1.0, scale))


# ------------------------------------------------------------------------- rules against numpy


@SETTINGS
@given(update_sets())
def test_median_and_trimmed_mean_match_numpy(case):
    u, w = case
    U = torch.from_numpy(u)
    out = robust.coordinate_median(U, torch.from_numpy(w))
    close(out, np.median(u.astype(np.float64), axis=0), np.abs(u).max())
    for beta in (0.0, 0.1, 0.25, 0.49):
        close(robust.trimmed_mean(U, trim_fraction=beta),
              scipy.stats.trim_mean(u.astype(np.float64), beta, axis=0), np.abs(u).max())


@SETTINGS
@given(update_sets(min_m=3), st.data())
def test_krum_and_multi_krum_match_numpy(case, data):
    u, w = case
    m = u.shape[0]
    f = data.draw(st.integers(0, (m - 3) // 2))
    U = torch.from_numpy(u)
    ref = ref_krum_scores(u.astype(np.float64), f)
    scale = max(1.0, float(np.abs(ref).max()))
    torch.testing.assert_close(robust.krum_scores(U, f), torch.from_numpy(ref), rtol=1e-9, atol=1e-9 * scale)
    k = data.draw(st.integers(1, m))
    chosen = robust.krum_select(U, f, k).numpy()
    # the chosen ones have the k smallest reference scores (ties may be broken either way)
    np.testing.assert_allclose(np.sort(ref[chosen]), np.sort(ref)[:k], rtol=1e-9, atol=1e-9 * scale)
    assert torch.equal(robust.krum(U, num_byzantine=f), U[int(chosen[0])])
    ww = w[chosen] / w[chosen].sum()
    close(robust.multi_krum(U, torch.from_numpy(w), num_byzantine=f, num_selected=k),
          ww @ u[chosen].astype(np.float64), np.abs(u).max())


@SETTINGS
@given(update_sets(), st.sampled_from([None, 0.5, 3.0, 1e4]), st.integers(1, 3), st.booleans(), st.booleans())
@example((np.array([[1, 0], [2, 0], [3, 0], [4, 0]], dtype=np.float32), np.ones(4)), None, 2, False, False)
def test_centered_clip_and_norm_bound_match_numpy(case, tau, iters, weighted, with_ref):
    u, w = case
    m, n = u.shape
    u64 = u.astype(np.float64)
    wn = w / w.sum() if weighted else np.full(m, 1.0 / m)
    v0 = np.linspace(-1, 1, n) if with_ref else np.zeros(n)
    U, W = torch.from_numpy(u), (torch.from_numpy(w) if weighted else None)
    ref_t = torch.from_numpy(v0.astype(np.float32)) if with_ref else None
    big = max(1.0, float(np.abs(u).max()))
    close(robust.centered_clip(U, W, tau=tau, iterations=iters, reference=ref_t),
          ref_centered_clip(u64, wn, tau, iters, v0.astype(np.float32).astype(np.float64)), big)
    close(robust.norm_bound(U, W, max_norm=tau), ref_norm_bound(u64, wn, tau), big)
    # norm bounding = one centered-clipping step from 0 with τ = M
    if tau is not None:
        torch.testing.assert_close(robust.norm_bound(U, W, max_norm=tau),
                                   robust.centered_clip(U, W, tau=tau, iterations=1), rtol=1e-6, atol=1e-6 * big)


def test_weights_are_ignored_by_median_trimmed_mean_and_krum():
    U = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([1.0, 100.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    for name in ("median", "trimmed_mean", "krum"):
        assert torch.equal(robust.robust_aggregate(name, U, w), robust.robust_aggregate(name, U, None)), name


# ---------------------------------------------------------------------- order, chunks, dispatch

RULES = [("median", {}), ("trimmed_mean", {"trim_fraction": 0.2}), ("krum", {"num_byzantine": 2}),
         ("multi_krum", {"num_byzantine": 2}), ("centered_clip", {"tau": 0.5, "iterations": 3}),
         ("norm_bound", {"max_norm": 1.0}), ("centered_clip", {}), ("norm_bound", {})]


def _cohort(m=9, n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g), torch.rand(m, generator=g) + 0.5, list(range(100, 100 + m))


@pytest.mark.parametrize("name,params", RULES)
def test_result_does_not_depend_on_client_order(name, params):
    U, w, ids = _cohort()
    outs = []
    for perm_seed in range(3):
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(perm_seed)).tolist()
        S, sids, sw = robust.gather_updates(LocalComm(), U[perm].clone(), [ids[i] for i in perm], w[perm].tolist())
        assert sids == ids
        outs.append(robust.robust_aggregate(name, S, sw, **params))
    for o in outs[1:]:
        assert torch.equal(o, outs[0]), name


@pytest.mark.parametrize("name,params", RULES)
def test_chunked_equals_unchunked(name, params):
    U, w, _ = _cohort(m=8, n=53)
    whole = robust.robust_aggregate(name, U, w, **params)
    for chunk_bytes in (1, 300, 5000):
        part = robust.robust_aggregate(name, U, w, chunk_bytes=chunk_bytes, **params)
        if name in ("median", "trimmed_mean", "krum"):
            assert torch.equal(part, whole), (name, chunk_bytes)
        else:
            torch.testing.assert_close(part, whole, rtol=1e-6, atol=1e-7)


def test_large_common_part_does_not_spoil_krum_distances():
    # updates = big shared offset + small differences: a naive fp32 Gram matrix would cancel catastrophically
    g = torch.Generator().manual_seed(1)
    base = 1000.0 * torch.randn(1, 4000, generator=g)
    U = base + 1e-3 * torch.randn(6, 4000, generator=g)
    d = robust.pairwise_sq_distances(U)
    ref = ((U[:, None, :].double() - U[None, :, :].double()) ** 2).sum(-1)
    torch.testing.assert_close(d, ref, rtol=1e-6, atol=1e-9)


def test_errors_are_one_line_value_errors():
    U = torch.zeros(4, 3)
    cases = [
        (lambda: robust.robust_aggregate("mean", U), "not a robust rule"),
        (lambda: robust.robust_aggregate("median", U, beta=0.1), "fl.aggregator_params.beta"),
        (lambda: robust.robust_aggregate("trimmed_mean", U, trim_fraction=0.5), "[0, 0.5)"),
        (lambda: robust.robust_aggregate("krum", U, num_byzantine=1), "more than 2f+2"),
        (lambda: robust.krum(U, num_byzantine=1), "more than 2f+2"),
        (lambda: robust.robust_aggregate("krum", torch.zeros(2, 3)), "more than 2f+2"),
        (lambda: robust.robust_aggregate("multi_krum", U, num_selected=0), "num_selected"),
        (lambda: robust.robust_aggregate("centered_clip", U, tau=-1.0), "tau"),
        (lambda: robust.robust_aggregate("centered_clip", U, center="mean"), "center"),
        (lambda: robust.robust_aggregate("norm_bound", U, max_norm=0), "max_norm"),
        (lambda: robust.coordinate_median(U.double()), "float32"),
        (lambda: robust.coordinate_median(torch.zeros(0, 3)), "at least 1"),
        (lambda: robust.coordinate_median(U, torch.ones(3)), "one entry per client"),
        (lambda: robust.norm_bound(U, -torch.ones(4)), ">= 0"),
        (lambda: robust.validate_params("krum", {}, cohort_size=2), "cohort of 2"),
    ]
    for fn, text in cases:
        with pytest.raises(ValueError) as e:
            fn()
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert robust.validate_params("krum", {}, cohort_size=3) == {"num_byzantine": None}
    assert robust.validate_params("centered_clip", {"tau": 2}) == {"tau": 2, "iterations": 1, "center": "previous"}


# -------------------------------------------------------------------------------- the gather


def test_all_gather_on_one_rank_and_counting():
    x = torch.arange(6.0).view(2, 3)
    comm = CountingComm(LocalComm())
    assert torch.equal(comm.all_gather(x, tag="robust_updates"), x)
    assert comm.calls["robust_updates"] == 1 and comm.bytes["robust_updates"] == 24
    with pytest.raises(ValueError, match="2-D"):
        LocalComm().all_gather(torch.zeros(3))


def test_robust_aggregator_rounds_and_state():
    U, w, ids = _cohort(m=7, n=11)
    agg = robust.RobustAggregator("centered_clip", {"tau": 0.3}, 11, torch.device("cpu"))
    theta_g = torch.randn(11)
    comm = CountingComm(LocalComm())
    prev = None
    for _ in range(2):
        agg.reset(capacity=2)  # grows past its capacity
        for i in reversed(range(7)):
            agg.add(ids[i], theta_g + U[i], theta_g, float(w[i]))
        out = agg.reduce(comm)
        assert agg.last_clients == ids
        ref = robust.centered_clip(U, w, tau=0.3, reference=prev)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        prev = out.clone()
    assert comm.calls == {"robust_meta": 2, "robust_updates": 2}
    fresh = robust.RobustAggregator("centered_clip", {"tau": 0.3}, 11, torch.device("cpu"))
    fresh.load_state(agg.state_tensors())
    assert torch.equal(fresh.previous, prev)
    k = robust.RobustAggregator("krum", {"num_byzantine": 1}, 11, torch.device("cpu"))
    k.reset(7)
    for i in range(7):
        k.add(ids[i], theta_g + U[i], theta_g, 1.0)
    out = k.reduce(LocalComm())
    assert len(k.last_selected) == 1
    torch.testing.assert_close(out, U[ids.index(k.last_selected[0])])  # θ_g + u − θ_g: up to rounding
    empty = robust.RobustAggregator("median", None, 11, torch.device("cpu"))
    empty.reset(0)
    assert torch.equal(empty.reduce(LocalComm()), torch.zeros(11))
    # multi-Krum with fewer updates this round than it selects (a small Poisson cohort, dropped clients): the
    # loop's TooFewUpdates (skip the round), not an error that ends the run
    mk = robust.RobustAggregator("multi_krum", {"num_byzantine": 0, "num_selected": 5}, 11, torch.device("cpu"))
    mk.reset(4)
    for i in range(4):
        mk.add(ids[i], theta_g + U[i], theta_g, 1.0)
    with pytest.raises(robust.TooFewUpdates, match="selects num_selected = 5 updates, got a cohort of 4"):
        mk.reduce(LocalComm())


def _two_rank_worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        comm = CountingComm(TorchDistComm())
        res = {}
        g = torch.Generator().manual_seed(rank)
        for case, ks in {"unequal": (3, 1), "empty": (0, 2), "none": (0, 0)}.items():
            x = torch.randn(ks[rank], 13, generator=g)
            res[case] = (x, comm.all_gather(x, tag=case), comm.all_gather(x, tag=case, chunk_bytes=40))
        try:
            comm.all_gather(torch.zeros(1, 4 + rank), tag="bad")
            res["error"] = None
        except ValueError as e:
            res["error"] = str(e)
        # a robust round: rank 0 trains clients 5, 1, 8; rank 1 trains 3, 0 (uneven, unsorted)
        U, w, _ = _cohort(m=5, n=29)
        mine = {0: [(5, 0), (1, 1), (8, 2)], 1: [(3, 3), (0, 4)]}[rank]
        agg = robust.RobustAggregator("multi_krum", {"num_byzantine": 1}, 29, torch.device("cpu"),
                                      gather_chunk_bytes=100)
        agg.reset(len(mine))
        for cid, row in mine:
            agg.add(cid, U[row], torch.zeros(29), float(w[row]))
        res["robust"] = (agg.reduce(comm), agg.last_clients, agg.last_selected)
        res["calls"] = dict(comm.calls)
        torch.save(res, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_gather_two_gloo_ranks_unequal_rows(tmp_path):
    out = str(tmp_path / "res")
    mp.start_processes(_two_rank_worker, args=(str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=False) for r in (0, 1))
    for case in ("unequal", "empty", "none"):
        want = torch.cat([r0[case][0], r1[case][0]])
        for got in (*r0[case][1:], *r1[case][1:]):
            assert torch.equal(got, want), case
    assert "same number of columns" in r0["error"] and "same number of columns" in r1["error"]
    # the 2-rank robust round equals the 1-rank one, bitwise
    U, w, _ = _cohort(m=5, n=29)
    cids = [5, 1, 8, 3, 0]
    ref = robust.RobustAggregator("multi_krum", {"num_byzantine": 1}, 29, torch.device("cpu"))
    ref.reset(5)
    for row, cid in enumerate(cids):
        ref.add(cid, U[row], torch.zeros(29), float(w[row]))
    want = ref.reduce(LocalComm())
    for r in (r0, r1):
        assert torch.equal(r["robust"][0], want)
        assert r["robust"][1] == [0, 1, 3, 5, 8] and r["robust"][2] == ref.last_selected
        assert r["calls"]["robust_meta"] == 1 and r["calls"]["robust_updates"] == 1


# ------------------------------------------------------------------------ a synthetic attack


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "gaussian"])
def test_robust_rules_resist_twenty_percent_byzantine(kind):
    num_clients, n, seed = 20, 64, 3
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(n, generator=g)
    theta_g = torch.randn(n, generator=g)
    byz = attacks.byzantine_clients(seed, num_clients, 0.2)
    assert len(byz) == 4
    spec = attacks.AttackSpec(kind=kind, fraction=0.2, noise_std=3.0)
    rows = []
    for cid in range(num_clients):
        theta_c = theta_g + mu + 0.05 * torch.randn(n, generator=g)  # honest local training
        if cid in byz:
            attacks.apply_model_attack(spec, theta_c, theta_g, seed=seed, round_idx=1, cid=cid)
        rows.append(theta_c - theta_g)
    U = torch.stack(rows)  # (20, n), sorted by client id
    err = {name: float(torch.linalg.vector_norm(robust.robust_aggregate(name, U, None, **p) - mu))
           for name, p in [("median", {}), ("trimmed_mean", {"trim_fraction": 0.2}),
                           ("krum", {"num_byzantine": 4}), ("multi_krum", {"num_byzantine": 4})]}
    mean_err = float(torch.linalg.vector_norm(U.mean(0) - mu))
    scale = float(torch.linalg.vector_norm(mu))
    assert mean_err > 0.3 * scale, (kind, mean_err)
    for name, e in err.items():
        assert e < 0.1 * scale, (kind, name, e, scale)
    assert math.isfinite(mean_err)
