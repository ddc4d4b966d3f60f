"""Sequence packing on MPNet (relative position bias): packed logits equal the padded batch's.

MPNet adds a learned bias per relative-distance bucket, computed from slot distances in the row; inside one
packed sequence those equal the distances in the sequence alone, and the block-diagonal mask removes every
cross-sequence pair. Its eager attention adds the mask as given, so the packed path passes it as 0 / dtype-min
(a bool mask would add 1/0 and leak attention: max |Δlogit| ≈ 5e-3 on this model before that was done).
Positions start at 2 whatever config.pad_token_id says (transformers' MPNetEmbeddings fix padding_idx at 1):
the config-built tiny model below has pad_token_id 0 and showed max |Δlogit| 0.23 with pad_token_id + 1.
"""

import pytest
import torch
from transformers import MPNetConfig, MPNetModel

from hpcfed.config import load_config
from hpcfed.models import TextClassifier, build_model
from tests.conftest import tiny_model_args

PAD = 1  # the real all-mpnet-base-v2's pad id: positions start at 2


def _tiny_mpnet(pooling: str = "mean") -> TextClassifier:
    torch.manual_seed(0)
    conf = MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=256, pad_token_id=PAD)
    return TextClassifier(MPNetModel(conf, add_pooling_layer=False), 3, pooling=pooling).eval()


def _batch(pad: int, long: int = 150):
    """9 right-padded sequences; one longer than MPNet's max relative distance (128), so every bucket is hit."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, min(40, long), (9,), generator=g)
    lengths[3] = long
    x = torch.randint(4, 90, (9, long), generator=g)
    x[torch.arange(long)[None, :] >= lengths[:, None]] = pad
    return x, lengths


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_mpnet_packed_logits_equal_padded(pooling):
    model = _tiny_mpnet(pooling)
    assert model.packing_unsupported() is None
    x, lengths = _batch(PAD)
    ref = model(x, lengths)
    out = model(x, lengths, pack=True)
    assert (out - ref).abs().max().item() <= 1e-5
    for i in (0, 3, 8):  # and each sequence alone, no padding at all
        alone = model(x[i:i + 1, : int(lengths[i])], lengths[i:i + 1])
        assert (out[i] - alone[0]).abs().max().item() <= 1e-5
    params = [model.head.weight, model.backbone.encoder.relative_attention_bias.weight,
              model.backbone.encoder.layer[0].attention.attn.q.bias]
    ga = torch.autograd.grad(ref.square().sum(), params)
    gb = torch.autograd.grad(model(x, lengths, pack=True).square().sum(), params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_mpnet_packed_under_bf16_autocast_and_from_config():
    """The mask keeps the embeddings' dtype under autocast (as the padded path's does); the config's random-init
    route (model.arch=mpnet, pad id 0) packs too."""
    model = _tiny_mpnet()
    x, lengths = _batch(PAD, long=60)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = model(x, lengths), model(x, lengths, pack=True)
    assert out.dtype == ref.dtype and (out.float() - ref.float()).abs().max().item() < 5e-2
    words = [w for w in tiny_model_args("hf_text") if not w.startswith("model.arch=")] + ["model.arch=mpnet"]
    torch.manual_seed(0)
    model = build_model(load_config(words).model, 2).eval()
    assert model.backbone.config.model_type == "mpnet" and model.packing_unsupported() is None
    x, lengths = _batch(model.backbone.config.pad_token_id, long=40)
    assert (model(x, lengths, pack=True) - model(x, lengths)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("peft_words", [["peft.method=bias"], ["peft.method=lora", "peft.lora_target_modules=[q,v]"]])
def test_mpnet_packs_under_peft(peft_words):
    """BitFit, and LoRA on MPNet's own projection names (q, v; the BERT default query/value is not there): the
    backbone wrapped by peft still packs exactly."""
    from hpcfed.peft import apply_peft

    words = [w for w in tiny_model_args("hf_text") if not w.startswith("model.arch=")] + ["model.arch=mpnet"]
    cfg = load_config(words + peft_words)
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    apply_peft(model, cfg.peft)
    model.eval()
    assert model.packing_unsupported() is None
    x, lengths = _batch(model.backbone.config.pad_token_id, long=40)
    assert (model(x, lengths, pack=True) - model(x, lengths)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", ["sequential", "parallel"])
def test_mpnet_adapters_start_as_the_backbone_train_and_pack(variant):
    """Adapters on MPNet (its attention ends in ``attention.attn.o``, not BERT's ``attention.output.dense``): one
    per sublayer of every layer, the model starts exactly as the backbone (up-projection zero), a non-zero adapter
    changes the logits, and packing stays exact with it."""
    from hpcfed.peft import apply_peft

    words = [w for w in tiny_model_args("hf_text") if not w.startswith("model.arch=")] + ["model.arch=mpnet"]
    cfg = load_config(words + ["peft.method=adapter", f"peft.adapter_variant={variant}"])
    torch.manual_seed(0)
    base = build_model(cfg.model, 2).eval()
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    apply_peft(model, cfg.peft)
    model.eval()
    x, lengths = _batch(model.backbone.config.pad_token_id, long=40)
    ref = model(x, lengths)
    assert torch.equal(ref, base(x, lengths))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = model.backbone.config.num_hidden_layers
    assert {n for n in trainable if ".adapter_" in n} == {
        f"backbone.encoder.layer.{i}.adapter_{site}.{lin}.{w}" for i in range(layers) for site in ("attn", "mlp")
        for lin in ("down", "up") for w in ("weight", "bias")}
    torch.manual_seed(1)
    with torch.no_grad():
        for site in ("attn", "mlp"):  # random, not constant: LayerNorm removes a constant shift
            up = getattr(model.backbone.encoder.layer[0], f"adapter_{site}").up
            up.weight.normal_(0, 0.3)
            changed = model(x, lengths)
            assert (changed - ref).abs().max().item() > 1e-3, site
            up.weight.zero_()
        model.backbone.encoder.layer[1].adapter_attn.up.weight.normal_(0, 0.3)
    assert (model(x, lengths, pack=True) - model(x, lengths)).abs().max().item() <= 1e-5


def test_mpnet_prompt_tuning_runs_unpacked():
    """Soft prompts (peft prompt tuning) on MPNet: virtual-token embeddings and the head train; packing is refused
    with its reason, as on BERT."""
    from hpcfed.peft import apply_peft

    words = [w for w in tiny_model_args("hf_text") if not w.startswith("model.arch=")] + ["model.arch=mpnet"]
    cfg = load_config(words + ["peft.method=prompt"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    apply_peft(model, cfg.peft)
    assert "virtual tokens" in (model.packing_unsupported() or "")
    x, lengths = _batch(model.backbone.config.pad_token_id, long=40)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    assert any("prompt_encoder" in n for n, p in model.named_parameters() if p.requires_grad)
    grads = torch.autograd.grad(model(x, lengths).square().sum(), trainable)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
