"""Client-level DP (fl.dp; hpcfed/fl/dp.py): clipping and noise against a hand computation, one all-reduce per
round, the same global model on 1 and 2 ranks, the accountant against dp-accounting's own reference numbers,
target_epsilon calibration, adaptive clipping, checkpoint state, one-line config errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfed.compose import validate
from hpcfed.config import ConfigError, DPConfig, load_config
from hpcfed.dist import CountingComm, LocalComm
from hpcfed.fl import dp
from hpcfed.fl.aggregate import STATS
from hpcfed.fl.sampling import cohort_for_round
from hpcfed.rng import TrainStream, generator
from tests.conftest import TwoThreadWorld, build_cpu_loop, set_known_updates

DP = ["fl.dp.enabled=true", "fl.dp.noise_multiplier=0.7", "fl.dp.clip_norm=1.0"]


_loop = build_cpu_loop
_known_updates = set_known_updates


def test_clip_and_noise_match_hand_computation(toy_text):
    loop, ds = _loop(toy_text + DP + ["fl.cohort_size=2", "fl.rounds=1"])
    n = loop.flat.numel
    cohort = loop.cohort(1)
    assert len(cohort) == 2
    g = torch.Generator().manual_seed(0)
    unit = {c: (v := torch.randn(n, generator=g)) / v.norm() for c in cohort}
    deltas = {cohort[0]: 0.5 * unit[cohort[0]], cohort[1]: 3.0 * unit[cohort[1]]}  # C = 1: the second is clipped
    _known_updates(loop, deltas)
    theta0 = loop.theta_global.clone()
    m = loop.run_round(1)
    noise = torch.from_numpy(generator(0, TrainStream.DP_NOISE, 1).standard_normal(n, dtype=np.float32))
    clipped = 0.5 * unit[cohort[0]] + 1.0 * unit[cohort[1]]  # min(1, C/‖Δ‖)·Δ
    want = theta0.double() + (clipped.double() + 0.7 * 1.0 * noise.double()) / 2  # fixed denominator m = 2
    torch.testing.assert_close(loop.theta_global.double(), want, rtol=0, atol=2e-6)
    assert m["dp_clipped_fraction"] == 0.5 and m["dp_clip_norm"] == 1.0 and m["dp_noise_multiplier"] == 0.7
    assert m["dp_delta"] == pytest.approx(1 / 6)  # δ = 1/N, N = 6 clients
    assert m["dp_epsilon"] == pytest.approx(dp.epsilon("rdp", "fixed", 6, 2, 0.7, 1, 1 / 6))
    assert m["clients"] == 2
    ds.close()


def test_one_aggregate_collective_per_round_with_dp(toy_text):
    comm = CountingComm(LocalComm())
    loop, ds = _loop(toy_text + DP + ["fl.dp.adaptive_clip=true", "fl.dp.clip_count_stddev=1.0",
                                      "fl.rounds=2", "eval.every_rounds=5"], comm)
    comm.calls.clear(), comm.bytes.clear()
    loop.run()
    n = loop.flat.numel
    assert comm.calls["aggregate"] == 2 and set(comm.calls) == {"aggregate", "eval"}, comm.calls
    assert comm.bytes["aggregate"] == 2 * (2 * n + len(STATS)) * 4  # the unclipped count rides in the stats
    assert [h["dp_epsilon"] for h in loop.state.history][0] < loop.state.history[-1]["dp_epsilon"]
    ds.close()


def test_same_global_model_on_1_and_2_ranks(toy_text):
    words = toy_text + DP + ["fl.dp.adaptive_clip=true", "fl.dp.clip_count_stddev=1.0", "fl.dp.clip_norm=0.05",
                             "fl.local.steps=2", "model.dropout=0"]
    one, ds1 = _loop(words)
    world = TwoThreadWorld()
    two = world.build_ranks(_loop, words, one)
    world.run([loop for loop, _ in two], (1, 2))
    for r in (1, 2):
        m = one.run_round(r)
    assert m["dp_clipped_fraction"] > 0  # C ≈ 0.05 clips
    for loop, _ in two:
        assert loop.comm.tags == ["aggregate", "aggregate"]
        assert loop.dp.clip_norm == pytest.approx(one.dp.clip_norm, rel=1e-12)
        torch.testing.assert_close(loop.theta_global, one.theta_global, rtol=0, atol=1e-6)
    assert m["dp_clip_norm"] != 0.05  # round 2 clipped with the C that round 1 adapted
    for _, ds in [*two, (None, ds1)]:
        ds.close()


def test_group_path_clips_like_the_sequential_path(toy_text):
    # no noise: the clipped mean alone is compared (with noise, equal noise would hide a clip applied twice)
    words = toy_text + DP + ["fl.dp.clip_norm=0.002", "fl.dp.noise_multiplier=0", "fl.local.steps=2",
                             "model.dropout=0"]
    seq, ds1 = _loop(words)
    grp, ds2 = _loop(words + ["fl.local.client_group_size=2"])
    assert grp.group_trainer is not None
    theta0 = seq.theta_global.clone()
    torch.testing.assert_close(grp.theta_global, theta0, rtol=0, atol=0)
    ms, mg = seq.run_round(1), grp.run_round(1)
    assert mg["dp_clipped_fraction"] == ms["dp_clipped_fraction"] > 0
    d_seq, d_grp = seq.theta_global - theta0, grp.theta_global - theta0
    assert float(d_seq.norm()) > 0
    torch.testing.assert_close(d_grp, d_seq, rtol=1e-3, atol=1e-3 * float(d_seq.abs().max()))
    ds1.close(), ds2.close()


def test_checkpoint_keeps_the_clip_norm_and_resume_is_exact(toy_text):
    words = toy_text + DP + ["fl.dp.adaptive_clip=true", "fl.dp.clip_count_stddev=1.0", "fl.local.steps=1"]
    a, ds1 = _loop(words)
    a.run_round(1)
    saved = {k: v.clone() for k, v in a.state_tensors().items()}
    assert float(saved["dp.clip_norm"]) == a.dp.clip_norm != 1.0
    b, ds2 = _loop(words)
    b.load_state(saved, 1, [])
    assert b.dp.clip_norm == a.dp.clip_norm
    ma, mb = a.run_round(2), b.run_round(2)
    assert torch.equal(a.theta_global, b.theta_global) and a.dp.clip_norm == b.dp.clip_norm
    assert ma["dp_clip_norm"] == mb["dp_clip_norm"]
    ds1.close(), ds2.close()


def test_resume_with_a_new_round_count_under_target_epsilon_is_refused(toy_text):
    # target_epsilon solves z for fl.rounds: resuming with more rounds would noise the rest with another z
    words = toy_text + ["fl.dp.enabled=true", "fl.dp.target_epsilon=5", "fl.local.steps=1", "fl.rounds=3"]
    a, ds1 = _loop(words)
    a.run_round(1)
    saved = {k: v.clone() for k, v in a.state_tensors().items()}
    assert float(saved["dp.noise_multiplier"]) == a.dp.noise_multiplier > 0
    b, ds2 = _loop(words[:-1] + ["fl.rounds=6"])
    assert b.dp.noise_multiplier > a.dp.noise_multiplier
    with pytest.raises(ValueError, match=r"noised with z=.* but this run uses z=") as e:
        b.load_state(saved, 1, [])
    assert "\n" not in str(e.value)
    c, ds3 = _loop(words)  # the same round count resumes
    c.load_state(saved, 1, [])
    assert c.dp.noise_multiplier == a.dp.noise_multiplier
    ds1.close(), ds2.close(), ds3.close()


def test_target_epsilon_too_large_to_need_noise_is_a_one_line_error():
    with pytest.raises(ConfigError, match="set fl.dp.noise_multiplier directly") as e:
        dp.calibrate_noise_multiplier(1e6, accountant="rdp", sampling="poisson", num_clients=100, cohort_size=10,
                                      rounds=5, delta=1e-3)
    assert "\n" not in str(e.value)


# -- accounting -------------------------------------------------------------------------------------------
def test_accountant_matches_dp_accounting_reference_numbers():
    # pld_privacy_accountant_test.test_self_composed_subsampled_gaussian: Poisson q = 0.2, z = 0.5, 3 rounds:
    # ε = 1 at δ = 0.15594 (q = m/N = 1/5)
    assert dp.epsilon("pld", "poisson", 5, 1, 0.5, 3, 0.15594) == pytest.approx(1.0, abs=1e-3)
    # rdp_privacy_accountant_test.test_compute_epsilon_delta_gaussian: z = 4.530877117, no sampling: exactly
    # (1, 1e-6)-DP (that test uses a fine grid of orders; the accountant's default grid is within 1e-6)
    assert dp.epsilon("rdp", "poisson", 5, 5, 4.530877117, 1, 1e-6) == pytest.approx(1.0, abs=1e-5)
    # Abadi et al.'s setting (q = 0.01, z = 1.1, 10,000 steps, δ = 1e-5), recorded in docs/privacy.md
    rdp, pld = (dp.epsilon(a, "poisson", 100, 1, 1.1, 10_000, 1e-5) for a in ("rdp", "pld"))
    assert rdp == pytest.approx(5.632, abs=1e-3) and pld == pytest.approx(5.193, abs=1e-3) and pld < rdp


def test_fixed_sampling_is_replace_one_with_sensitivity_2c():
    import dp_accounting

    # a cohort of all N clients is no sampling: replace-one Gaussian with multiplier z/2
    ref = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    ref.compose(dp_accounting.GaussianDpEvent(1.5 / 2), 4)
    assert dp.epsilon("rdp", "fixed", 10, 10, 1.5, 4, 1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    with pytest.raises(ConfigError, match="pld does not support fl.sampling=fixed"):
        dp.make_accountant("pld", "fixed")


def test_target_epsilon_solves_the_noise_multiplier(caplog):
    cfg = DPConfig(enabled=True, target_epsilon=3.0, delta=1e-3)
    with caplog.at_level("INFO", logger="hpcfed.fl"):
        d = dp.ClientDP(cfg, seed=0, num_clients=1000, cohort_size=10, rounds=20, sampling="poisson")
    eps = dp.epsilon("rdp", "poisson", 1000, 10, d.noise_multiplier, 20, 1e-3)
    assert 3.0 - 0.01 < eps <= 3.0
    assert d.epsilon(20) == pytest.approx(eps) and d.epsilon(5) < eps  # the running accountant, also backwards
    assert sum("solved for fl.dp.target_epsilon=3.0" in r.message for r in caplog.records) == 1


def test_low_renyi_order_warnings_of_dp_accounting_are_not_logged(caplog):
    # q = 0.1, z < 1.4: dp-accounting's RDP warns for each low order it drops (α 1.1-1.6), in calibration and
    # in every round's ε; hpcfed keeps its own log lines only
    with caplog.at_level("WARNING"):
        z = dp.calibrate_noise_multiplier(3.0, accountant="rdp", sampling="poisson", num_clients=500,
                                          cohort_size=50, rounds=12, delta=1 / 500)
        d = dp.ClientDP(DPConfig(enabled=True, noise_multiplier=0.5), seed=0, num_clients=500, cohort_size=50,
                        rounds=12, sampling="poisson")
        eps = d.epsilon(12)
    assert 0.5 < z < 1.2 and eps > 3.0  # z = 0.5 is below the z that gives 3
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []
    logging.getLogger("absl").warning("another dp-accounting warning")  # only the dropped-order ones are filtered
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["another dp-accounting warning"]


# -- adaptive clipping ------------------------------------------------------------------------------------
def test_adaptive_clipping_moves_c_to_the_target_quantile():
    m = 100
    norms = np.random.default_rng(1).lognormal(mean=0.0, sigma=1.0, size=m)  # the cohort's update norms
    for gamma in (0.3, 0.7):
        cfg = DPConfig(enabled=True, noise_multiplier=1.0, clip_norm=0.01, adaptive_clip=True, target_quantile=gamma)
        d = dp.ClientDP(cfg, seed=0, num_clients=1000, cohort_size=m, rounds=1, sampling="poisson")
        d.epsilon = lambda rounds: 0.0  # accounting is not what this test is about (and 600 calls are slow)
        assert d.count_stddev == m / 20 and d.update_noise_multiplier == pytest.approx((1 - 0.1 ** 2) ** -0.5)
        acc, cnt = torch.zeros(3), torch.zeros(3)
        for r in range(1, 301):
            unclipped = sum(d.clip(x)[1] for x in norms)
            d.privatize(acc.zero_(), cnt, r, clients=m, unclipped=unclipped)
        share = float((norms <= d.clip_norm).mean())
        assert abs(share - gamma) < 0.08, (gamma, share, d.clip_norm)
        assert torch.equal(cnt, torch.full((3,), float(m)))  # the fixed denominator


@settings(max_examples=60, deadline=None)
@given(z=st.floats(0.05, 20), s=st.floats(0.05, 50), norm=st.floats(0, 1e6), c=st.floats(1e-4, 1e3))
def test_noise_split_and_clip_scale(z, s, norm, c):
    if z >= 2 * s:
        with pytest.raises(ConfigError, match="fl.dp.clip_count_stddev") as e:
            dp.update_noise_multiplier(z, s)
        assert "\n" not in str(e.value)
    else:  # Andrew et al., Theorem 1: z_Δ⁻² + (2σ_b)⁻² = z⁻²
        zu = dp.update_noise_multiplier(z, s)
        assert zu >= z and zu ** -2 + (2 * s) ** -2 == pytest.approx(z ** -2, rel=1e-9)
    d = dp.ClientDP(DPConfig(enabled=True, noise_multiplier=0.0, clip_norm=c), seed=0, num_clients=10,
                    cohort_size=2, rounds=1, sampling="poisson", main=False)
    scale, unclipped = d.clip(norm)
    assert 0 < scale <= 1 and scale * norm <= c * (1 + 1e-12) and unclipped == (norm <= c)
    assert scale == 1 or scale * norm == pytest.approx(c)


# -- configuration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("words, needle", [
    (["fl.dp.enabled=true"], "exactly one of fl.dp.noise_multiplier and fl.dp.target_epsilon"),
    (DP + ["fl.dp.target_epsilon=2"], "exactly one of"),
    (DP + ["fl.dp.accountant=pld"], "fl.dp.accountant=pld does not support fl.sampling=fixed"),
    (DP + ["fl.mode=centralized"], "needs fl.mode=federated"),
    (DP + ["fl.algorithm=feddat"], "does not work with fl.algorithm='feddat'"),
    (DP + ["fl.algorithm=fedyolo"], "does not work with fl.algorithm='fedyolo'"),
    (DP + ["fl.dp.delta=1.5"], "fl.dp.delta=1.5 must be in (0, 1)"),
    (DP + ["fl.dp.clip_norm=0"], "fl.dp.clip_norm=0"),
    (DP + ["fl.dp.accountant=prv"], "fl.dp.accountant='prv' is not valid"),
    (DP + ["fl.dp.target_quantile=1"], "fl.dp.target_quantile=1.0 must be in (0, 1)"),
    (["fl.sampling=random"], "fl.sampling='random' is not valid"),
])
def test_config_errors_are_one_line(words, needle):
    with pytest.raises(ConfigError) as e:
        validate(load_config(words))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_adaptive_clipping_refuses_a_too_small_count_noise():
    cfg = DPConfig(enabled=True, noise_multiplier=2.0, adaptive_clip=True)  # σ_b = 10/20 = 0.5: 2σ_b < z
    with pytest.raises(ConfigError, match=r"clip_count_stddev=0.5 is too small") as e:
        dp.ClientDP(cfg, seed=0, num_clients=100, cohort_size=10, rounds=1, sampling="poisson")
    assert "\n" not in str(e.value)


def test_dp_keys_leave_the_hash_alone_until_enabled():
    base = load_config([])
    assert "dp" not in base.hash_payload()["fl"] and "sampling" not in base.hash_payload()["fl"]
    assert load_config(["fl.dp.clip_norm=5", "fl.dp.adaptive_clip=true", "fl.sampling=fixed"]).hash() == base.hash()
    assert load_config(DP).hash() != base.hash() != load_config(["fl.sampling=poisson"]).hash()
    assert load_config(DP).hash() != load_config(DP[:-1] + ["fl.dp.clip_norm=2"]).hash()


def test_poisson_cohorts():
    sizes = []
    for r in range(1, 201):
        c = cohort_for_round(3, r, 50, 10, "poisson")
        assert c == sorted(set(c)) and all(0 <= x < 50 for x in c)
        assert c == cohort_for_round(3, r, 50, 10, "poisson")
        sizes.append(len(c))
    assert len(set(sizes)) > 3 and abs(np.mean(sizes) - 10) < 1.0  # varies; q·N = 10 on average
    assert math.isclose(np.var(sizes), 50 * 0.2 * 0.8, rel_tol=0.35)  # binomial(N, q)


def test_run_reports_dp_metrics_every_round_and_checkpoints_c(toy_text, tmp_path):
    import json

    from hpcfed.checkpoint import list_checkpoints, load_checkpoint
    from hpcfed.main import run

    cfg = load_config(toy_text + DP + ["fl.dp.adaptive_clip=true", "fl.dp.clip_count_stddev=1.0", "fl.rounds=2",
                                       "checkpoint.every_rounds=1", "dist.num_threads=1", f"out_dir={tmp_path}"])
    run(cfg)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if "dp_epsilon" in r]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[0]["dp_epsilon"] < rounds[1]["dp_epsilon"]
    assert {"dp_delta", "dp_clip_norm", "dp_noise_multiplier", "dp_clipped_fraction"} <= set(rounds[0])
    ck = load_checkpoint(list_checkpoints(cfg.run_dir / "checkpoints")[-1])
    assert ck.round == 2 and float(ck.tensors["dp.clip_norm"]) != rounds[1]["dp_clip_norm"]  # C after round 2
