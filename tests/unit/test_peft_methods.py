"""Generic PEFT checks over every method x tiny backbone: only the method's parameters change, identity
start where the method promises it, local training lowers the loss."""

import pytest
import torch

from hpcfed.config import load_config
from hpcfed.fl.client import LocalTrainer, evaluate
from hpcfed.models import build_model
from hpcfed.peft import apply_peft, frozen_state
from tests.conftest import tiny_model_args, toy_client_data

CASES = [(m, f) for m in ("bias", "lora", "head", "full") for f in ("hf_text", "timm_vit")]


def _setup(method, family, extra=()):
    cfg = load_config(tiny_model_args(family) + [f"peft.method={method}", "fl.local.steps=20",
                                                 "fl.local.lr=3e-3", "fl.local.batch_size=16",
                                                 "model.dropout=0.0", *extra])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    flat = apply_peft(model, cfg.peft)
    return cfg, model, flat


@pytest.mark.parametrize("method,family", CASES)
def test_only_method_params_change_and_loss_drops(method, family):
    cfg, model, flat = _setup(method, family)
    data = toy_client_data(family)
    frozen_before = {n: p.detach().clone() for n, p in frozen_state(model, flat)}
    theta0 = flat.data.clone()
    dev = torch.device("cpu")
    before = evaluate(model, data, dev)
    res = LocalTrainer(model, flat, cfg.fl.local, dev).train(data, seed=1)
    after = evaluate(model, data, dev)
    assert res.steps == 20
    for n, p in frozen_state(model, flat):
        assert torch.equal(p, frozen_before[n]), f"frozen parameter {n} changed"
    assert not torch.equal(flat.data, theta0)
    assert after[0] < before[0], "training did not lower the loss"
    if method == "head":
        assert all(n.startswith("head.") for n in flat.names)
    if method == "bias":
        assert all(n.endswith(".bias") or n.startswith("head.") for n in flat.names)
    if method == "lora":
        assert all("lora_" in n or n.startswith("head.") for n in flat.names)
    if method == "full":
        assert len(frozen_before) == 0


@pytest.mark.parametrize("family", ["hf_text", "timm_vit"])
def test_lora_starts_as_identity(family):
    cfg = load_config(tiny_model_args(family) + ["model.dropout=0.0"])
    torch.manual_seed(0)
    base = build_model(cfg.model, 2).eval()
    data = toy_client_data(family, n=8)
    ref = base(data.x, data.lengths)
    cfg.peft.method = "lora"
    flat = apply_peft(base, cfg.peft)
    assert flat.numel > 0
    torch.testing.assert_close(base.eval()(data.x, data.lengths), ref, rtol=0, atol=0)


def test_same_seed_same_local_update():
    outs = []
    for _ in range(2):
        cfg, model, flat = _setup("bias", "hf_text", ["model.dropout=0.2"])
        LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(toy_client_data("hf_text"), seed=7)
        outs.append(flat.data.clone())
    assert torch.equal(outs[0], outs[1])
