"""Loss-basin analysis: interpolation along a segment, barrier height, and the two-run command."""

import json

import numpy as np
import pytest
import torch

from hpcfed.analysis.basin import (BasinError, barrier_height, check_comparable, interpolate, interpolate_losses,
                                   lerp_params, main)


class Holder:
    """A 'model' whose parameters are one vector; the loss is a function of it."""

    def __init__(self, loss_fn):
        self.theta = None
        self.loss_fn = loss_fn

    def set(self, theta):
        self.theta = theta

    def loss(self):
        return float(self.loss_fn(self.theta))


def test_convex_quadratic_has_no_barrier():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(10, generator=g, dtype=torch.float64)
    h = Holder(lambda th: ((th - c) ** 2).sum())
    a, b = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)
    ts, losses = interpolate_losses(h.set, a, b, h.loss, k=11)
    assert ts.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())
    bh = barrier_height(ts, losses)
    assert -1e-12 <= bh <= 1e-12  # the end points are on the line, everything between is below it
    assert np.all(losses[1:-1] < (1 - ts[1:-1]) * losses[0] + ts[1:-1] * losses[-1])


def test_linear_loss_has_zero_barrier():
    w = torch.arange(5, dtype=torch.float64)
    h = Holder(lambda th: (w * th).sum())
    ts, losses = interpolate_losses(h.set, torch.zeros(5, dtype=torch.float64),
                                    torch.ones(5, dtype=torch.float64), h.loss, k=7)
    assert barrier_height(ts, losses) == pytest.approx(0.0, abs=1e-12)


def test_double_well_has_positive_barrier():
    h = Holder(lambda th: ((th ** 2 - 1.0) ** 2).sum())  # minima at ±1, ridge of height 1 at 0
    ts, losses = interpolate_losses(h.set, torch.tensor([-1.0]), torch.tensor([1.0]), h.loss, k=11)
    assert losses[0] == 0.0 and losses[-1] == 0.0
    assert barrier_height(ts, losses) == pytest.approx(1.0)


def test_endpoints_are_exact_and_state_dicts_work():
    g = torch.Generator().manual_seed(1)
    a = {"w": torch.randn(3, 4, generator=g), "step": torch.tensor(7)}
    b = {"w": torch.randn(3, 4, generator=g) * 1e3, "step": torch.tensor(7)}
    h = Holder(lambda sd: torch.tanh(sd["w"]).sum() + sd["step"])
    _, losses = interpolate_losses(h.set, a, b, h.loss, k=5)
    assert losses[0] == h.loss_fn(a) and losses[-1] == h.loss_fn(b)
    assert torch.equal(lerp_params(a, b, 0.0)["w"], a["w"]) and torch.equal(lerp_params(a, b, 1.0)["w"], b["w"])
    assert torch.equal(h.theta["w"], b["w"])  # left at θ_b
    _, res = interpolate(h.set, a, b, lambda: ("x", h.loss()), k=3)
    assert [r[0] for r in res] == ["x"] * 3


def test_bad_inputs():
    with pytest.raises(ValueError):
        interpolate_losses(lambda t: None, torch.zeros(2), torch.zeros(3), lambda: 0.0)
    with pytest.raises(ValueError):
        interpolate_losses(lambda t: None, torch.zeros(2), torch.zeros(2), lambda: 0.0, k=1)
    with pytest.raises(ValueError):
        interpolate(lambda t: None, {"a": torch.tensor(1)}, {"a": torch.tensor(2)}, lambda: 0)  # ints differ
    with pytest.raises(ValueError):
        barrier_height([0.0, 0.0, 1.0], [1.0, 2.0, 3.0])
    assert np.isnan(barrier_height([0.0, 1.0], [1.0, float("nan")]))


# ---------------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two 'finished runs' of a tiny ViT (BitFit) on a tiny image set: shards, config.yaml and
    final/peft.safetensors with different PEFT values (no FL training: this tests the plumbing)."""
    from hpcfed.atomic import atomic_write_text
    from hpcfed.config import load_config
    from hpcfed.data import prepare_shards
    from hpcfed.data.synthetic import write_image_folder
    from hpcfed.export import save_peft
    from hpcfed.models import build_model
    from hpcfed.peft import apply_peft
    from tests.conftest import tiny_model_args

    root = tmp_path_factory.mktemp("basin")
    write_image_folder(root / "img.zip", ("a", "b", "c"), train_per_class=4, test_per_class=4, size=16)
    words = ["data.name=tinyimg", "data.kind=image", f"data.source={root / 'img.zip'}", "data.test_source=null",
             "data.partition=iid", "data.num_clients=2", "data.num_shards=1", f"data.shard_dir={root / 'shards'}",
             *tiny_model_args("timm_vit"), "peft.method=bias", "fl.cohort_size=2", "dist.device=cpu"]
    runs = []
    for i, name in enumerate(("a", "b")):
        cfg = load_config([*words, f"name={name}", f"out_dir={root}"])
        if i == 0:
            prepare_shards(cfg.data)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, 3)
        flat = apply_peft(model, cfg.peft)
        theta = flat.data + torch.randn(flat.numel, generator=torch.Generator().manual_seed(i)) * 0.5
        atomic_write_text(cfg.run_dir / "config.yaml", cfg.to_yaml())
        save_peft(cfg.run_dir / "final" / "peft.safetensors", flat, theta, peft_method="bias")
        runs.append(cfg.run_dir)
    return runs


def test_cli_prints_json_and_writes_plot(two_runs, tmp_path, capsys):
    a, b = two_runs
    png, js = tmp_path / "basin.png", tmp_path / "basin.json"
    rc = main([f"run_a={a}", f"run_b={b}", "k=5", f"plot={png}", f"out={js}"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)
    assert res == json.loads(js.read_text())
    assert res["ts"] == [0.0, 0.25, 0.5, 0.75, 1.0] and len(res["losses"]) == len(res["accuracies"]) == 5
    assert res["test_examples"] == 12 and res["barrier"] >= 0.0
    assert res["barrier"] == pytest.approx(barrier_height(res["ts"], res["losses"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same run at both ends: a flat line
    rc = main([f"run_a={a}", f"run_b={a}", "k=3"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["distance"] == 0.0 and len(set(res["losses"])) == 1


@pytest.mark.parametrize("argv,needle", [
    (["run_a=/nonexistent", "run_b=/nonexistent"], "no config.yaml"),
    (["run_b=x"], "run_a= is required"),
    (["run_a=x", "run_b=y", "k=1"], "k=1 must be >= 2"),
    (["run_a=x", "run_b=y", "colour=red"], "unknown key 'colour'"),
    (["run_a=x", "run_b=y", "k=many"], "k='many' is not an integer"),
])
def test_cli_errors_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_runs_with_different_frozen_weights_are_refused():
    from hpcfed.config import load_config
    from tests.conftest import tiny_model_args

    base = [*tiny_model_args("timm_vit"), "peft.method=bias"]
    a = load_config(base)
    with pytest.raises(BasinError, match="seed=0 and seed=1"):
        check_comparable(a, load_config([*base, "seed=1"]))
    with pytest.raises(BasinError, match="model section"):
        check_comparable(a, load_config([*base, "model.hidden_size=64"]))
    with pytest.raises(BasinError, match="PEFT section"):
        check_comparable(a, load_config([*base, "peft.method=head"]))
    check_comparable(a, load_config([*base, "fl.local.lr=0.1"]))  # training settings may differ
    check_comparable(load_config([*base, "peft.method=full"]), load_config([*base, "peft.method=full", "seed=1"]))
