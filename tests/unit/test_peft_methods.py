"""Generic PEFT checks over one table of (method, tiny backbone, variant) rows: only the method's parameters
change, identity start where the method promises it, local training lowers the loss, and the export
round-trips (peft's from_pretrained for peft-backed methods, a state dict for the others)."""

import pytest
import torch
from safetensors.torch import load_file

from hpcfed.config import load_config
from hpcfed.export import STATE_FILE, export_peft, load_export
from hpcfed.fl.client import LocalTrainer, evaluate
from hpcfed.models import build_model
from hpcfed.peft import apply_peft, frozen_state
from tests.conftest import tiny_model_args, toy_client_data

FAMILIES = ("hf_text", "timm_vit", "open_clip")
METHODS = ("bias", "lora", "adapter", "prompt", "head", "full")
# One row per method x family (default variants), plus the other variants of adapter and prompt.
CASES = [(m, f, ()) for m in METHODS for f in FAMILIES] + [
    ("adapter", f, ("peft.adapter_variant=parallel",)) for f in FAMILIES] + [
    ("prompt", f, ("peft.prompt_depth=deep",)) for f in ("timm_vit", "open_clip")] + [
    ("lora", "hf_text", ("peft.lora_freeze_a=true",))]
IDS = [f"{m}-{f}" + ("-" + x[0].split("=")[1] if x else "") for m, f, x in CASES]
# Methods whose backbone becomes a peft.PeftModel (exported with save_pretrained).
PEFT_LIBRARY = {("lora", "hf_text"), ("lora", "timm_vit"), ("lora", "open_clip"), ("prompt", "hf_text")}
TRAINED_NAME = {
    "head": lambda n: n.startswith("head."),
    "bias": lambda n: n.endswith(".bias") or n.startswith("head."),
    "lora": lambda n: "lora_" in n or n.startswith("head."),
    "adapter": lambda n: "adapter_" in n or n.startswith("head."),
    "prompt": lambda n: "prompt" in n or n.startswith("head."),
    "full": lambda n: True,
}



def model_args(family: str) -> list[str]:
    return tiny_model_args(family)


def _cfg(method, family, extra=()):
    return load_config(model_args(family) + [f"peft.method={method}", "fl.local.steps=20", "fl.local.lr=3e-3",
                                             "fl.local.batch_size=16", "model.dropout=0.0", *extra])


def _setup(method, family, extra=()):
    cfg = _cfg(method, family, extra)
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    flat = apply_peft(model, cfg.peft)
    return cfg, model, flat


def _logits(model, data):
    with torch.no_grad():
        return model.eval()(data.x, data.lengths)


@pytest.mark.parametrize("method,family,extra", CASES, ids=IDS)
def test_only_method_params_change_and_loss_drops(method, family, extra):
    cfg, model, flat = _setup(method, family, extra)
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
    assert all(TRAINED_NAME[method](n) for n in flat.names), flat.names
    assert {"head.weight", "head.bias"} <= set(flat.names)
    if method == "full":
        assert len(frozen_before) == 0
    else:
        assert len(frozen_before) > 0
    if method != "head":
        assert len(flat.names) > 2  # the method adds or unfreezes something besides the head


def test_lora_freeze_a_trains_only_b():
    """FFA-LoRA: the A matrices leave the flat buffer (half of LoRA's parameters besides the head), keep their
    seeded init, and are the same in two builds with the same seed (so every rank and client shares them)."""
    _, _, plain = _setup("lora", "hf_text")
    cfg, model, flat = _setup("lora", "hf_text", ("peft.lora_freeze_a=true",))
    assert not any("lora_A" in n for n in flat.names) and any("lora_B" in n for n in flat.names)
    head = {n for n in flat.names if n.startswith("head.")}
    a_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_A" in n)
    assert a_numel > 0 and flat.numel == plain.numel - a_numel
    a0 = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(toy_client_data("hf_text"), seed=1)
    assert all(torch.equal(p, a0[n]) for n, p in model.named_parameters() if "lora_A" in n)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B moved off zero
    _, again, _ = _setup("lora", "hf_text", ("peft.lora_freeze_a=true",))
    assert all(torch.equal(p, a0[n]) for n, p in again.named_parameters() if "lora_A" in n)
    assert len(head) == 2


