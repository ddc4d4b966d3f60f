"""data.reserve_train_samples: rows of the train source no client receives (FedPFT's public distillation text)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hpcfed.config import ConfigError, load_config, minilm_path
from hpcfed.data import DataError, ShardedDataset, prepare_shards, reserved_rows


def _words(root, reserve, extra=()):
    return [f"data.source={root / 'train.tsv'}", "data.test_source=null", "data.name=toyr", "data.num_clients=4",
            "data.num_shards=2", "data.max_length=16", "data.partition=iid", f"data.shard_dir={root / f'sh{reserve}'}",
            f"data.tokenizer={minilm_path()}", f"data.reserve_train_samples={reserve}", "fl.cohort_size=2", *extra]


@pytest.fixture
def root(toy_text):
    """The toy data folder (600-row train.tsv); these tests write shards of their own beside it."""
    return Path(next(w for w in toy_text if w.startswith("data.source=")).split("=", 1)[1]).parent


def _rows(ds):
    out = Counter()
    for c in range(ds.num_clients):
        d = ds.load_client(c)
        out.update(tuple(d.x[i, : int(d.lengths[i])].tolist()) for i in range(len(d)))
    return out


def test_reserved_rows_reach_no_client_and_feed_fedpft(root):
    """Clients hold exactly the non-reserved rows (as token sequences, with multiplicity); FedPFT's public set
    is drawn from the reserved ones only; reserve=0 changes nothing (same shards, same cache key)."""
    from hpcfed.algorithms.fedpft import FedPFTParams
    from hpcfed.algorithms.fedpft_submodel import load_public_text

    cfg = load_config(_words(root, 30))
    ds = ShardedDataset(prepare_shards(cfg.data, minilm_path()))
    res = reserved_rows(600, cfg.data)
    assert len(res) == 30 and len(set(res.tolist())) == 30 and np.all(np.diff(res) > 0)
    pub = load_public_text(cfg, FedPFTParams(public_samples=500))
    assert len(pub) == 30  # capped by the reserve
    pub_rows = Counter(tuple(pub.x[i, : int(pub.lengths[i])].tolist()) for i in range(len(pub)))
    full = ShardedDataset(prepare_shards(load_config(_words(root, 0)).data, minilm_path()))
    all_rows, client_rows = _rows(full), _rows(ds)
    assert sum(client_rows.values()) == 570 and sum(all_rows.values()) == 600
    assert client_rows + pub_rows == all_rows  # a partition of the source: disjoint and complete
    base = load_config(_words(root, 0)).data
    assert "reserve_train_samples" not in base.identity()  # older shard caches stay valid


def test_reserve_errors(root):
    with pytest.raises(DataError, match="reserve_train_samples=598 leaves 2 of 600 rows for 4 clients"):
        reserved_rows(600, load_config(_words(root, 598)).data)
    with pytest.raises(ConfigError, match="data.reserve_train_samples"):
        load_config(_words(root, -1))
    from hpcfed.compose import load_run_config

    with pytest.raises(ConfigError, match="data.reserve_train_samples"):  # FedPFT needs disjoint public text
        load_run_config(_words(root, 0, ["peft.method=lora", "fl.algorithm=fedpft", "model.family=hf_text",
                                         ]))
