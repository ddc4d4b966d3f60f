"""slurm/run.sh under a fake Slurm allocation with sbatch/srun absent: it falls back to mpirun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.mpi
SCRIPT = REPO / "slurm" / "run.sh"


def test_sbatch_header():
    text = SCRIPT.read_text()
    for directive in ("--nodes=", "--ntasks-per-node=", "--gpus-per-node=", "--time="):
        assert f"#SBATCH {directive}" in text
    assert "hpcfed.main" in text and "srun" in text and "mpirun" in text


def test_run_sh_falls_back_to_mpirun(toy_text, tmp_path, mpirun):
    assert shutil.which("srun") is None or pytest.skip("a real srun is installed here")
    cfg = tmp_path / "job.yaml"
    cfg.write_text("name: slurm_fake\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "SLURM_", "PMIX_"))}
    env.update(SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="2",
               SLURM_JOB_NODELIST="localhost", SLURM_SUBMIT_DIR=str(REPO), SLURM_CPUS_PER_TASK="1",
               HPCFED_PYTHON=sys.executable)
    r = subprocess.run(["bash", str(SCRIPT), str(cfg), *toy_text[:-1], f"out_dir={tmp_path}", "fl.rounds=1"],
                       capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 ranks" in r.stderr
    lines = [json.loads(x) for x in (tmp_path / "slurm_fake" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["round"] == 1 and lines[-1]["clients"] == 4
