"""Fractal generator (IFS + chaos game) and the ``python -m hpcfed.pretrain`` command on a tiny config."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hpcfed.config import ModelConfig
from hpcfed.models import ModelError, build_model
from hpcfed.pretrain import fractal as fr
from hpcfed.pretrain.cli import main as pretrain_main
from hpcfed.pretrain.train import augment, read_meta


def test_sample_system_is_deterministic_and_contracting():
    a = fr.sample_system(np.random.default_rng(7))
    b = fr.sample_system(np.random.default_rng(7))
    assert np.array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = fr.sample_system(rng)
        k = len(s)
        assert s.shape == (k, 2, 3) and fr.MIN_MAPS <= k <= fr.MAX_MAPS
        assert np.all(fr.lipschitz_constants(s) < 1.0)  # every map is a contraction
        sv = np.linalg.svd(s[:, :, :2], compute_uv=False)  # (k, 2), descending
        alpha = float((sv[:, 0] + 2 * sv[:, 1]).sum())
        # σ-factor in Anderson & Farrell's band (clipping σ at 0.995 may take off at most 3 · 0.005 per map)
        assert (5 + k) / 2 - 0.015 * k - 1e-9 <= alpha <= (6 + k) / 2 + 1e-9
        p = fr.map_probabilities(s)
        det = np.abs(np.linalg.det(s[:, :, :2]))
        assert p.sum() == pytest.approx(1.0) and np.argmax(p) == np.argmax(det)
        j = fr.jitter_system(s, rng, 0.3)
        assert np.all(fr.lipschitz_constants(j) < 1.0)


def test_render_is_deterministic_non_empty_and_system_specific():
    systems = fr.class_systems(6, seed=3)
    imgs = [fr.render(s, 32, np.random.default_rng(1)) for s in systems]
    again = fr.render(systems[0], 32, np.random.default_rng(1))
    assert np.array_equal(imgs[0], again)
    for im in imgs:
        assert im.dtype == np.uint8 and im.shape == (32, 32)
        assert 0.05 <= (im > 0).mean() < 1.0
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert (imgs[i] != imgs[j]).mean() > 0.05, "two systems rendered alike"
    # class c's system depends on (seed, c) only
    assert all(np.array_equal(a, b) for a, b in zip(systems, fr.class_systems(3, seed=3)))


def test_chaos_game_points_lie_on_the_attractor():
    # Sierpinski triangle: maps x -> x/2 + v_i; the attractor is inside the triangle of the v_i (doubled).
    v = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
    sys_ = np.concatenate([np.broadcast_to(0.5 * np.eye(2), (3, 2, 2)), v[:, :, None]], axis=2)
    pts, which = fr.chaos_game([sys_], 4096, np.random.default_rng(0), burn_in=30)
    assert pts.shape == (1, 4096, 2) and which.shape == (1, 4096)
    p = pts[0]
    assert p.min() > -1e-6 and p[:, 0].max() < 2 + 1e-6 and p[:, 1].max() < 2 + 1e-6
    assert np.bincount(which[0], minlength=3).min() > 1000  # equal |det| -> equal frequencies


def test_fractal_dataset_deterministic_and_fast():
    a = fr.FractalDataset(4, 8, size=16, seed=5)
    b = fr.FractalDataset(4, 8, size=16, seed=5)
    c = fr.FractalDataset(4, 8, size=16, seed=6)
    assert a.x.shape == (32, 16, 16, 3) and a.x.dtype == np.uint8
    assert a.y.tolist() == [c for c in range(4) for _ in range(8)]
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    assert np.all(a.x.reshape(32, -1).std(axis=1) > 5)  # every image has structure
    x, y = a[9]
    assert x.shape == (16, 16, 3) and y == 1


def test_augment_keeps_shape_and_is_seeded():
    x = torch.from_numpy(fr.FractalDataset(2, 4, size=16, seed=0).x)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = augment(x, g1), augment(x, g2)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)


TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
        "model.img_size=16", "model.patch_size=4"]
RUN = ["--classes", "4", "--per-class", "8", "--epochs", "2", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def one_thread():
    """The CLI tests are tiny: one thread avoids oversubscribing a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _run(argv):
    lines = []
    rc = pretrain_main(argv, log=lines.append)
    return rc, lines


def test_pretrain_cli_named_arch_checkpoint_loads_into_build_model(tmp_path):
    out = tmp_path / "ck" / "vit.safetensors"
    rc, lines = _run(["model.arch=test_vit", "model.img_size=16", "model.patch_size=4", *RUN, "--out", str(out)])
    assert rc == 0
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all(np.isfinite(float(ln.split("loss ")[1].split()[0])) for ln in epochs)
    assert sorted(p.name for p in out.parent.iterdir()) == ["vit.safetensors"]  # no temp files left
    saved = load_file(str(out))
    meta = read_meta(out)
    assert meta["objective"] == "supervised" and len(meta["history"]) == 2
    cfg = ModelConfig(family="timm_vit", arch="test_vit", path=str(out), pretrained=True, img_size=16,
                      patch_size=4)
    model = build_model(cfg, 10)
    sd = model.backbone.state_dict()
    assert set(sd) == set(saved)
    assert all(torch.equal(sd[k], saved[k]) for k in saved)


def _tiny_cfg(path):
    return ModelConfig(family="timm_vit", arch="tiny", path=str(path), pretrained=True, hidden_size=32,
                       num_layers=2, num_heads=2, intermediate_size=64, img_size=16, patch_size=4)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "tiny.safetensors"
    rc, _ = _run([*TINY, *RUN, "--objective", "simsiam", "--out", str(out)])
    assert rc == 0
    return out


def test_pretrain_cli_tiny_simsiam_is_a_timm_state_dict(tiny_ckpt):
    from timm.models.vision_transformer import VisionTransformer

    saved = load_file(str(tiny_ckpt))
    meta = read_meta(tiny_ckpt)
    assert meta["objective"] == "simsiam" and all(-1.0 <= h["loss"] <= 1.0 for h in meta["history"])
    assert "model.arch=tiny" in meta["model_words"] and "model.hidden_size=32" in meta["model_words"]
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                            num_classes=0)
    vit.load_state_dict(saved, strict=True)


def test_build_model_loads_tiny_checkpoint(tiny_ckpt):
    saved = load_file(str(tiny_ckpt))
    sd = build_model(_tiny_cfg(tiny_ckpt), 3).backbone.state_dict()
    assert set(sd) == set(saved) and all(torch.equal(sd[k], saved[k]) for k in saved)
    bad = _tiny_cfg(tiny_ckpt)
    bad.hidden_size = 64
    with pytest.raises(ModelError, match="model.path"):
        build_model(bad, 3)


@pytest.mark.parametrize("argv,needle", [
    (["--classes", "1"], "--classes=1 must be >= 2"),
    (["--objective", "byol"], "invalid choice"),
    (["--bogus", "1"], "unknown option --bogus"),
    (["--out", "x.pt"], "must end in .safetensors"),
    (["model.family=hf_text"], "needs model.family=timm_vit"),
    (["model.hidden_sz=3"], "unknown key 'model.hidden_sz'"),
    (["model.hidden_size=30", "model.num_heads=4"], "cannot build model"),
])
def test_pretrain_cli_bad_options_one_line(argv, needle, capsys, tmp_path):
    rc, _ = _run([*argv, "out_dir=" + str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err and err.startswith("error: ")
