"""Exact compute reductions of local training: cached frozen features for head-only tuning, torch.compile."""

from __future__ import annotations

import types

import pytest
import torch

from hpcfed.config import load_config
from hpcfed.fl.client import LocalTrainer
from hpcfed.models import build_model
from hpcfed.peft import apply_peft
from tests.conftest import disable_dropout, tiny_model_args, toy_client_data

CPU = torch.device("cpu")


def _build(family, *words):
    cfg = load_config(tiny_model_args(family) + ["peft.method=head", "fl.local.steps=4", "fl.local.batch_size=8",
                                                 "model.dropout=0", *words])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    return cfg, model, apply_peft(model, cfg.peft)


@pytest.mark.parametrize("family", ["hf_text", "timm_vit", "open_clip"])
def test_cached_features_equal_running_the_frozen_backbone(family):
    """Head-only training on cached features = training with the backbone run every step in eval mode."""
    cfg, model, flat = _build(family)
    data = toy_client_data(family, 40, seed=3)
    theta0 = flat.data.detach().clone()
    cached = LocalTrainer(model, flat, cfg.fl.local, CPU, head_only=True)
    assert cached.cache_features
    calls = []
    h = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    res_a = cached.train(data, seed=5)
    n_calls = len(calls)
    theta_a = flat.data.clone()
    cached.train(data, seed=6)  # a later round: no backbone call at all
    assert len(calls) == n_calls and n_calls == 1  # 40 examples: one feature batch
    h.remove()

    flat.data.copy_(theta0)
    plain = LocalTrainer(model, flat, cfg.fl.local, CPU, head_only=False)
    model.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), model)
    res_b = plain.train(data, seed=5)
    assert not torch.equal(theta_a, theta0)
    torch.testing.assert_close(theta_a, flat.data, rtol=1e-5, atol=1e-6)
    assert res_a.loss_sum == pytest.approx(res_b.loss_sum, rel=1e-5)


def test_feature_cache_is_per_client_object():
    cfg, model, flat = _build("hf_text")
    tr = LocalTrainer(model, flat, cfg.fl.local, CPU, head_only=True)
    a, b = toy_client_data("hf_text", 16, seed=1), toy_client_data("hf_text", 16, seed=2)
    fa, fb = tr.client_features(a), tr.client_features(b)
    assert fa.shape == (16, 32) and not torch.equal(fa, fb)
    assert tr.client_features(a) is fa


def test_cache_off_runs_the_backbone():
    """With fl.local.cache_frozen_features=false head-only training runs the backbone at every local step,
    in every round (and still trains only the head)."""
    cfg, model, flat = _build("hf_text", "fl.local.cache_frozen_features=false")
    tr = LocalTrainer(model, flat, cfg.fl.local, CPU, head_only=True)
    assert not tr.cache_features
    calls = []
    h = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    theta0 = flat.data.clone()
    data = toy_client_data("hf_text", 40, seed=3)
    tr.train(data, seed=5)
    tr.train(data, seed=6)
    h.remove()
    assert len(calls) == 2 * cfg.fl.local.steps  # one backbone forward per step, nothing cached
    assert not torch.equal(flat.data, theta0)
    assert all(torch.equal(v, frozen[k]) for k, v in model.backbone.state_dict().items())


@pytest.mark.slow
def test_compile_option_matches_eager():
    """fl.local.compile=true trains through torch.compile (≈1 min of compilation on CPU: slow marker)."""
    out = {}
    for comp in (False, True):
        cfg = load_config(tiny_model_args("timm_vit") + ["peft.method=bias", "fl.local.steps=3",
                                                         "fl.local.batch_size=8", "model.dropout=0",
                                                         f"fl.local.compile={comp}", "fl.local.optimizer=sgd",
                                                         "fl.local.lr=0.5"])
        torch.manual_seed(0)
        model = build_model(cfg.model, 2)
        model.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), model)
        flat = apply_peft(model, cfg.peft)
        tr = LocalTrainer(model, flat, cfg.fl.local, CPU)
        assert (tr.forward is not model) == comp
        theta0 = flat.data.clone()
        tr.train(toy_client_data("timm_vit", 24, seed=1), 3)
        assert not torch.equal(flat.data, theta0)
        out[comp] = flat.data.clone()
    # SGD (not AdamW, which turns last-bit differences of near-zero gradients into lr-sized steps): the
    # tolerance sits far below one step's movement
    torch.testing.assert_close(out[True], out[False], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compile_with_packing_matches_eager():
    """fl.local.compile=true with packed text batches (the packing plan graph-breaks; the result is eager's)."""
    out = {}
    for comp in (False, True):
        cfg = load_config(tiny_model_args("hf_text") + ["peft.method=bias", "fl.local.steps=3", "fl.local.batch_size=8",
                                                        "model.dropout=0", f"fl.local.compile={comp}",
                                                        "fl.local.optimizer=sgd", "fl.local.lr=0.5"])
        torch.manual_seed(0)
        model = build_model(cfg.model, 2)
        disable_dropout(model)
        flat = apply_peft(model, cfg.peft)
        tr = LocalTrainer(model, flat, cfg.fl.local, CPU)
        assert tr.pack
        theta0 = flat.data.clone()
        tr.train(toy_client_data("hf_text", 24, seed=1), 3)
        assert not torch.equal(flat.data, theta0)
        out[comp] = flat.data.clone()
    torch.testing.assert_close(out[True], out[False], rtol=0, atol=1e-5)