IDENTITY = [(m, f, x) for m, f, x in CASES if m in ("lora", "adapter")]


@pytest.mark.parametrize("method,family,extra", IDENTITY, ids=[f"{m}-{f}{'-' + x[0] if x else ''}"
                                                                 for m, f, x in IDENTITY])
def test_identity_start(method, family, extra):
    """Invariant 4: LoRA (B = 0) and adapters (up-projection = 0) leave the model's output unchanged."""
    cfg = _cfg(method, family, extra)
    torch.manual_seed(0)
    base = build_model(cfg.model, 2)
    data = toy_client_data(family, n=8)
    ref = _logits(base, data)
    flat = apply_peft(base, cfg.peft)
    assert flat.numel > base.head.weight.numel() + base.head.bias.numel()
    torch.testing.assert_close(_logits(base, data), ref, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["timm_vit", "open_clip"])
def test_visual_prompts_change_output_and_leave_token_layout(family):
    """VPT-deep: one (P, D) set per block; prompts change the output and are removed after the last block,
    so the backbone's own pooling sees its usual (prefix + patch) tokens."""
    cfg = _cfg("prompt", family, ("peft.prompt_depth=deep", "peft.prompt_length=3"))
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    data = toy_client_data(family, n=2)
    base = _logits(model, data)
    apply_peft(model, cfg.peft)
    assert not torch.allclose(_logits(model, data), base)
    vit = model.backbone if family == "timm_vit" else model.backbone.visual
    assert vit.prompt.embeddings.shape == (cfg.model.num_layers, 3, cfg.model.hidden_size)
    seen = []
    handle = vit.transformer.resblocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.shape)) \
        if family == "open_clip" else vit.norm.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    _logits(model, data)
    handle.remove()
    n_tokens = (16 // 4) ** 2 + 1  # patches + class token
    assert seen[-1][1] == n_tokens


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_prompt_outputs_are_not_pooled(pooling):
    """Soft prompts act through attention only: pooling reads the real tokens' positions (prompts dropped)."""
    cfg, model, flat = _setup("prompt", "hf_text", (f"model.pooling={pooling}", "peft.prompt_length=4"))
    data = toy_client_data("hf_text", n=6)
    lmax = int(data.lengths.max())
    x = data.x[:, :lmax].long()
    attn = (torch.arange(lmax)[None, :] < data.lengths[:, None]).long()  # (B, L)
    with torch.no_grad():
        h = model.eval().backbone(input_ids=x, attention_mask=attn).last_hidden_state  # (B, 4 + L, D)
        assert h.shape[1] == 4 + lmax
        h = h[:, 4:]
        m = attn.unsqueeze(-1).float()
        want = h[:, 0] if pooling == "cls" else (h * m).sum(1) / m.sum(1)
        torch.testing.assert_close(model.features(data.x, data.lengths), want)


def test_method_errors():
    from hpcfed.config import ConfigError

    with pytest.raises(ConfigError, match="text encoders support only 'shallow'"):
        _setup("prompt", "hf_text", ("peft.prompt_depth=deep",))
    with pytest.raises(ConfigError, match="larger than the hidden size 32"):
        _setup("adapter", "timm_vit", ("peft.adapter_reduction_factor=64",))
    with pytest.raises(ConfigError, match="lora_dropout"):
        _setup("lora", "open_clip", ("peft.lora_dropout=0.1",))
    with pytest.raises(ConfigError, match="MultiheadAttention"):
        _setup("lora", "open_clip", ("peft.lora_target_modules=[attn]",))


def _perturb(flat, seed=0):
    """Move every trainable value (so an export of the initial values cannot pass by accident)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        flat.data.add_(0.05 * torch.randn(flat.data.shape, generator=g))


@pytest.mark.parametrize("method,family,extra", CASES, ids=IDS)
def test_export_round_trip(method, family, extra, tmp_path):
    """Export, then load into a fresh copy of the base model with the libraries' own loaders: same logits."""
    cfg, model, flat = _setup(method, family, extra)
    _perturb(flat)
    theta = flat.data.clone()
    data = toy_client_data(family, n=8)
    want = _logits(model, data)
    out = export_peft(model, flat, None, tmp_path / "export", cfg)
    torch.manual_seed(0)
    fresh = build_model(cfg.model, 2)  # same seed: the same frozen backbone and head init
    sd = load_file(str(out / STATE_FILE))
    if (method, family) in PEFT_LIBRARY:
        from peft import PeftModel

        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert set(sd) == {"head.weight", "head.bias"}
        fresh.backbone = PeftModel.from_pretrained(fresh.backbone, str(out))
    else:
        assert not any(k.startswith("backbone.") for k in sd)
        if method not in ("head", "bias", "full"):
            apply_peft(fresh, cfg.peft)  # adapters / visual prompts must exist before their weights load
        res = fresh.backbone.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")},
                                             strict=False)
        assert not res.unexpected_keys
    fresh.head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})
    torch.testing.assert_close(_logits(fresh, data), want, rtol=1e-5, atol=1e-6)

    # And hpcfed's own loader gives back the flat vector, leaving the model untouched.
    torch.manual_seed(0)
    again = build_model(cfg.model, 2)
    flat2 = apply_peft(again, cfg.peft)
    before = flat2.data.clone()
    torch.testing.assert_close(load_export(again, flat2, out), theta, rtol=0, atol=0)
    assert torch.equal(flat2.data, before)


