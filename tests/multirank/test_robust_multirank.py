"""Robust aggregation (fl.aggregator=median) under a sign-flip attack, under mpirun with gloo on 2 ranks: the
same global model as the run on one rank in this process (every rank gathers the cohort's updates through
TorchDistComm.all_gather, sorted by client id, and applies the rule), with the round's one aggregate all-reduce
plus the two gathers. (One mpirun launch: the 1-rank reference runs in-process to keep the test short.)"""

from __future__ import annotations

import json

import pytest
import torch

from hpcfed.compose import build_loop
from hpcfed.config import load_config
from hpcfed.dist import LocalComm
from tests.conftest import REPO, launch_worker

pytestmark = pytest.mark.mpi
WORKER = str(REPO / "tests" / "multirank" / "_worker.py")
ROBUST = ["fl.aggregator=median", "fl.attack.kind=sign_flip", "fl.attack.fraction=0.3", "fl.cohort_size=5",
          "fl.rounds=2", "eval.every_rounds=5"]


class _Rt:
    device = torch.device("cpu")


def test_median_under_attack_rank_count_invariance(mpirun, toy_text, tmp_path):
    b = launch_worker(mpirun, 2, WORKER, tmp_path / "r2.pt", toy_text + ROBUST)
    loop, ds = build_loop(load_config(toy_text + ROBUST), _Rt(), LocalComm())
    theta0 = loop.theta_global.clone()
    history = loop.run().history
    ds.close()
    assert b["world"] == 2 and torch.equal(b["theta0"], theta0) and not torch.equal(loop.theta_global, theta0)
    diff = (loop.theta_global - b["theta"]).abs().max().item()
    assert diff <= 1e-6, f"1-rank and 2-rank global parameters differ by {diff}"
    hb = json.loads(b["history"])
    assert [m["byzantine_clients"] for m in history] == [m["byzantine_clients"] for m in hb]
    assert sum(m["byzantine_clients"] for m in hb) > 0
    assert b["calls"]["aggregate"] == 2 and b["calls"]["robust_meta"] == 2 and b["calls"]["robust_updates"] == 2
    assert [r["trained"] for r in b["ranks"]][0] and [r["trained"] for r in b["ranks"]][1]  # both ranks trained
