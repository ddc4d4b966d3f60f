"""Client-parallel local training (hpcfed/fl/parallel.py) against one-client-at-a-time training."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from hpcfed.config import load_config
from hpcfed.dist import LocalComm
from hpcfed.fl.client import LocalTrainer
from hpcfed.fl.parallel import GroupTrainer, make_groups, unsupported_reason
from hpcfed.algorithms.fedavg import FedAvg
from hpcfed.compose import build_loop
from hpcfed.models import build_model
from hpcfed.peft import apply_peft
from tests.conftest import tiny_model_args, toy_client_data

CPU = torch.device("cpu")


def _no_dropout(model):
    """Keep the model in eval mode whatever the trainers ask: dropout off, so both paths are deterministic
    functions of the same batches."""
    model.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), model)
    return model


def _setup(family, method, *extra):
    cfg = load_config(tiny_model_args(family) + [f"peft.method={method}", "model.dropout=0", "fl.local.steps=3",
                                                 "fl.local.batch_size=8", *extra])
    torch.manual_seed(0)
    model = _no_dropout(build_model(cfg.model, 2))
    flat = apply_peft(model, cfg.peft)
    return cfg, model, flat


def test_make_groups_by_batch_size_in_cohort_order():
    cohort = [7, 3, 9, 1, 4, 8]
    bs = {7: 32, 3: 32, 9: 10, 1: 32, 4: 32, 8: 10}
    groups = make_groups(cohort, bs, 3)
    assert groups == [[7, 3, 1], [9, 8], [4]]
    assert sorted(c for g in groups for c in g) == sorted(cohort)
    assert make_groups(cohort, bs, 1) == [[c] for c in cohort]


CASES = [("hf_text", m) for m in ("bias", "lora", "adapter", "head", "full")] + \
        [("timm_vit", m) for m in ("bias", "lora", "adapter", "prompt", "head")]


@pytest.mark.parametrize("family,method", CASES)
def test_group_equals_sequential(family, method):
    """Three clients trained at once give each client's sequential result (fp32, dropout off), with
    length buckets, a head learning rate, gradient clipping and logit adjustment all on."""
    cfg, model, flat = _setup(family, method, "fl.local.head_lr=0.01", "fl.local.max_grad_norm=0.5",
                              "fl.local.logit_adjust_tau=1.0", "fl.local.length_buckets=3")
    local = cfg.fl.local
    theta0 = flat.data.detach().clone()
    datas = [toy_client_data(family, n, seed=s) for s, n in ((1, 20), (2, 31), (3, 17))]
    seeds = [11, 12, 13]
    seq = LocalTrainer(model, flat, local, CPU)
    expected = []
    for d, s in zip(datas, seeds):
        flat.data.copy_(theta0)
        res = seq.train(d, s)
        expected.append((flat.data.clone(), res))
    gt = GroupTrainer(model, flat, local, CPU)
    thetas, results = gt.train_group(datas, seeds, theta0, [None] * 3)
    for g, (theta, res) in enumerate(expected):
        assert not torch.equal(theta, theta0)
        torch.testing.assert_close(thetas[g], theta, rtol=1e-4, atol=1e-5)
        assert results[g].steps == res.steps and results[g].samples_seen == res.samples_seen
        assert results[g].loss_sum == pytest.approx(res.loss_sum, rel=1e-4)
        assert results[g].first_loss == pytest.approx(res.first_loss, rel=1e-4)
        assert results[g].first_loss != pytest.approx(res.final_loss, rel=1e-4)


def test_group_masks_and_sgd():
    """Per-client masks freeze exactly the masked-out entries; SGD with momentum matches sequential."""
    cfg, model, flat = _setup("hf_text", "bias", "fl.local.optimizer=sgd", "fl.local.momentum=0.9",
                              "fl.local.lr=0.1")
    theta0 = flat.data.detach().clone()
    n = flat.numel
    masks = [torch.arange(n) % 2 == 0, None]
    datas = [toy_client_data("hf_text", 24, seed=s) for s in (5, 6)]
    seq = LocalTrainer(model, flat, cfg.fl.local, CPU)
    want = []
    for d, m, s in zip(datas, masks, (1, 2)):
        flat.data.copy_(theta0)
        seq.train(d, s, mask=m)
        want.append(flat.data.clone())
    thetas, _ = GroupTrainer(model, flat, cfg.fl.local, CPU).train_group(datas, [1, 2], theta0, masks)
    assert torch.equal(thetas[0][~masks[0]], theta0[~masks[0]])
    for g in range(2):
        torch.testing.assert_close(thetas[g], want[g], rtol=1e-4, atol=1e-5)


def test_bf16_group_close_to_fp32():
    cfg, model, flat = _setup("hf_text", "bias")
    theta0 = flat.data.detach().clone()
    datas = [toy_client_data("hf_text", 16, seed=s) for s in (1, 2)]
    a, _ = GroupTrainer(model, flat, cfg.fl.local, CPU).train_group(datas, [1, 2], theta0, [None, None])
    cfg16, _, _ = _setup("hf_text", "bias", "fl.local.bf16=true")
    b, _ = GroupTrainer(model, flat, cfg16.fl.local, CPU).train_group(datas, [1, 2], theta0, [None, None])
    assert a.dtype == b.dtype == torch.float32
    upd_a, upd_b = a - theta0, b - theta0
    cos = torch.nn.functional.cosine_similarity(upd_a, upd_b, dim=1)
    assert (cos > 0.95).all(), cos


def test_unsupported_cases_named():
    cfg, model, _ = _setup("hf_text", "prompt")
    assert "soft prompts" in unsupported_reason(cfg, model, FedAvg.from_config(cfg))
    cfg2 = load_config(tiny_model_args("hf_text") + ["fl.local.steps=null"])
    assert "epochs" in unsupported_reason(cfg2, model, FedAvg.from_config(cfg2))
    cfg3 = load_config(tiny_model_args("hf_text") + ["fl.local.steps=2", "fl.algorithm=fedprox"])
    from hpcfed.algorithms.fedprox import FedProx

    assert "gradient term" in unsupported_reason(cfg3, model, FedProx.from_config(cfg3))


class _Rt:
    device = CPU


def _round(words):
    cfg = load_config(list(words))
    loop, ds = build_loop(cfg, _Rt(), LocalComm())
    _no_dropout(loop.model)
    m = loop.run_round(1)
    return loop, m


def test_loop_round_with_groups_equals_sequential(toy_text):
    base = [*toy_text, "fl.local.steps=2", "model.dropout=0"]
    seq, ms = _round(base)
    grp, mg = _round(base + ["fl.local.client_group_size=3"])
    assert grp.group_trainer is not None and seq.group_trainer is None
    torch.testing.assert_close(grp.theta_global, seq.theta_global, rtol=1e-4, atol=1e-5)
    assert mg["clients"] == ms["clients"] and mg["bytes_up"] == ms["bytes_up"]
    assert mg["train_loss"] == pytest.approx(ms["train_loss"], rel=1e-4)
    assert mg["train_loss_start"] == pytest.approx(ms["train_loss_start"], rel=1e-4)


def test_loop_groups_isolate_failures(toy_text):
    loop, m = _round([*toy_text, "fl.local.steps=2", "fl.local.client_group_size=4",
                      "fl.inject_failure_rate=0.5", "fl.max_failed_clients_per_round=100"])
    assert m["clients_failed"] >= 1 and m["clients"] + m["clients_failed"] == 4
    assert torch.isfinite(loop.theta_global).all()


def test_loop_falls_back_and_says_so(toy_text, caplog):
    with caplog.at_level(logging.WARNING, logger="hpcfed.fl"):
        loop, _ = _round([*toy_text, "fl.local.client_group_size=2", "peft.method=prompt", "fl.local.steps=1"])
    assert loop.group_trainer is None
    assert sum("cannot be vectorized" in r.message for r in caplog.records) == 1
