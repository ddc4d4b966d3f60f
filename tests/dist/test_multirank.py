"""Multi-process invariants with gloo, launched with the venv's mpirun (DESIGN.md invariants 1, 3, 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, mpirun_cmd

pytestmark = pytest.mark.mpi
WORKER = str(REPO / "tests" / "dist" / "_worker.py")


def _launch(mpirun, n, out: Path, words, timeout=300) -> dict:
    cmd = mpirun_cmd(mpirun, n, WORKER, str(out), *words)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, f"mpirun -n {n} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(mpirun, toy_text, tmp_path_factory):
    d = tmp_path_factory.mktemp("ranks")
    return {n: _launch(mpirun, n, d / f"r{n}.pt", toy_text) for n in (1, 2)}


def test_rank_count_invariance(runs):
    a, b = runs[1], runs[2]
    assert a["world"] == 1 and b["world"] == 2
    assert not torch.equal(a["theta"], a["theta0"]), "training did nothing"
    diff = (a["theta"] - b["theta"]).abs().max().item()
    assert diff <= 1e-6, f"1-rank and 2-rank global parameters differ by {diff}"


def test_one_aggregate_collective_per_round(runs):
    for n, r in runs.items():
        assert r["calls"].get("aggregate") == 2, r["calls"]  # 2 rounds
        # the aggregate buffer is acc + cnt + a few statistics: 2n fp32 plus O(1)
        assert r["bytes"]["aggregate"] // 2 < (2 * r["numel"] + 16) * 4


def test_bytes_accounting(runs, toy_text):
    for r in runs.values():
        hist = json.loads(r["history"])
        for m in hist:
            assert m["bytes_up"] == r["numel"] * 4 * 4  # flat size x fp32 x 4 clients in the cohort
            assert m["bytes_down"] == r["numel"] * 4 * 4
            assert m["clients"] == 4


def test_fedavg_one_client_equals_local_training(mpirun, toy_text, tmp_path):
    """With a cohort of one client and server lr 1, FedAvg's global model after one round is exactly the
    client's locally trained model (the other rank hosts nobody and contributes zeros)."""
    from hpcfed.config import load_config
    from hpcfed.data import ShardedDataset
    from hpcfed.fl.client import LocalTrainer
    from hpcfed.fl.sampling import client_seed, cohort_for_round
    from hpcfed.models import build_model
    from hpcfed.peft import apply_peft

    words = toy_text + ["fl.rounds=1", "fl.cohort_size=1"]
    fl = _launch(mpirun, 2, tmp_path / "one.pt", words)
    cfg = load_config(words)
    torch.set_num_threads(1)
    ds = ShardedDataset(cfg.data.resolved_shard_dir())
    (cid,) = cohort_for_round(cfg.seed, 1, ds.num_clients, 1)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ds.num_classes)
    flat = apply_peft(model, cfg.peft)
    assert torch.equal(flat.data, fl["theta0"])
    LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(ds.load_client(cid),
                                                                       client_seed(cfg.seed, 1, cid))
    diff = (flat.data - fl["theta"]).abs().max().item()
    assert diff <= 1e-6, diff
    ds.close()


def test_main_entry_point_two_ranks(mpirun, toy_text):
    """`mpirun -n 2 python -m hpcfed.main` writes config.yaml, metrics.jsonl (a line a round) and the final
    PEFT weights."""
    from safetensors import safe_open

    r = subprocess.run(mpirun_cmd(mpirun, 2, "-m", "hpcfed.main", *toy_text, "name=main2"), capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = Path([w.split("=", 1)[1] for w in toy_text if w.startswith("out_dir=")][0]) / "main2"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    for key in ("train_loss", "test_acc", "bytes_up", "bytes_down", "round_s", "samples_per_s"):
        assert key in lines[-1]
    assert "fl:" in (out / "config.yaml").read_text()
    with safe_open(str(out / "final" / "peft.safetensors"), "pt") as f:
        assert "layout" in f.metadata() and "head.weight" in f.keys()


def test_client_parallel_groups_rank_count_invariant(mpirun, toy_text, tmp_path):
    """With client-parallel training (G = 3, dropout on), groups are cut from the cohort before placement,
    so 1 and 2 ranks give the same global model."""
    words = [*toy_text, "fl.local.client_group_size=3", "fl.cohort_size=6"]
    one = _launch(mpirun, 1, tmp_path / "g1.pt", words)
    two = _launch(mpirun, 2, tmp_path / "g2.pt", words)
    assert not torch.equal(one["theta"], one["theta0"])
    diff = (one["theta"] - two["theta"]).abs().max().item()
    assert diff <= 1e-6, f"1-rank and 2-rank client-parallel runs differ by {diff}"
