"""FedDAT: losses and adapter modes on hand-computed tiny cases, the federated / client-local split of the
parameters, the aggregation of A_S only, the client-state store across rounds, and exact resume."""

import math

import pytest
import torch

from hpcfed.config import ConfigError, load_config
from hpcfed.dist import LocalComm
from hpcfed.algorithms.feddat import FedDATParams
from hpcfed.algorithms.kd import kd_kl, mkd_loss
from hpcfed.peft.dual_adapter import DualAdapter, Mode
from hpcfed.compose import build_loop, load_run_config

ALGO = ["fl.algorithm=feddat", "peft.method=adapter", "peft.adapter_reduction_factor=8"]
# hpcfed's former choices (each a named deviation from the reference code now): shared head, two sites, identity
SHARED = ["fl.algo.head=shared", "fl.algo.adapter_sites=attn,mlp", "fl.algo.adapter_init=identity",
          "fl.algo.aggregation=samples"]


class _Rt:
    device = torch.device("cpu")


def _loop(words, name, *extra):
    cfg = load_config(list(words) + ALGO + [f"name={name}", *extra])
    loop, _ = build_loop(cfg, _Rt(), LocalComm())
    return loop


# -- losses --------------------------------------------------------------------------------------------------
def test_kd_kl_hand_computed():
    """q = softmax(target/T) = (3/4, 1/4), p = softmax(0) = (1/2, 1/2):
    KL(q‖p) = 3/4·ln(3/2) + 1/4·ln(1/2) = 0.1308120; × T² for T = 2."""
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    z = torch.zeros(1, 2, requires_grad=True)
    target = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    assert kd_kl(z, target, 1.0).item() == pytest.approx(kl1, abs=1e-6)
    assert kd_kl(z, target * 2, 2.0).item() == pytest.approx(4 * kl1, abs=1e-6)
    # batch mean: a second, identical row leaves the value unchanged
    assert kd_kl(z.expand(2, 2), target.expand(2, 2), 1.0).item() == pytest.approx(kl1, abs=1e-6)
    # the gradient reaches the trained side only: d/dz KL = (p - q) = (-1/4, 1/4)
    kd_kl(z, target, 1.0).backward()
    assert torch.allclose(z.grad, torch.tensor([[-0.25, 0.25]]), atol=1e-6)
    assert target.grad is None


