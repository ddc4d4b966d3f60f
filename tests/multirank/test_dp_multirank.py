"""Client-level DP (fl.dp) under mpirun with gloo: 1 and 2 ranks give the same global model, the same clip-norm
path and ε (the noise is drawn from (seed, round) and added once after the all-reduce), with one aggregate
collective per round of exactly [acc | cnt | stats]."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO, launch_worker

pytestmark = pytest.mark.mpi
WORKER = str(REPO / "tests" / "multirank" / "_worker.py")
DP = ["fl.dp.enabled=true", "fl.dp.noise_multiplier=0.8", "fl.dp.clip_norm=0.05", "fl.dp.adaptive_clip=true",
      "fl.dp.clip_count_stddev=1.0", "fl.sampling=poisson", "fl.rounds=3"]


def test_dp_rank_count_invariance(mpirun, toy_text, tmp_path):
    runs = {n: launch_worker(mpirun, n, WORKER, tmp_path / f"r{n}.pt", toy_text + DP) for n in (1, 2)}
    a, b = runs[1], runs[2]
    assert b["world"] == 2 and not torch.equal(a["theta"], a["theta0"])
    diff = (a["theta"] - b["theta"]).abs().max().item()
    assert diff <= 1e-6, f"1-rank and 2-rank global parameters differ by {diff}"
    ha, hb = json.loads(a["history"]), json.loads(b["history"])
    for ma, mb in zip(ha, hb):
        for k in ("dp_epsilon", "dp_clip_norm", "dp_clipped_fraction", "clients"):
            assert ma[k] == pytest.approx(mb[k], rel=1e-9), k
    assert len({m["dp_clip_norm"] for m in ha}) > 1  # adaptive clipping moved C
    for r in runs.values():
        assert r["calls"]["aggregate"] == 3
        assert r["bytes"]["aggregate"] == 3 * (2 * r["numel"] + r["stats_len"]) * 4
