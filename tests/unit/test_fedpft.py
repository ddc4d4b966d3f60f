"""FedPFT (Peng et al., IJCAI 2024): sub-model construction, distillation losses, APoZ and freezing, and its
aggregation, on hand-computed tiny cases (hpcfed/algorithms/fedpft.py, hpcfed/algorithms/fedpft_submodel.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hpcfed.config import ConfigError, load_config
from hpcfed.data import ClientData
from hpcfed.dist import LocalComm
from hpcfed.algorithms import fedpft_submodel as sm
from hpcfed.algorithms.fedpft import FedPFT, FedPFTParams
from hpcfed.compose import build_loop, load_run_config
from tests.conftest import tiny_model_args


class _Rt:
    device = torch.device("cpu")


def _tiny_classifier(num_layers: int = 3, seed: int = 0):
    from hpcfed.models import build_model

    cfg = load_config(tiny_model_args("hf_text") + [f"model.num_layers={num_layers}"])
    torch.manual_seed(seed)
    return build_model(cfg.model, 2)


def _toy_batch(n=6, length=7, seed=0) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (n,), generator=g, dtype=torch.int32)
    x = torch.randint(5, 100, (n, length), generator=g, dtype=torch.int32)
    x[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return ClientData(x=x, y=torch.zeros(n, dtype=torch.long), lengths=lengths)


# ------------------------------------------------------------------------------------- losses
def test_layer_distill_loss_hand_computed():
    t = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    s = torch.tensor([[[1.0, 0.0], [3.0, 3.0]]])
    # squared errors 0, 4, 0, 1 (sum 5); teacher squares 1, 4, 9, 16 (sum 30): mean/mean = 5/30
    assert sm.layer_distill_loss(t, s).item() == pytest.approx(5 / 30)
    # the second token is padding: errors 0 + 4 over teacher 1 + 4
    mask = torch.tensor([[1, 0]])
    assert sm.layer_distill_loss(t, s, mask).item() == pytest.approx(4 / 5)
    assert sm.layer_distill_loss(t, t.clone(), mask).item() == 0.0
    # equals the authors' form mean(((t - s) / sqrt(mean t^2))^2)
    ref = ((t - s) / t.pow(2).mean().sqrt()).pow(2).mean()
    assert sm.layer_distill_loss(t, s).item() == pytest.approx(ref.item())


def test_weight_distill_loss_hand_computed():
    w1_t, w2_t = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0, 1.0]])  # W2 W1 = [[3]]
    w1_s, w2_s = torch.tensor([[2.0]]), torch.tensor([[1.0]])  # [[2]]
    assert sm.weight_distill_loss(w1_t, w2_t, w1_s, w2_s).item() == pytest.approx(1 / 9)
    assert sm.weight_distill_loss(w1_t, w2_t, w1_s, w2_s, torch.tensor([[3.0]])).item() == pytest.approx(1 / 9)


# ------------------------------------------------------------------------------------- construction
def test_neuron_saliency_and_top_k():
    w1 = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (F=3, D=2)
    w2 = torch.tensor([[4.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # (D=2, F=3)
    s = sm.neuron_saliency(w1, w2)
    # ||[3,0,4,0]|| = 5, ||[0,1,0,0]|| = 1, ||[1,1,1,1]|| = 2
    torch.testing.assert_close(s, torch.tensor([5.0, 1.0, 2.0]))
    assert sm.top_k_neurons(s, 2).tolist() == [0, 2]
    assert sm.top_k_neurons(s, 1).tolist() == [0]
    # ties go to the lower index; the result is sorted ascending
    assert sm.top_k_neurons(torch.tensor([1.0, 2.0, 2.0, 1.0]), 1).tolist() == [1]
    assert sm.top_k_neurons(torch.tensor([1.0, 2.0, 2.0, 1.0]), 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        sm.top_k_neurons(s, 0)
    with pytest.raises(ValueError):
        sm.neuron_saliency(w1, w2.t())
    assert sm.num_kept(64, 1 / 3) == 21 and sm.num_kept(10, 0.01) == 1 and sm.num_kept(10, 1.0) == 10


def test_compressed_layers_spec():
    assert sm.default_compressed_layers(6) == [1, 2, 3, 4]
    assert sm.default_compressed_layers(3, "all") == [0, 1, 2]
    assert sm.default_compressed_layers(6, "3,1") == [1, 3]
    with pytest.raises(ValueError):
        sm.default_compressed_layers(6, "7")


def test_build_submodel_keeps_top_k_and_copies_the_rest():
    full = _tiny_classifier(num_layers=3)
    sub, kept = sm.build_submodel(full, 0.25, [1])
    fl, sl = sm.encoder_layers(full.backbone), sm.encoder_layers(sub.backbone)
    keep = kept[1]
    assert len(keep) == 16  # 0.25 * 64
    w1, w2 = fl[1].intermediate.dense.weight, fl[1].output.dense.weight
    sal = sm.neuron_saliency(w1, w2)
    assert sal[keep].min() >= sal[[j for j in range(64) if j not in set(keep.tolist())]].max()
    torch.testing.assert_close(sl[1].intermediate.dense.weight, w1[keep], rtol=0, atol=0)
    torch.testing.assert_close(sl[1].intermediate.dense.bias, fl[1].intermediate.dense.bias[keep], rtol=0, atol=0)
    torch.testing.assert_close(sl[1].output.dense.weight, w2[:, keep], rtol=0, atol=0)
    torch.testing.assert_close(sl[1].output.dense.bias, fl[1].output.dense.bias, rtol=0, atol=0)
    assert fl[1].intermediate.dense.out_features == 64  # the full model is untouched
    # uncompressed layers, attention, LayerNorms, embeddings and head are equal copies
    fsd, ssd = full.state_dict(), sub.state_dict()
    for k, v in fsd.items():
        if "layer.1.intermediate" in k or "layer.1.output.dense" in k:
            continue
        torch.testing.assert_close(ssd[k], v, rtol=0, atol=0)
    # the compressed FFN computes W2[:, K] gelu(W1[K] x + b1[K]) + b2 (before dropout/LayerNorm)
    x = torch.randn(5, 32)
    got = sl[1].output.dense(sl[1].intermediate(x))
    want = F.gelu(x @ w1[keep].t() + fl[1].intermediate.dense.bias[keep]) @ w2[:, keep].t() + fl[1].output.dense.bias
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------- APoZ and freezing
def test_apoz_and_freeze_mask_hand_computed():
    torch.testing.assert_close(sm.apoz(torch.tensor([2.0, 0.0, 4.0]), 4.0),
                               torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64))
    a = torch.tensor([0.9, 0.1, 0.5, 0.1])
    # 'active' (authors' code): the floor(0.5*4)=2 lowest APoZ are frozen; tie 0.1/0.1 -> both
    assert sm.freeze_mask(a, 0.5, "active").tolist() == [False, True, False, True]
    assert sm.freeze_mask(a, 0.5, "inactive").tolist() == [True, False, True, False]
    assert sm.freeze_mask(a, 0.25, "active").tolist() == [False, True, False, False]  # tie -> lower index
    assert sm.freeze_mask(a, 0.6, "active").sum() == 2  # floor(2.4)
    assert not sm.freeze_mask(a, 0.0).any() and sm.freeze_mask(a, 1.0).all()


def test_apoz_counter_counts_nonpositive_activations_on_real_tokens():
    from hpcfed.algorithms.fedpft_submodel import ApozCounter

    model = _tiny_classifier(num_layers=3)
    lay = sm.encoder_layers(model.backbone)[1]
    with torch.no_grad():  # pre-activations +1, -1, 0 on every token whatever the input
        lay.intermediate.dense.weight.zero_()
        lay.intermediate.dense.bias.zero_()
        lay.intermediate.dense.bias[0], lay.intermediate.dense.bias[1] = 1.0, -1.0
    from hpcfed.peft import apply_peft

    apply_peft(model, load_config(["peft.method=lora"]).peft)  # as in the loop: a peft-wrapped backbone
    c = ApozCounter(model.backbone, [1])
    data = _toy_batch()
    model(data.x, data.lengths)  # inactive: nothing counted
    assert c.tokens.item() == 0 and c.counts.sum().item() == 0
    c.active = True
    model(data.x, data.lengths)
    n = int(data.lengths.sum())
    assert c.tokens.item() == n
    assert c.counts[0, 0].item() == 0  # gelu(1) > 0
    assert c.counts[0, 1].item() == n and c.counts[0, 2].item() == n  # gelu(-1) < 0, gelu(0) = 0
    assert n < data.x.shape[0] * int(data.lengths.max())  # padding was present and not counted
    # a packed batch (block-diagonal (R, 1, T, T) mask, the local trainer's default for text) counts the same
    padded = c.counts.clone()
    c.reset()
    model.features(data.x, data.lengths, pack=True)
    assert c.tokens.item() == n
    torch.testing.assert_close(c.counts, padded, rtol=0, atol=0)
    c.remove()


# ------------------------------------------------------------------------------------- distillation
def test_distill_stage1_lowers_loss_and_stage2_keeps_frozen_neurons():
    full = _tiny_classifier(num_layers=3, seed=1)
    sub, _ = sm.build_submodel(full, 0.5, [1])
    data = _toy_batch(n=32, seed=3)
    dev = torch.device("cpu")
    before = sm.distill_eval(full.backbone, sub.backbone, [1], data, batch_size=8, device=dev)
    assert before > 0
    ln0 = sm.encoder_layers(sub.backbone)[1].output.LayerNorm.weight.detach().clone()
    for p in sub.parameters():
        p.requires_grad_(False)
    sub.head.weight.requires_grad_(True)
    rep = sm.distill(full.backbone, sub.backbone, [1], data, steps=30, batch_size=8, lr=3e-3, seed=0, device=dev,
                     weight_alpha=1.0)
    after = sm.distill_eval(full.backbone, sub.backbone, [1], data, batch_size=8, device=dev)
    assert rep.steps == 30 and after < 0.8 * before, (before, after)
    assert not torch.equal(sm.encoder_layers(sub.backbone)[1].output.LayerNorm.weight, ln0)  # stage 1 trains it
    # requires_grad flags restored: only the head's weight, as before
    assert [n for n, p in sub.named_parameters() if p.requires_grad] == ["head.weight"]
    assert sub.head.weight.grad is None

    lay = sm.encoder_layers(sub.backbone)[1]
    frozen = torch.zeros(32, dtype=torch.bool)
    frozen[::3] = True
    w1, b1, w2 = (lay.intermediate.dense.weight.detach().clone(), lay.intermediate.dense.bias.detach().clone(),
                  lay.output.dense.weight.detach().clone())
    ln = lay.output.LayerNorm.weight.detach().clone()
    sm.distill(full.backbone, sub.backbone, [1], data, steps=5, batch_size=8, lr=1e-2, seed=1, device=dev,
               frozen={1: frozen})
    assert torch.equal(lay.intermediate.dense.weight[frozen], w1[frozen])
    assert torch.equal(lay.intermediate.dense.bias[frozen], b1[frozen])
    assert torch.equal(lay.output.dense.weight[:, frozen], w2[:, frozen])
    assert not torch.equal(lay.intermediate.dense.weight[~frozen], w1[~frozen])
    assert not torch.equal(lay.output.dense.weight[:, ~frozen], w2[:, ~frozen])
    assert not torch.equal(lay.output.LayerNorm.weight, ln)  # stage 2 trains it too (authors' code)
    ln = lay.output.LayerNorm.weight.detach().clone()
    sm.distill(full.backbone, sub.backbone, [1], data, steps=3, batch_size=8, lr=1e-2, seed=2, device=dev,
               frozen={1: frozen}, train_layernorm=False)
    assert torch.equal(lay.output.LayerNorm.weight, ln)  # the deviation keeps it fixed


def test_weight_term_is_detached_by_default():
    """The authors compute the FFN weight-product term from ``.weight.data``: it is in the reported loss but
    moves nothing. With hidden-state loss and weight term, detached: the same steps as hidden-state loss
    alone; 'trained' (the deviation) differs."""
    full = _tiny_classifier(num_layers=3, seed=1)
    data = _toy_batch(n=16, seed=3)
    dev = torch.device("cpu")
    out = {}
    for key, alpha, grad in (("none", 0.0, False), ("detached", 5.0, False), ("trained", 5.0, True)):
        sub, _ = sm.build_submodel(full, 0.5, [1])
        rep = sm.distill(full.backbone, sub.backbone, [1], data, steps=4, batch_size=8, lr=3e-3, seed=0,
                         device=dev, weight_alpha=alpha, weight_term_grad=grad)
        out[key] = (sm.encoder_layers(sub.backbone)[1].intermediate.dense.weight.detach().clone(), rep)
    assert torch.equal(out["none"][0], out["detached"][0])
    assert not torch.equal(out["none"][0], out["trained"][0])
    assert out["detached"][1].loss_first > out["none"][1].loss_first  # the constant term is reported


def test_stage2_warmup_schedule(monkeypatch):
    """align_warmup: lr rises linearly over the first share of the steps, then decays linearly to 0."""
    lrs = []
    real = torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    full = _tiny_classifier(num_layers=3, seed=1)
    sub, _ = sm.build_submodel(full, 0.5, [1])
    sm.distill(full.backbone, sub.backbone, [1], _toy_batch(n=16, seed=3), steps=10, batch_size=8, lr=1.0,
               seed=0, device=torch.device("cpu"), warmup=0.2)
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_reference_defaults():
    p = FedPFTParams()
    assert (p.weight_term, p.align_layernorm, p.align_lr, p.aggregation) == ("detached", True, 6e-4, "uniform")
    from hpcfed.config import load_config as lc

    cfg = lc(["config=configs/algo/fedpft.yaml"])
    assert cfg.peft.lora_target_modules == ["query", "key", "value", "attention.output.dense"]
    assert cfg.data.reserve_train_samples > 0 and cfg.fl.algo["public_source"] is None
    assert FedPFT(p, cfg.fl).client_weight(7) == FedPFT(p, cfg.fl).client_weight(700) == 1.0


def test_pack_unpack_roundtrip():
    full = _tiny_classifier()
    sub, _ = sm.build_submodel(full, 0.5, [1])
    params = sm.distilled_params(sub.backbone, [1])
    buf = sm.pack_params(params)
    assert buf.numel() == 32 * 32 + 32 + 32 * 32 + 32 + 32 + 32
    sm.unpack_params_(params, torch.arange(buf.numel(), dtype=torch.float32))
    assert params["1.w1.weight"][0, 1].item() == 1.0 and params["1.w1.bias"][0].item() == 32 * 32
    with pytest.raises(ValueError):
        sm.unpack_params_(params, torch.zeros(buf.numel() + 1))


# ------------------------------------------------------------------------------------- params / config
def test_params_validation(toy_text):
    assert FedPFTParams().keep_ratio == pytest.approx(1 / 3)
    for bad in ("fl.algo.keep_ratio=0", "fl.algo.freeze=some", "fl.algo.freeze_ratio=1.5", "fl.algo.align_every=-1",
                "fl.algo.compressed_layers=a,b", "fl.algo.nope=1"):
        with pytest.raises(ConfigError, match="fl.algo"):
            load_run_config(toy_text + ["peft.method=lora", "fl.algorithm=fedpft", bad])
    with pytest.raises(ConfigError, match="peft.method"):
        load_run_config(toy_text + ["peft.method=bias", "fl.algorithm=fedpft"])


# ------------------------------------------------------------------------------------- in the loop
# the toy tests distil on the clients' own training file (the overlapping deviation, named explicitly)
FEDPFT = ["peft.method=lora", "fl.algorithm=fedpft", "model.num_layers=3", "fl.algo.public_samples=64",
          "fl.algo.public_source=${data.source}",
          "fl.algo.distill_steps=4", "fl.algo.align_steps=3", "fl.algo.distill_batch_size=16"]


def _loop(words):
    cfg = load_config(list(words))
    loop, ds = build_loop(cfg, _Rt(), LocalComm())
    return loop


def test_keep_all_no_distill_is_bitwise_fedavg(toy_text):
    """keep_ratio=1, no distillation, no alignment: the same global model as FedAvg, full-model accuracy."""
    base = toy_text + ["peft.method=lora", "fl.rounds=2"]
    a = _loop(base + ["fl.weighting=uniform"])  # FedPFT averages uniformly (authors' code)
    b = _loop(base + ["fl.algorithm=fedpft", "fl.algo.keep_ratio=1.0", "fl.algo.distill_steps=0",
                      "fl.algo.align_every=0"])
    assert torch.equal(a.theta_global, b.theta_global)
    a.run()
    hb = b.run().history
    assert torch.equal(a.theta_global, b.theta_global)
    assert hb[-1]["test_acc"] == a.evaluate_global()["test_acc"]
    assert "client_step_ms" in hb[-1] and "sub_test_acc" not in hb[-1]


def test_aggregation_is_uniform_mean_of_client_lora_and_evaluates_full_model(toy_text):
    """One round by hand: θ = Σ θ_c / |cohort| (uniform, authors' code; θ_c from local_update on the sub-model);
    the evaluated model is the FULL model carrying θ."""
    loop = _loop(toy_text + FEDPFT + ["fl.rounds=1", "fl.algo.align_every=0"])
    alg: FedPFT = loop.algorithm
    theta0 = loop.theta_global.clone()
    num = torch.zeros_like(theta0, dtype=torch.float64)
    den = 0.0
    from hpcfed.fl.sampling import client_seed

    for cid in loop.my_clients(1):
        data = loop.clients.get(cid)
        alg.on_round_start(loop, 1)
        loop.trainer.set_round(1, 1)
        alg.local_update(loop.trainer, theta0, data, client_seed(loop.cfg.seed, 1, cid), cid)
        num += loop.flat.data.double()
        den += 1.0
    loop.flat.data.copy_(theta0)
    loop.run_round(1)
    torch.testing.assert_close(loop.theta_global.double(), num / den, rtol=0, atol=1e-6)
    m = alg.evaluate(loop)
    assert torch.equal(alg.full_flat.data, loop.theta_global)
    full_lora = dict(alg.full_model.named_parameters())
    name = next(s.name for s in alg.full_flat.layout if "lora_B" in s.name)
    seg = next(s for s in alg.full_flat.layout if s.name == name)
    assert torch.equal(full_lora[name].reshape(-1), loop.theta_global[seg.offset:seg.end])
    assert {"test_acc", "sub_test_acc", "sub_model_params", "full_model_params"} <= set(m)
    assert m["sub_model_params"] < m["full_model_params"]


class _TwoRankComm:
    """Rank 0 of a fake world of two: the other rank adds ``other`` to the APoZ all-reduce; the sub-model is
    broadcast from here."""

    rank, world_size = 0, 2

    def __init__(self, other: torch.Tensor):
        self.other, self.tags = other, []

    def all_reduce_sum(self, t, *, tag="aggregate"):
        self.tags.append(tag)
        return t + self.other if tag == "apoz" else t

    def barrier(self):
        pass

    def broadcast_object(self, obj, src=0):
        return obj

    def broadcast(self, t, *, tag="broadcast"):
        self.tags.append(tag)
        return t

    def on_main(self, fn, *, share_result=True):
        return fn()

    def main_only(self, fn):
        fn()


def test_apoz_counts_are_summed_over_ranks_before_freezing(toy_text, monkeypatch):
    loop = _loop(toy_text + FEDPFT + ["fl.rounds=3", "fl.algo.align_every=1", "fl.algo.freeze_ratio=0.25",
                                      "fl.algo.keep_ratio=0.125"])  # k = 8 neurons in layer 1
    alg: FedPFT = loop.algorithm
    c = alg._apoz
    assert c.counts.shape == (1, 8)
    c.counts.copy_(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]], dtype=torch.float64))
    c.tokens.fill_(10)
    # the other rank: 10 tokens, counts 9 - j, except neuron 7 which it never sees off
    other = torch.tensor([9, 8, 7, 6, 5, 4, 3, -7, 10], dtype=torch.float64)
    seen = {}

    def fake_distill(teacher, student, layers, data, *, frozen, **kw):
        seen["frozen"] = frozen
        return sm.DistillReport(1.0, 0.5, 1)

    monkeypatch.setattr(sm, "distill", fake_distill)
    loop.comm = _TwoRankComm(other)
    out = alg.after_round(loop, 1)
    # pooled APoZ = (j + 9 - j) / 20 = 0.45 for j < 7, neuron 7: 0/20 = 0; freeze floor(0.25*8) = 2 lowest:
    # neuron 7, then the lowest index among the ties
    assert seen["frozen"][1].tolist() == [True, False, False, False, False, False, False, True]
    assert out["apoz_mean"] == pytest.approx((7 * 0.45 + 0) / 8)
    assert loop.comm.tags == ["apoz", "submodel"]
    assert c.tokens.item() == 0  # reset for the next period
    assert "align" not in alg.after_round(loop, 3)  # never in the last round


def test_state_roundtrip_restores_the_submodel(toy_text):
    loop = _loop(toy_text + FEDPFT + ["fl.rounds=1"])
    alg: FedPFT = loop.algorithm
    st = {k: v.clone() for k, v in alg.state_tensors().items()}
    params = sm.distilled_params(loop.model.backbone, alg.layers)
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    alg.load_state(st)
    assert torch.equal(sm.pack_params(params), st["submodel"])
    assert not math.isnan(sum(float(v.sum()) for v in st.values()))


class _OtherRankComm(_TwoRankComm):
    """Rank 1 of a fake world of two: the main process's sub-model arrives by ``broadcast`` (here: the tensor
    sent plus ``shift``, so that the test can tell whose tensors the student ends with); ``on_main`` must not be
    used, because this rank would wait in it for the whole distillation."""

    rank = 1

    def __init__(self, shift: float):
        super().__init__(torch.zeros(()))
        self.shift = shift

    def broadcast(self, t, *, tag="broadcast"):
        self.tags.append(tag)
        return t + self.shift if tag == "submodel" else t

    def on_main(self, fn, *, share_result=True):
        raise AssertionError("distillation through on_main: the other processes wait in a collective for all "
                             "of it, bounded by dist.timeout_s")


def test_every_process_distils_then_takes_the_main_sub_model(toy_text, monkeypatch):
    """Regression (MPNet, 2026-12-02): distilling on the main process only left the others in a broadcast for
    over 10 min, past gloo's dist.timeout_s. Every process now runs the distillation and then takes the main
    process's tensors."""
    loop = _loop(toy_text + FEDPFT + ["fl.rounds=1", "fl.algo.align_every=0", "fl.algo.distill_steps=0"])
    alg: FedPFT = loop.algorithm
    calls = []

    def fake_distill(teacher, student, layers, data, **kw):
        calls.append(kw["steps"])
        return sm.DistillReport(1.0, 0.5, kw["steps"])

    monkeypatch.setattr(sm, "distill", fake_distill)
    loop.comm = _OtherRankComm(shift=0.25)
    params = sm.distilled_params(loop.model.backbone, alg.layers, with_layernorm=True)
    before = sm.pack_params(params).clone()
    alg.p = replace(alg.p, distill_steps=5)
    alg.setup(loop)
    assert calls == [5], "this (non-main) process did not distil"
    assert loop.comm.tags == ["submodel"]
    assert torch.equal(sm.pack_params(params), before + 0.25)  # the main process's tensors, not its own
    assert alg._info["stage1_loss_last"] == 0.5
