"""FedPFT with 1 and 2 ranks (gloo, mpirun): the same global LoRA and bitwise the same sub-model on every rank
after stage 1 (layer-level distillation) and after a stage-2 alignment (APoZ all-reduced over ranks)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, mpirun_cmd

pytestmark = pytest.mark.mpi
WORKER = str(REPO / "tests" / "multirank" / "_fedpft_worker.py")
# 3 layers so that the inner one is compressed; rounds=3 with align_every=1: alignments after rounds 1 and 2
FEDPFT = ["peft.method=lora", "fl.algorithm=fedpft", "model.num_layers=3", "fl.rounds=3",
          "fl.algo.public_samples=64", "fl.algo.public_source=${data.source}", "fl.algo.distill_steps=4", "fl.algo.distill_batch_size=16",
          "fl.algo.align_every=1", "fl.algo.align_steps=3", "fl.algo.keep_ratio=0.25"]


def _launch(mpirun, n, prefix: Path, words, timeout=300) -> list[dict]:
    r = subprocess.run(mpirun_cmd(mpirun, n, WORKER, str(prefix), *words), capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    assert r.returncode == 0, f"mpirun -n {n} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return [torch.load(f"{prefix}.rank{k}.pt", weights_only=True) for k in range(n)]


@pytest.fixture(scope="module")
def runs(mpirun, toy_text, tmp_path_factory):
    d = tmp_path_factory.mktemp("fedpft_ranks")
    return {n: _launch(mpirun, n, d / f"r{n}", toy_text + FEDPFT) for n in (1, 2)}


def test_one_rank_equals_two_ranks(runs):
    (a,), (b0, b1) = runs[1], runs[2]
    assert a["world"] == 1 and b0["world"] == 2
    # every rank of the 2-rank job holds bitwise the same sub-model, after stage 1 and at the end
    assert torch.equal(b0["sub_stage1"], b1["sub_stage1"]) and torch.equal(b0["sub_final"], b1["sub_final"])
    # ... and the same as the 1-rank job's: bitwise after stage 1 (rank 0 distils from θ_0 in both); after
    # stage 2 up to the rounding of the global LoRA, whose cross-rank sum is ordered differently (≤ 1e-6)
    assert torch.equal(a["sub_stage1"], b0["sub_stage1"])
    sub_diff = (a["sub_final"] - b0["sub_final"]).abs().max().item()
    assert sub_diff <= 1e-5, f"1-rank and 2-rank sub-models differ by {sub_diff}"
    assert not torch.equal(a["sub_stage1"], a["sub_final"]), "stage 2 changed nothing"
    diff = (a["theta"] - b0["theta"]).abs().max().item()
    assert diff <= 1e-6, f"1-rank and 2-rank global LoRA differ by {diff}"
    ha, hb = json.loads(a["history"]), json.loads(b0["history"])
    assert [m.get("align") for m in ha] == [1, 1, None]
    for ma, mb in zip(ha, hb):
        assert ma["apoz_mean"] == mb["apoz_mean"] if "apoz_mean" in ma else "apoz_mean" not in mb
    assert ha[-1]["test_acc"] == pytest.approx(hb[-1]["test_acc"], abs=1e-9)


def test_collectives_per_round(runs):
    (b0, _) = runs[2]
    calls = b0["calls"]
    assert calls["aggregate"] == 3  # the loop's one all-reduce per round
    assert calls["apoz"] == 2  # one small extra all-reduce per alignment
    assert calls["submodel"] == 3  # stage 1 + two alignments share rank 0's distilled tensors
    assert b0["bytes"]["apoz"] == 2 * (16 + 1) * 8  # k = 16 neuron counts + 1 token count, float64
    hist = json.loads(b0["history"])
    for m in hist:
        assert m["bytes_up"] == b0["numel"] * 4 * 4  # only the LoRA(+head) buffer, 4 clients
