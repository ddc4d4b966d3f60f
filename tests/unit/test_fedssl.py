"""Federated SimSiam pre-training through the FL loop (hpcfed/algorithms/fedsimsiam.py)."""

from __future__ import annotations

import pytest
import torch

from hpcfed.config import ConfigError, load_config
from hpcfed.dist import LocalComm
from hpcfed.compose import build_loop, load_run_config
from hpcfed.main import run
from tests.conftest import tiny_model_args


class _Rt:
    device = torch.device("cpu")


@pytest.fixture(scope="module")
def img_words(tmp_path_factory):
    from hpcfed.data import prepare_shards
    from hpcfed.data.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("ssl")
    write_image_folder(root / "img.zip", ("a", "b", "c"), train_per_class=8, test_per_class=4, size=16)
    words = ["data.name=tinyimg", "data.kind=image", f"data.source={root / 'img.zip'}", "data.test_source=null",
             "data.partition=iid", "data.num_clients=3", "data.num_shards=1", f"data.shard_dir={root / 'shards'}",
             *tiny_model_args("timm_vit"), "fl.cohort_size=3", "fl.rounds=2", "fl.local.steps=2",
             "fl.local.batch_size=4", "dist.device=cpu", "progress=false", f"out_dir={root / 'runs'}"]
    prepare_shards(load_config(words).data)
    return words


SSL = ["fl.algorithm=fedsimsiam", "peft.method=full", "fl.algo.proj_dim=16"]


def test_trains_backbone_not_classifier_and_ignores_labels(img_words):
    loop, _ = build_loop(load_config([*img_words, *SSL]), _Rt(), LocalComm())
    head0 = loop.model.head.weight.detach().clone()
    theta0 = loop.theta_global.clone()
    names = [s.name for s in loop.flat.layout]
    assert any(n.startswith("ssl_head.") for n in names) and not any(n.startswith("head.") for n in names)
    m = loop.run_round(1)
    assert m["clients"] == 3 and -1.0 <= m["train_loss"] <= 1.0  # SimSiam loss lies in [-1, 1]
    assert not torch.equal(loop.theta_global, theta0)
    assert torch.equal(loop.model.head.weight, head0)

    other, _ = build_loop(load_config([*img_words, *SSL]), _Rt(), LocalComm())
    for cid in range(3):  # scramble every label: the update must not change
        d = other.clients.get(cid)
        d.y.copy_(d.y[torch.randperm(len(d.y), generator=torch.Generator().manual_seed(cid))] + 1)
    other.run_round(1)
    assert torch.equal(other.theta_global, loop.theta_global)

    ev = loop.evaluate_global()
    assert -1.0 <= ev["ssl_test_loss"] <= 1.0 and ev["ssl_proj_std"] > 0


def test_run_writes_a_backbone_that_supervised_fl_loads(img_words):
    final = run(load_config([*img_words, *SSL, "name=ssl"]))
    assert "ssl_test_loss" in final
    from hpcfed.pretrain.train import read_meta

    path = load_config([*img_words, "name=ssl"]).run_dir / "final" / "backbone.safetensors"
    assert read_meta(path)["objective"] == "fedsimsiam"
    cfg = load_config([*img_words, "model.pretrained=true", f"model.path={path}", "peft.method=bias"])
    loop, _ = build_loop(cfg, _Rt(), LocalComm())
    from safetensors.torch import load_file

    saved = load_file(str(path))
    for k, v in loop.model.backbone.state_dict().items():
        assert torch.equal(v, saved[k]), k


@pytest.mark.parametrize("words,needle", [
    (["peft.method=bias"], "set peft.method=full"),
    (tiny_model_args("hf_text") + ["peft.method=full"], "needs data.kind=image"),
    (["peft.method=full", "fl.algo.proj_dim=2"], "fl.algo.proj_dim=2 must be >= 8"),
])
def test_config_errors(img_words, words, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_run_config([*img_words, "fl.algorithm=fedsimsiam", *words])
