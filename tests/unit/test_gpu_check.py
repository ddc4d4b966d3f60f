"""benchmarks/gpu_check: the parsers, the verdicts, the JSON, the step runner and the refusal without a GPU.
No GPU needed (the GPU steps themselves only run on a GPU machine)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from benchmarks import gpu_check as G
from hpcfed.config import load_config

BENCH_OUT = """hardware: NVIDIA H200 (139 GiB), torch 2.9.0; timing statistic: median
dispatch backend: triton; BLOCK_SIZE: masked_accumulate=2048, server_update=1024, masked_adamw_step=1024, ...

| kernel | variant | n | bytes/el | dispatch ms | GB/s | clone GB/s | copy_ GB/s | % copy | ref ms | unfused ms | x |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| masked_accumulate | uint8 mask | 1e6 | 25 | 0.020 | 1250.0 | 1500.0 | 1600.0 | 78% | 0.050 | 0.100 | 5.00 |
| masked_accumulate | uint8 mask | 1e8 | 25 | 0.700 | 3571.4 | 4000.0 | 4100.0 | 87% | 2.000 | 5.000 | 7.14 |
| server_update | yogi | 1e8 | 32 | 1.000 | 3200.0 | 4000.0 | 4100.0 | 78% | 3.000 | 9.000 | 9.00 |
"""


@pytest.mark.parametrize("line,expected", [
    ("197 passed, 1 skipped, 8 deselected in 42.67s", dict(passed=197, skipped=1, deselected=8, duration_s=42.67)),
    ("==== 3 failed, 10 passed, 1 error, 2 warnings in 65.00s (0:01:05) ====",
     dict(failed=3, passed=10, errors=1, warnings=2, duration_s=65.0)),
    ("========== 1101 deselected in 9.10s ==========", dict(deselected=1101, duration_s=9.1)),
    ("no tests ran in 0.12s", dict(duration_s=0.12)),
    ("Traceback (most recent call last):", {}),
])
def test_parse_pytest_summary(line, expected):
    assert G.parse_pytest_summary(f"....\nsome output in 3s of text\n{line}\n") == expected


def test_parse_pytest_summary_takes_the_last_summary_line():
    text = "5 passed in 1.00s\n...\n=== 1 failed, 4 passed in 2.00s ==="
    assert G.parse_pytest_summary(text) == dict(failed=1, passed=4, duration_s=2.0)


def test_judge_pytest():
    assert G.judge_pytest(0, {"passed": 3}) == ("passed", [])
    assert G.judge_pytest(5, {"deselected": 9}, allow_empty=True) == ("no_tests", [])
    assert G.judge_pytest(5, {"deselected": 9})[0] == "failed"
    status, problems = G.judge_pytest(1, {"passed": 3, "failed": 2})
    assert status == "failed" and "2 failed" in problems
    assert G.judge_pytest(0, {})[0] == "failed"  # exit 0 without a readable summary is not evidence


def test_skips_fail_the_kernel_step():
    judge = G._pytest_judge(forbid_skips=True)
    out = "SKIPPED [1] tests/kernels/test_x.py:33: needs a CUDA device\n40 passed, 1 skipped in 3.00s"
    status, problems, counts = judge(0, out)
    assert status == "failed" and "needs a CUDA device" in problems[0] and counts["skipped"] == 1
    assert judge(0, "40 passed in 3.00s")[0] == "passed"


def test_parse_kernel_bench_and_summary():
    rows = G.parse_kernel_bench(BENCH_OUT)
    assert [(r["kernel"], r["n"]) for r in rows] == [("masked_accumulate", 10**6), ("masked_accumulate", 10**8),
                                                     ("server_update", 10**8)]
    assert rows[1]["gb_s"] == 3571.4 and rows[1]["pct_copy"] == 87.0 and rows[1]["copy_gb_s"] == 4100.0
    summary = G.summarize_bench(rows)
    assert summary["masked_accumulate / uint8 mask"] == {"n": 10**8, "gb_s": 3571.4, "pct_copy": 87.0}
    status, problems, parsed = G._bench_judge(0, BENCH_OUT)
    assert status == "passed" and parsed["hardware"].startswith("NVIDIA H200")
    assert G._bench_judge(0, BENCH_OUT.replace("backend: triton", "backend: torch"))[0] == "failed"
    assert G._bench_judge(0, "hardware: x\n")[0] == "failed"


def _metrics_lines():
    return [json.dumps(r) for r in (
        {"round": 1, "train_loss": 0.7, "round_s": 2.0},
        {"round": 2, "train_loss": 0.6, "test_acc": 0.71, "round_s": 1.0},
        {"round": 3, "train_loss": 0.5, "test_acc": 0.75, "round_s": 1.5},
    )]


def test_parse_metrics():
    m = G.parse_metrics(_metrics_lines())
    assert m["rounds"] == 3 and m["final_test_acc"] == 0.75 and m["final_test_acc_round"] == 3
    assert m["round_s"] == [2.0, 1.0, 1.5] and m["mean_round_s"] == pytest.approx(1.5)
    assert G.parse_metrics([])["final_test_acc"] is None


@pytest.mark.parametrize("device,status", [("cuda:0", "passed"), ("cpu", "failed")])
def test_main_job_judge(tmp_path, device, status):
    (tmp_path / "metrics.jsonl").write_text("\n".join(_metrics_lines()) + "\n")
    (tmp_path / "run_info.json").write_text(json.dumps({"device": device, "trainable_params": 26498}))
    got, problems, parsed = G._main_job_judge(tmp_path)(0, "")
    assert got == status and parsed["final_test_acc"] == 0.75 and len(parsed["metrics"]) == 3
    assert G._main_job_judge(tmp_path / "missing")(0, "")[0] == "failed"


def test_allreduce_judge():
    good = G.ALLREDUCE_TAG + json.dumps({"ok": True, "world_size": 2, "busbw_gb_s": 300.0})
    assert G._allreduce_judge(2)(0, f"noise\n{good}\n")[:2] == ("passed", [])
    assert G._allreduce_judge(4)(0, good)[0] == "failed"  # fewer ranks than GPUs
    bad = G.ALLREDUCE_TAG + json.dumps({"ok": False, "world_size": 2, "errors": ["rank 1: fp32 sum wrong"]})
    assert G._allreduce_judge(2)(1, bad)[0] == "failed"
    assert G._allreduce_judge(2)(0, "no result")[0] == "failed"


def test_assemble_and_write_report(tmp_path):
    steps = [{"name": "a", "status": "passed"}, {"name": "b", "status": "no_tests"},
             {"name": "c", "status": "timeout"}, {"name": "d", "status": "not_run"}]
    doc = G.assemble_report(steps, {"torch": "x"}, started_utc="2026-01-01T00:00:00+00:00", wall_s=12.34,
                            budget_s=450.0)
    assert doc["ok"] is False and doc["failed_steps"] == ["c", "d"] and doc["warnings"] == ["b: no tests selected"]
    assert list(doc["steps"]) == ["a", "b", "c", "d"] and doc["wall_s"] == 12.3
    out = tmp_path / "sub" / "r.json"
    G.write_json_atomic(out, doc)
    assert json.loads(out.read_text()) == doc and [p.name for p in out.parent.iterdir()] == ["r.json"]
    assert G.assemble_report(steps[:2], {}, started_utc="", wall_s=1.0, budget_s=1.0)["ok"] is True


def _step(name, code, timeout_s=30.0):
    def judge(rc, out):
        return ("passed" if rc == 0 else "failed"), ([] if rc == 0 else [f"rc {rc}"]), {"chars": len(out)}
    return G.Step(name, [sys.executable, "-c", code], timeout_s, judge)


def test_run_step_records_exit_code_tail_and_limits(monkeypatch):
    env, far = G.step_env(), G.time.monotonic() + 1000
    ok = G.run_step(_step("ok", "print('hello')"), env, far)
    assert ok["status"] == "passed" and ok["rc"] == 0 and ok["tail"] == "hello" and ok["wall_s"] >= 0
    bad = G.run_step(_step("bad", "import sys; print('x' * 10000); sys.exit(3)"), env, far)
    assert bad["status"] == "failed" and bad["rc"] == 3 and len(bad["tail"]) == G.TAIL_CHARS
    late = G.run_step(_step("late", "print(1)"), env, G.time.monotonic() + 5)
    assert late["status"] == "not_run" and late["rc"] is None  # the budget is used up: not started
    monkeypatch.setattr(G, "MIN_STEP_S", 0.5)
    hung = G.run_step(_step("hung", "import time; time.sleep(60)", timeout_s=1.0), env, far)
    assert hung["status"] == "timeout" and hung["wall_s"] < 30


def test_step_env_drops_the_interpreter_switch():
    env = G.step_env({"TRITON_INTERPRET": "1", "HPCFED_KERNEL_BACKEND": "torch", "PATH": "/bin"})
    assert "TRITON_INTERPRET" not in env and "HPCFED_KERNEL_BACKEND" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(G.REPO) and env["HF_HUB_OFFLINE"] == "1"


def test_steps_fit_the_budget_and_the_main_job_config_is_valid(tmp_path):
    steps = G.make_steps(sys.executable, 2, tmp_path)
    assert [s.name for s in steps] == ["gpu_tests", "kernels_cuda", "nccl_allreduce", "main_job", "kernel_bench"]
    assert sum(s.timeout_s for s in steps) <= G.BUDGET_S <= 8 * 60 - 20
    assert "--nproc-per-node=2" in steps[2].argv
    main = steps[3].argv
    words = main[main.index("hpcfed.main") + 1:]
    cfg = load_config(words)  # a typo in a key fails here, not on the GPU machine
    assert cfg.fl.rounds == G.MAIN_ROUNDS and cfg.dist.device == "cuda"
    assert cfg.run_dir == tmp_path / "runs" / "gpu_check"


def test_a_stopped_check_still_writes_what_it_measured(tmp_path, monkeypatch):
    calls = []

    def fake_run_step(step, env, deadline):
        calls.append(step.name)
        if len(calls) == 2:
            raise G.Stopped("signal 15")
        return {"name": step.name, "status": "passed", "problems": [], "wall_s": 1.0}

    monkeypatch.setattr(G, "run_step", fake_run_step)
    monkeypatch.setattr(G, "environment", lambda: {"torch": "x"})
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert G.main([str(tmp_path / "r.json")], count_gpus=lambda: 1) == G.EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, old)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [s["status"] for s in doc["steps"].values()] == ["passed"] + ["interrupted"] * 4
    assert doc["ok"] is False and doc["failed_steps"] == list(doc["steps"])[1:]


def test_refuses_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert G.main([str(out)], count_gpus=lambda: 0) == G.EXIT_NO_GPU
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err and not out.exists()


def test_script_refuses_without_a_gpu(tmp_path):
    """The shell entry point, with every GPU hidden: exit 2, one line, no JSON (also on a GPU machine)."""
    out = tmp_path / "r.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(G.REPO / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in r.stderr
    assert not out.exists()