def test_mkd_loss_weights_task_and_kl_equally():
    z = torch.zeros(1, 2)
    y = torch.tensor([0])
    target = torch.tensor([[math.log(3.0), 0.0]])
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert mkd_loss(z, y, target, 1.0, 1.0).item() == pytest.approx(0.5 * (math.log(2) + kl1), abs=1e-6)
    assert mkd_loss(z, y, target, 1.0, 3.0).item() == pytest.approx(0.5 * (math.log(2) + 3 * kl1), abs=1e-6)
    assert mkd_loss(z, y, None, 1.0, 1.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_dual_adapter_modes_hand_computed():
    """D = 2, bottleneck 1, down = [1, 0] (so the hidden unit is relu(h₀) = 3 for h = (3, -1)); the up
    projections (1, 1), (2, 0), (0, 4) of A_S, A_C, Â_S give (3, 3), (6, 0), (0, 12)."""
    a = DualAdapter(2, 1)
    with torch.no_grad():
        for ad, up in ((a.shared, [1.0, 1.0]), (a.client, [2.0, 0.0]), (a.global_copy, [0.0, 4.0])):
            ad.down.weight.copy_(torch.tensor([[1.0, 0.0]]))
            ad.down.bias.zero_()
            ad.up.weight.copy_(torch.tensor(up).view(2, 1))
            ad.up.bias.zero_()
    h = torch.tensor([[3.0, -1.0]])
    want = {Mode.STUDENT: [3.0, 3.0], Mode.CLIENT: [6.0, 0.0], Mode.GLOBAL: [0.0, 12.0], Mode.DAT: [3.0, 6.0]}
    for m, v in want.items():
        a.mode = m
        assert torch.equal(a(h), torch.tensor([v])), m
        # as a hook: o -> o + term
        assert torch.equal(a.add_to_output(None, (), {}, h), h + torch.tensor([v]))


# -- config --------------------------------------------------------------------------------------------------
def test_params_defaults_and_errors(toy_text):
    p = FedDATParams()
    assert (p.kd_temperature, p.kd_weight, p.variant) == (3.0, 1.0, "dat")
    cfg = load_config(toy_text + ALGO + ["fl.algo.kd_temperature=2", "fl.algo.client_lr=0.01"])
    from hpcfed.algorithms import get_algorithm

    algo = get_algorithm("feddat").from_config(cfg)
    assert algo.params.kd_temperature == 2.0 and algo.params.client_lr == 0.01
    for bad, key in ((["fl.algo.kd_temperature=0"], "kd_temperature"), (["fl.algo.variant=x"], "variant"),
                     (["fl.algo.nope=1"], "nope"), (["fl.algo.eval_clients=-1"], "eval_clients")):
        with pytest.raises(ConfigError, match=key):
            load_run_config(toy_text + ALGO + bad)
    with pytest.raises(ConfigError, match="peft.method"):
        load_run_config(toy_text + ["fl.algorithm=feddat", "peft.method=bias"])


# -- model, aggregation, store ------------------------------------------------------------------------------
def test_flat_buffer_holds_shared_adapters_and_head_only(toy_text):
    loop = _loop(toy_text, "ft_layout", *SHARED)
    algo = loop.algorithm
    names = loop.flat.names
    assert names[-2:] == ["head.weight", "head.bias"]
    assert all(".shared." in n for n in names[:-2]) and len(names) == 2 * 2 * 4 + 2  # 2 blocks × 2 sites × 4
    assert [n.replace(".client.", ".shared.") for n in algo.client_flat.names] == names[:-2]
    assert [n.replace(".global_copy.", ".shared.") for n in algo.global_flat.names] == names[:-2]
    n_shared = algo.client_flat.numel
    assert loop.flat.numel == n_shared + 32 * 2 + 2
    assert [n for n, p in loop.model.named_parameters() if p.requires_grad] == names
    # up projections start at zero: every mode is the plain backbone
    x = loop.clients.get(0)
    loop.model.eval()
    outs = []
    for m in Mode:
        with algo.mode(m), torch.no_grad():
            outs.append(loop.model(x.x[:4], x.lengths[:4]))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_round_averages_shared_adapters_and_keeps_client_adapters_local(toy_text):
    """After a round: θ_global = Σ w_c θ_c / Σ w_c over the clients' (A_S, head) — hand-summed here — while
    every client's A_C went to the store (version = the round), differs from its initial value, and never
    entered the aggregate; Â_S stayed the round's global A_S."""
    loop = _loop(toy_text, "ft_agg", *SHARED)
    algo = loop.algorithm
    theta0 = loop.theta_global.clone()
    sent, weights, ac = {}, {}, {}
    orig = algo.local_update

    def spy(trainer, theta, data, seed, cid):
        res = orig(trainer, theta, data, seed, cid)
        sent[cid] = trainer.flat.data.clone()
        weights[cid] = algo.client_weight(len(data))
        ac[cid] = algo.client_flat.data.clone()
        assert torch.equal(algo.global_flat.data, theta0[algo._shared_idx])  # Â_S frozen
        return res

    algo.local_update = spy
    cohort = loop.my_clients(1)
    loop.run_round(1)
    total = sum(weights.values())
    want = sum(sent[c] * (weights[c] / total) for c in cohort)
    assert torch.allclose(loop.theta_global, want, atol=1e-6)
    assert not torch.equal(loop.theta_global, theta0)
    for c in cohort:
        assert algo.store.versions(c) == [1]
        stored = algo.store.get(c, 2)["A_C"]
        assert torch.equal(stored, ac[c])
        assert not torch.equal(stored, algo.client_init)
    # the next round starts a client from its stored A_C
    c = cohort[0]
    assert torch.equal(algo.client_state(c, 2), ac[c])
    assert torch.equal(algo.client_state(c, 1), algo.client_init)


def test_single_variant_is_fedavg_with_one_adapter(toy_text):
    """variant=single: the federated buffer trained on the task loss alone; the store holds only the
    personal heads (as the reference's adapter baseline, whose task heads are personal), nothing with a
    shared head."""
    loop = _loop(toy_text, "ft_single", "fl.algo.variant=single", "fl.rounds=1")
    loop.run()
    store = loop.algorithm.store
    assert store.clients() and all(set(store.get(c, 9)) == {"head"} for c in store.clients())
    m = loop.state.history[-1]
    assert "as_local_acc" in m and "dat_local_acc" not in m and "test_acc" in m
    shared = _loop(toy_text, "ft_single_shared", "fl.algo.variant=single", "fl.rounds=1", *SHARED)
    shared.run()
    assert shared.algorithm.store.clients() == []


def test_evaluation_reports_three_models(toy_text):
    loop = _loop(toy_text, "ft_eval", "fl.rounds=1", "fl.algo.eval_test_clients=2", *SHARED)
    loop.run()
    m = loop.state.history[-1]
    for k in ("test_acc", "dat_local_acc", "ac_local_acc", "as_local_acc", "dat_test_acc", "ac_test_acc"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["eval_clients"] == 4  # the round-1 cohort
    # A_S-only on the held-out splits is the global model: recompute one client's accuracy directly
    from hpcfed.fl.baselines import split_holdout
    from hpcfed.fl.client import evaluate

    algo = loop.algorithm
    cids = algo.eval_clients(loop)
    accs = []
    for c in cids:
        _, hold = split_holdout(loop.clients.get(c), loop.cfg.fl.local_only_holdout, loop.cfg.seed, c)
        loop.flat.data.copy_(loop.theta_global)
        s = evaluate(loop.model, hold, loop.device)
        accs.append(float(s[1] / s[2]))
    assert m["as_local_acc"] == pytest.approx(sum(accs) / len(accs), abs=1e-12)


def test_resume_is_exact_with_client_store(toy_text):
    """Run A: 4 rounds straight. Run B: 2 rounds, its state kept as a checkpoint would keep it, then a
    'crashed' future of garbage client versions at round 3; run C resumes B from round 2 and finishes.
    C's global model and client store equal A's."""
    words = toy_text + ["fl.rounds=4", "eval.every_rounds=4"]
    a = _loop(words, "ft_res_a")
    a.run()
    b = _loop(words, "ft_res_b")
    b.cfg.fl.rounds = 2
    b.run()
    tensors = {k: v.clone() for k, v in b.state_tensors().items()}
    history = list(b.state.history)
    for cid in range(b.dataset.num_clients):
        b.algorithm.store.put(cid, 3, {"A_C": torch.full_like(b.algorithm.client_init, 7.0)})
    c = _loop(words, "ft_res_b")
    c.load_state(tensors, 2, history)
    c.run()
    assert torch.equal(a.theta_global, c.theta_global)
    sa, sc = a.algorithm.store, c.algorithm.store
    assert sa.clients() == sc.clients()
    for cid in sa.clients():
        assert sa.versions(cid) == sc.versions(cid)
        assert torch.equal(sa.get(cid, 99)["A_C"], sc.get(cid, 99)["A_C"])
    assert a.state.history[-1]["dat_local_acc"] == c.state.history[-1]["dat_local_acc"]


def test_round_prune_lists_only_recent_cohorts_and_leaves_nothing_a_full_scan_would_delete(toy_text):
    """With checkpoints every round, FedDAT prunes the client store after each round; after the first full scan
    it lists only the clients of the rounds since (``written=loop.cohort``). A fresh store's full scan then
    finds nothing left to delete, and each client keeps at most one version at or before the kept horizon."""
    from hpcfed.fl.state_store import ClientStateStore

    words = toy_text + ["fl.rounds=6", "fl.cohort_size=3", "eval.every_rounds=6", "checkpoint.every_rounds=1",
                        "checkpoint.keep_last=1"]
    loop = _loop(words, "ft_prune")
    listed: list[list[int]] = []  # per prune call, the clients whose versions it listed
    store = loop.algorithm.store
    versions, prune, pruning = store.versions, store.prune, []

    def spy_versions(cid):
        if pruning:
            listed[-1].append(cid)
        return versions(cid)

    def spy_prune(keep_from_round, **kw):
        listed.append([])
        pruning.append(1)
        try:
            return prune(keep_from_round, **kw)
        finally:
            pruning.clear()

    store.versions, store.prune = spy_versions, spy_prune
    loop.run()
    keep_from = 6 - 1 * (1 + 1)  # after round r the store keeps what rounds > r - 2 can need
    assert len(listed) == 6 and listed[0] == sorted(loop.cohort(1))  # the first prune scans every client folder
    for r, cids in enumerate(listed[1:], start=2):  # then only the cohort of the round that became prunable
        assert sorted(cids) == (sorted(loop.cohort(r - 2)) if r - 2 >= 1 else []), r
    fresh = ClientStateStore(store.root, cache_size=0)
    assert fresh.prune(keep_from) == 0
    for cid in fresh.clients():
        assert sum(v <= keep_from for v in fresh.versions(cid)) <= 1


# -- the reference code's defaults (HaokunChen245/FedDAT) ---------------------------------------------------
def test_reference_defaults_layout_and_init(toy_text):
    """Defaults: one adapter per block at the FFN output, both projections normal(0, 0.02) with zero biases,
    the head outside the federated buffer (personal), uniform aggregation weights."""
    p = FedDATParams()
    assert (p.head, p.aggregation, p.adapter_sites, p.adapter_init) == ("personal", "uniform", "mlp", "bert")
    loop = _loop(toy_text, "ft_ref")
    algo = loop.algorithm
    names = loop.flat.names
    assert all(".shared." in n and ".adapter_mlp." in n for n in names) and len(names) == 2 * 4  # 2 blocks
    assert algo.head_flat.names == ["head.weight", "head.bias"]
    assert algo.client_weight(10) == algo.client_weight(1000) == 1.0
    ups = [w for n, w in loop.model.named_parameters() if n.endswith("up.weight")]
    downs = [w for n, w in loop.model.named_parameters() if n.endswith("down.weight")]
    biases = [w for n, w in loop.model.named_parameters() if ".adapter_" in n and n.endswith("bias")]
    w = torch.cat([t.detach().flatten() for t in ups + downs])
    assert len(ups) == 2 * 3 and abs(float(w.std()) - 0.02) < 0.004 and abs(float(w.mean())) < 0.004
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    with pytest.raises(ConfigError, match="adapter_sites"):
        load_run_config(toy_text + ALGO + ["fl.algo.adapter_sites=ffn"])
    with pytest.raises(ConfigError, match="head"):
        load_run_config(toy_text + ALGO + ["fl.algo.head=global"])


def test_personal_head_trained_in_both_steps_never_averaged(toy_text):
    """The head is each client's own: it moves in step 2 and in step 3 (two AdamW updates per batch), it is
    stored with A_C, it is not in what the server averages (θ_global is the uniform mean of the A_S sent)."""
    loop = _loop(toy_text, "ft_head", "fl.local.steps=1")
    algo = loop.algorithm
    sent, heads = {}, {}
    orig_step = algo._opt_h.step
    calls = []
    algo._opt_h.step = lambda *a, **k: (calls.append(k["step"]), orig_step(*a, **k))[1]
    orig = algo.local_update

    def spy(trainer, theta, data, seed, cid):
        res = orig(trainer, theta, data, seed, cid)
        sent[cid] = trainer.flat.data.clone()
        heads[cid] = algo.head_flat.data.clone()
        return res

    algo.local_update = spy
    cohort = loop.my_clients(1)
    loop.run_round(1)
    assert calls == [1, 2] * len(cohort)  # one local step: the head is updated in step 2 and in step 3
    want = sum(sent[c] for c in cohort) / len(cohort)  # uniform
    assert torch.allclose(loop.theta_global, want, atol=1e-6)
    for c in cohort:
        assert torch.equal(algo.store.get(c, 2)["head"], heads[c])
        assert not torch.equal(heads[c], algo.head_init)
    assert not torch.equal(heads[cohort[0]], heads[cohort[1]])
    assert torch.equal(algo.client_head(cohort[0], 2), heads[cohort[0]])
    assert torch.equal(algo.client_head(cohort[0], 1), algo.head_init)


def test_personal_evaluation_uses_each_clients_own_head(toy_text):
    """as_local_acc = mean over evaluated clients of A_S + that client's head on its held-out split;
    test_acc = mean over the first eval_test_clients of A_S + own head on the global test split."""
    from hpcfed.fl.baselines import split_holdout
    from hpcfed.fl.client import evaluate

    loop = _loop(toy_text, "ft_peval", "fl.rounds=1", "fl.algo.eval_test_clients=2")
    loop.run()
    m = loop.state.history[-1]
    algo = loop.algorithm
    local, test = [], []
    for i, c in enumerate(algo.eval_clients(loop)):
        loop.flat.data.copy_(loop.theta_global)
        algo.load_client(c, algo.round_idx + 1)
        _, hold = split_holdout(loop.clients.get(c), loop.cfg.fl.local_only_holdout, loop.cfg.seed, c)
        with algo.mode(Mode.STUDENT):
            s = evaluate(loop.model, hold, loop.device)
            local.append(float(s[1] / s[2]))
            if i < 2:
                t = evaluate(loop.model, loop.test_data, loop.device)
                test.append(float(t[1] / t[2]))
    assert m["as_local_acc"] == pytest.approx(sum(local) / len(local), abs=1e-12)
    assert m["test_acc"] == pytest.approx(sum(test) / len(test), abs=1e-12)
    assert {"dat_local_acc", "ac_local_acc", "dat_test_acc", "ac_test_acc"} <= set(m)
