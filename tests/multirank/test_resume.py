"""Exact resume with 2 ranks: interrupted (SIGTERM to one rank, or kill -9 of one rank mid-run) and
resumed runs end with bitwise the same global parameters as an uninterrupted run — with FedAdam on the server,
so the server optimizer's moments (and their step count) must survive the checkpoint too; a crashing rank
brings the job down promptly with the last checkpoint intact."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, mpirun_cmd

pytestmark = pytest.mark.mpi
ROUNDS = 5


def _words(toy_text, name, out_dir):
    return [w for w in toy_text if not w.startswith("out_dir=")] + [
        f"out_dir={out_dir}", f"name={name}", f"fl.rounds={ROUNDS}", "fl.local.steps=12",
        "checkpoint.every_rounds=1", "dist.timeout_s=60", "fl.server_opt.name=adam", "fl.server_opt.lr=0.01"]


def _final(out_dir, name) -> dict:
    return load_file(str(Path(out_dir) / name / "final" / "peft.safetensors"))


def _run(mpirun, words, timeout=300):
    return subprocess.run(mpirun_cmd(mpirun, 2, "-m", "hpcfed.main", *words), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def reference(mpirun, toy_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = _run(mpirun, _words(toy_text, "ref", out))
    assert r.returncode == 0, r.stderr[-3000:]
    return _final(out, "ref")


def _rank_pids(proc: subprocess.Popen) -> list[int]:
    kids = psutil.Process(proc.pid).children(recursive=True)
    return sorted(p.pid for p in kids if "hpcfed.main" in " ".join(p.cmdline()))


def _wait_rounds(path: Path, n: int, proc, timeout_s=240):
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, "run ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("run made no progress")


def _interrupt_and_resume(mpirun, toy_text, out, how):
    words = _words(toy_text, "int", out)
    proc = subprocess.Popen(mpirun_cmd(mpirun, 2, "-m", "hpcfed.main", *words), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        _wait_rounds(out / "int" / "metrics.jsonl", 2, proc)
        pids = _rank_pids(proc)
        assert len(pids) == 2, pids
        os.kill(pids[-1], signal.SIGKILL if how == "kill9" else signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "interrupted run claims success"
    if how == "sigterm":
        assert "checkpoint written" in err
    assert not (out / "int" / "final").exists() or how == "sigterm"
    r = _run(mpirun, words)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    return _final(out, "int")


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_interrupted_then_resumed_is_bitwise_equal(mpirun, toy_text, reference, tmp_path, how):
    got = _interrupt_and_resume(mpirun, toy_text, tmp_path, how)
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), f"{k} differs after {how} + resume"


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_kill9_resume_ten_times(mpirun, toy_text, reference, tmp_path, trial):
    got = _interrupt_and_resume(mpirun, toy_text, tmp_path, "kill9")
    assert all(torch.equal(got[k], reference[k]) for k in reference)


CRASH = """
import sys, torch.distributed as dist
import hpcfed.fl.loop as L
orig = L.FederatedLoop.run_round
def run_round(self, r):
    if r == 3 and dist.get_rank() == 1:
        raise RuntimeError("simulated rank crash")
    return orig(self, r)
L.FederatedLoop.run_round = run_round
from hpcfed.main import cli
sys.exit(cli(sys.argv[1:]))
"""


def test_rank_crash_ends_all_ranks_promptly(mpirun, toy_text, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    words = _words(toy_text, "crash", tmp_path)
    t0 = time.time()
    r = subprocess.run(mpirun_cmd(mpirun, 2, str(script), *words), capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode != 0
    assert time.time() - t0 < 90
    assert "simulated rank crash" in r.stderr
    from hpcfed.checkpoint import list_checkpoints, load_checkpoint

    ck = list_checkpoints(tmp_path / "crash" / "checkpoints")
    assert ck and load_checkpoint(ck[-1]).round == 2
