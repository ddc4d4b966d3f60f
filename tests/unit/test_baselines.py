"""Baselines in the same runner: centralized (pooled data, same step budget) and local-only."""

import json

import torch

from hpcfed.config import load_config
from hpcfed.fl.baselines import split_holdout
from hpcfed.dist import LocalComm
from hpcfed.compose import build_loop
from hpcfed.main import run
from tests.conftest import toy_client_data


class _Rt:
    device = torch.device("cpu")


def test_centralized_pools_all_data_with_cohort_budget(toy_text, tmp_path):
    cfg = load_config(toy_text + ["fl.mode=centralized", f"out_dir={tmp_path}", "name=c"])
    loop, ds = build_loop(cfg, _Rt(), LocalComm())
    seen = []
    update = loop.algorithm.local_update
    loop.algorithm.local_update = lambda tr, th, data, seed, cid: seen.append(data) or update(tr, th, data, seed, cid)
    loop.run_round(1)
    (pooled,) = seen  # one "client" a round ...
    parts = [ds.load_client(c) for c in range(ds.num_clients)]
    assert len(pooled) == sum(len(p) for p in parts) == 600  # ... holding every client's examples
    assert torch.equal(torch.sort(pooled.y).values, torch.sort(torch.cat([p.y for p in parts])).values)
    ds.close()

    res = run(cfg)
    lines = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [m["clients"] for m in lines] == [1, 1]
    assert all(m["local_steps"] == 3 * 4 for m in lines)  # fl.local.steps x fl.cohort_size
    assert res["test_acc"] == lines[-1]["test_acc"] and 0.0 <= res["test_acc"] <= 1.0


def test_local_only_reports_mean_client_accuracy(toy_text, tmp_path):
    res = run(load_config(toy_text + ["fl.mode=local_only", f"out_dir={tmp_path}", "name=l"]))
    out = json.loads((tmp_path / "l" / "local_only.json").read_text())
    rows = torch.tensor(out["per_client"], dtype=torch.float64)
    assert rows.shape == (6, 4) and sorted(rows[:, 0].tolist()) == list(range(6))
    assert abs(res["test_acc"] - rows[:, 2].mean().item()) < 1e-9
    assert out["local_steps"] == 4  # ceil(2 rounds x 4 cohort x 3 steps / 6 clients)
    assert abs(res["local_test_acc"] - rows[:, 3].mean().item()) < 1e-9
    assert all(0.0 <= a <= 1.0 for a in rows[:, 2:].flatten().tolist())


def test_holdout_split_is_seeded_and_disjoint():
    d = toy_client_data("hf_text", n=50)
    d.x[:, 0] = torch.arange(50, dtype=d.x.dtype)  # example ids, to see where each example went
    tr, ho = split_holdout(d, 0.2, seed=0, cid=3)
    ids_tr, ids_ho = set(tr.x[:, 0].tolist()), set(ho.x[:, 0].tolist())
    assert not ids_tr & ids_ho and ids_tr | ids_ho == set(range(50))  # disjoint, nothing lost
    for part in (tr, ho):  # rows stay whole: label and length travel with their example
        assert torch.equal(part.y, d.y[part.x[:, 0].long()]) and torch.equal(part.lengths, d.lengths[part.x[:, 0].long()])
    tr2, ho2 = split_holdout(d, 0.2, seed=0, cid=3)
    assert len(ho) == 10 and len(tr) == 40 and torch.equal(ho.x, ho2.x)
    assert not torch.equal(split_holdout(d, 0.2, seed=0, cid=4)[1].x, ho.x)
