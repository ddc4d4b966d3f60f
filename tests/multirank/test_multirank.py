"""Multi-process invariants with gloo, launched with the venv's mpirun (DESIGN.md invariants 1, 3, 5):
1, 2 and 3 ranks (uneven placement) give the same global model; one aggregate collective per round, of exactly
the flat accumulator's size; bytes up/down are the elements the ranks actually moved; the main entry point under
mpirun and under torchrun (torch.distributed.run) give the same final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, launch_worker, mpirun_cmd

pytestmark = pytest.mark.mpi
WORKER = str(REPO / "tests" / "multirank" / "_worker.py")
RANKS = (1, 2, 3)


@pytest.fixture(scope="module")
def runs(mpirun, toy_text, tmp_path_factory):
    d = tmp_path_factory.mktemp("ranks")
    return {n: launch_worker(mpirun, n, WORKER, d / f"r{n}.pt", toy_text) for n in RANKS}


def _cohort_placement(words, ranks: int) -> list[list[list[int]]]:
    """Per round, the clients each rank hosts (the loop's own placement rule)."""
    from hpcfed.config import load_config
    from hpcfed.data import ShardedDataset
    from hpcfed.dist import place_clients
    from hpcfed.fl.sampling import cohort_for_round

    cfg = load_config(words)
    ds = ShardedDataset(cfg.data.resolved_shard_dir())
    out = []
    for r in range(1, cfg.fl.rounds + 1):
        cohort = cohort_for_round(cfg.seed, r, ds.num_clients, cfg.fl.cohort_size)
        out.append(place_clients(cohort, ranks, [ds.client_num_samples(c) for c in cohort]))
    ds.close()
    return out


def test_rank_count_invariance_1_2_3_ranks(runs, toy_text):
    # 4 clients a round on 3 ranks: some rank hosts two clients and another one (uneven placement)
    for placed in _cohort_placement(toy_text, 3):
        assert sorted(len(p) for p in placed) == [1, 1, 2], placed
    for n in RANKS:
        assert runs[n]["world"] == n
        trained = [sorted(c for rep in runs[n]["ranks"] for c in rep["trained"][str(r)]) for r in (1, 2)]
        assert trained == [sorted(c for p in placed for c in p) for placed in _cohort_placement(toy_text, 1)]
    a = runs[1]
    assert not torch.equal(a["theta"], a["theta0"]), "training did nothing"
    for n in RANKS[1:]:
        diff = (a["theta"] - runs[n]["theta"]).abs().max().item()
        assert diff <= 1e-6, f"1-rank and {n}-rank global parameters differ by {diff}"
    h = {n: json.loads(runs[n]["history"]) for n in RANKS}
    for n in RANKS[1:]:
        for m1, mn in zip(h[1], h[n]):
            assert m1["train_loss"] == pytest.approx(mn["train_loss"], rel=1e-5)
            assert m1["train_loss_start"] == pytest.approx(mn["train_loss_start"], rel=1e-5)
    assert h[1][-1]["test_acc"] == pytest.approx(h[2][-1]["test_acc"], abs=1e-9) == h[3][-1]["test_acc"]


def test_one_aggregate_collective_per_round_of_exact_size(runs):
    for n, r in runs.items():
        assert r["calls"]["aggregate"] == 2, r["calls"]  # 2 rounds
        # [acc (n) | cnt (n) | stats], fp32: nothing else rides on the aggregate
        assert r["bytes"]["aggregate"] == 2 * (2 * r["numel"] + r["stats_len"]) * 4
        others = {k for k in r["calls"] if k not in ("aggregate", "eval", "broadcast_object")}
        assert not others, f"{n} ranks: unexpected collectives {others}"


def test_bytes_are_the_elements_moved(runs):
    """bytes_up / bytes_down are the elements the fused accumulate folded in / the clients were handed,
    counted by spies on every rank, times 4 (fp32) — the same whatever the number of ranks."""
    for n, r in runs.items():
        hist = [m for m in json.loads(r["history"]) if m["round"] >= 1]
        for m in hist:
            k = str(m["round"])
            up = sum(rep["elems_up"].get(k, 0) for rep in r["ranks"])
            down = sum(rep["elems_down"].get(k, 0) for rep in r["ranks"])
            assert up == m["clients"] * r["numel"] and down == 4 * r["numel"]
            assert (m["bytes_up"], m["bytes_down"]) == (4 * up, 4 * down), (n, m)


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
    fl = launch_worker(mpirun, 2, WORKER, tmp_path / "one.pt", words)
    assert [len(rep["trained"].get("1", [])) for rep in fl["ranks"]] == [1, 0]
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


def _out_dir(words) -> Path:
    return Path([w.split("=", 1)[1] for w in words if w.startswith("out_dir=")][0])


@pytest.fixture(scope="module")
def main_two_ranks(mpirun, toy_text):
    r = subprocess.run(mpirun_cmd(mpirun, 2, "-m", "hpcfed.main", *toy_text, "name=main2"), capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return _out_dir(toy_text) / "main2"


def test_main_entry_point_two_ranks(main_two_ranks):
    """`mpirun -n 2 python -m hpcfed.main` writes config.yaml, metrics.jsonl (a line a round), run_info.json
    and the final PEFT weights."""
    from safetensors import safe_open

    out = main_two_ranks
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    for key in ("train_loss", "test_acc", "bytes_up", "bytes_down", "round_s", "samples_per_s"):
        assert key in lines[-1]
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    assert "fl:" in (out / "config.yaml").read_text()
    with safe_open(str(out / "final" / "peft.safetensors"), "pt") as f:
        assert "layout" in f.metadata() and "head.weight" in f.keys()


def test_torchrun_two_processes_equals_mpirun(main_two_ranks, toy_text):
    """A real `python -m torch.distributed.run --nproc-per-node 2` launch (rank, world size and rendezvous from
    torchrun's environment) trains the same global model as `mpirun -n 2`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_"))}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "hpcfed.main", *toy_text, "name=torchrun2"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = _out_dir(toy_text) / "torchrun2"
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    got, ref = load_file(str(out / "final" / "peft.safetensors")), load_file(
        str(main_two_ranks / "final" / "peft.safetensors"))
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)


def test_client_parallel_groups_rank_count_invariant(mpirun, toy_text, tmp_path):
    """With client-parallel training (G = 3, dropout on), groups are cut from the cohort before placement,
    so 1 and 2 ranks give the same global model."""
    words = [*toy_text, "fl.local.client_group_size=3", "fl.cohort_size=6"]
    one = launch_worker(mpirun, 1, WORKER, tmp_path / "g1.pt", words)
    two = launch_worker(mpirun, 2, WORKER, tmp_path / "g2.pt", words)
    assert not torch.equal(one["theta"], one["theta0"])
    diff = (one["theta"] - two["theta"]).abs().max().item()
    assert diff <= 1e-6, f"1-rank and 2-rank client-parallel runs differ by {diff}"
    for res in (one, two):
        m = json.loads(res["history"])[-1]
        assert m["bytes_down"] == 6 * 4 * res["numel"] and m["bytes_up"] == m["clients"] * 4 * res["numel"]