def test_export_uses_theta_and_leaves_model(tmp_path):
    cfg, model, flat = _setup("lora", "timm_vit")
    theta = flat.data + 1.0
    keep = flat.data.clone()
    out = export_peft(model, flat, theta, tmp_path / "e", cfg)
    assert torch.equal(flat.data, keep)
    torch.manual_seed(0)
    again = build_model(cfg.model, 2)
    flat2 = apply_peft(again, cfg.peft)
    torch.testing.assert_close(load_export(again, flat2, out), theta, rtol=0, atol=0)


def test_same_seed_same_local_update():
    outs = []
    for _ in range(2):
        cfg, model, flat = _setup("bias", "hf_text", ["model.dropout=0.2"])
        LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(toy_client_data("hf_text"), seed=7)
        outs.append(flat.data.clone())
    assert torch.equal(outs[0], outs[1])


def test_insert_adapters_takes_a_factory_and_sites():
    """One inserter: a custom module per site, only the sites asked for, and a clear error on a second pass."""
    import pytest
    from torch import nn

    from hpcfed.config import ConfigError
    from hpcfed.peft.adapter import Adapter, insert_adapters

    made = []

    class Tagged(Adapter):
        def __init__(self, dim, bottleneck):
            super().__init__(dim, bottleneck)
            made.append((dim, bottleneck))

    model = build_model(load_config(tiny_model_args("hf_text")).model, 2).eval()
    x = torch.randint(0, 100, (2, 5))
    before = model(x, torch.tensor([5, 3]))
    out = insert_adapters(model, 4, "sequential", factory=Tagged, sites=("mlp",))
    assert made == [(32, 8), (32, 8)] and all(isinstance(a, Tagged) for a in out)
    names = [n for n, _ in model.named_modules() if n.endswith(("adapter_mlp", "adapter_attn"))]
    assert len(names) == 2 and all(n.endswith("adapter_mlp") for n in names)
    torch.testing.assert_close(model(x, torch.tensor([5, 3])), before)  # up-projection at zero: identity
    nn.init.normal_(out[0].up.weight)
    assert not torch.allclose(model(x, torch.tensor([5, 3])), before)  # the hook is live
    with pytest.raises(ConfigError, match="already has an adapter"):
        insert_adapters(model, 4, "sequential", sites=("mlp",))
    with pytest.raises(ConfigError, match="unknown"):
        insert_adapters(model, 4, "sequential", sites=("ffn",))
