"""open_clip CLIP as a classifier: the head is CLIP's zero-shot classifier of the class names, nothing is
downloaded, and the classifier's logits equal CLIP's own zero-shot logits."""

import socket

import pytest
import torch
import torch.nn.functional as F

from hpcfed.config import load_config
from hpcfed.models import ModelError, build_model
from tests.unit.test_peft_methods import model_args

NAMES = ["cat", "dog", "pickup_truck"]



@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _cfg(*extra):
    return load_config(model_args("open_clip") + ["model.dropout=0.0", *extra])


def _reference_clip(cfg):
    """The whole CLIP (both towers) with the weights build_model(...) sees after torch.manual_seed(0)."""
    from hpcfed.models.clip import create_clip

    torch.manual_seed(0)
    clip_model, tokenizer, mean, std = create_clip(cfg.model)
    return clip_model.eval(), tokenizer, mean, std


def test_head_is_zero_shot_classifier(no_network):
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, class_names=NAMES)
    clip_model, tokenizer, _, _ = _reference_clip(cfg)
    # By hand: tokens -> text tower -> L2-normalise, times exp(logit_scale).
    prompts = ["a photo of a cat.", "a photo of a dog.", "a photo of a pickup truck."]
    with torch.no_grad():
        txt = F.normalize(clip_model.encode_text(tokenizer(prompts)), dim=-1)  # (K, E)
        want = clip_model.logit_scale.exp() * txt
    torch.testing.assert_close(model.head.weight.detach(), want)
    assert torch.equal(model.head.bias.detach(), torch.zeros(3))
    # The text tower is not kept.
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("backbone.visual.", "head.")) for n in names), names[:5]
    assert not any("token_embedding" in n for n in names)


def test_logits_equal_clip_zero_shot_logits(no_network):
    cfg = _cfg("model.clip_prompt_template=itap of a {}.")
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, class_names=NAMES).eval()
    clip_model, tokenizer, mean, std = _reference_clip(cfg)
    x = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)  # uint8 NHWC at the tower's size
    pix = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        img = clip_model.encode_image(pix, normalize=True)  # (B, E)
        txt = clip_model.encode_text(tokenizer([f"itap of a {c.replace('_', ' ')}." for c in NAMES]), normalize=True)
        want = clip_model.logit_scale.exp() * img @ txt.T  # (B, K)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_resizes_input_to_tower_size():
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, class_names=NAMES).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8))  # resized 8 -> 16
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_without_class_names_head_is_random():
    cfg = _cfg()
    torch.manual_seed(0)
    zs = build_model(cfg.model, 3, class_names=NAMES)
    torch.manual_seed(0)
    rnd = build_model(cfg.model, 3)
    assert not torch.allclose(zs.head.weight, rnd.head.weight)
    # The backbone is the same either way.
    torch.testing.assert_close(zs.backbone.state_dict(), rnd.backbone.state_dict(), rtol=0, atol=0)


def test_errors():
    cfg = _cfg()
    with pytest.raises(ModelError, match="2 class names for num_classes=3"):
        build_model(cfg.model, 3, class_names=["a", "b"])
    bad = load_config(["model.family=open_clip", "model.path=/nonexistent/clip.bin", "model.arch=ViT-B-32"])
    with pytest.raises(ModelError, match="no such file"):
        build_model(bad.model, 3)
    hub = load_config(["model.family=open_clip", "model.path=null", "model.pretrained=false",
                       "model.arch=hf-hub:org/model"])
    with pytest.raises(ModelError, match="needs the network"):
        build_model(hub.model, 3)


def test_local_folder_checkpoint(tmp_path, no_network):
    """model.path = an open_clip folder (open_clip_config.json + weights): loaded with no network."""
    import json

    from open_clip.model import CLIP
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": 32,
                 "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 4,
                                "image_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(1)
    ref = CLIP(**model_cfg).eval()
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    cfg = load_config(["model.family=open_clip", f"model.path={tmp_path}", "model.pretrained=true"])
    model = build_model(cfg.model, 2, class_names=["cat", "dog"])
    torch.testing.assert_close(model.backbone.visual.state_dict(), ref.visual.state_dict(), rtol=0, atol=0)
    assert model.img_size == 16
