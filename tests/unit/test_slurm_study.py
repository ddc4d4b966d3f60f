"""slurm/study.sh and slurm/study_cell.sh: a study submitted as Slurm arrays (sweep cells, then main cells, then
the report), with a stand-in ``sbatch`` that records its arguments; nothing is trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, tiny_model_args

SUBMIT = REPO / "slurm" / "study.sh"
CELL = REPO / "slurm" / "study_cell.sh"


def write_study(tmp_path: Path) -> Path:
    """2 arms x 3 seeds, each arm's lr swept over 2 values at seed 0: sweep cells 0-3, main cells 4-9."""
    spec = {
        "name": "slurm_toy", "out_dir": str(tmp_path / "out"), "ranks": 2,
        "base": tiny_model_args("hf_text") + [f"data.source={tmp_path / 'no_data'}", "fl.rounds=2"],
        "grid": {"method": {"bias": {"peft.method": "bias"}, "lora": {"peft.method": "lora"}}},
        "seeds": [0, 1, 2],
        "lr_sweep": {"values": [1.0e-3, 3.0e-3], "seeds": [0], "rounds": 1},
    }
    path = tmp_path / "slurm_toy.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fake_sbatch(tmp_path: Path) -> tuple[dict, Path]:
    """An ``sbatch`` on PATH that appends its arguments (one line, NUL-separated) and prints a job id."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> "$SBATCH_LOG"; echo >> "$SBATCH_LOG"\n'
                      'n=$(wc -l < "$SBATCH_LOG"); echo "$((100 + n));cluster"\n')
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SBATCH_LOG=str(log), HPCFED_PYTHON=sys.executable)
    return env, log


def calls(log: Path) -> list[list[str]]:
    return [line.strip("\0").split("\0") for line in log.read_text().splitlines() if line]


def test_submits_sweep_then_main_then_report_chained(tmp_path):
    study = write_study(tmp_path)
    env, log = fake_sbatch(tmp_path)
    r = subprocess.run(["bash", str(SUBMIT), str(study), "--parallel", "3", "--time", "00:20:00", "--",
                        "--partition=cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep, main, report = calls(log)
    for c in (sweep, main):  # one task per cell, as many tasks as the study's ranks, user options passed on
        assert c[-2:] == ["slurm/study_cell.sh", str(study)]
        assert {"--ntasks=2", "--time=00:20:00", "--partition=cpu"} <= set(c)
    assert "--array=0-3%3" in sweep and not any(a.startswith("--dependency") for a in sweep)
    assert "--array=4-9%3" in main and "--dependency=afterany:101" in main
    assert "--dependency=afterany:102" in report and "--partition=cpu" in report
    assert report[-1].endswith(f"-m hpcfed.study report {study}")
    assert "lr-sweep cells 0-3 (2 ranks): job 101" in r.stderr and "main cells 4-9 (2 ranks): job 102" in r.stderr


def test_centralized_cells_get_an_array_of_their_own_on_one_rank(tmp_path):
    """A centralized cell runs on 1 rank (spec.cell_ranks), so its cells go to a 1-task array; main arrays wait
    for every sweep array, and the report for every main array."""
    path = write_study(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["grid"]["method"]["central"] = {"peft.method": "bias", "fl.mode": "centralized"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env, log = fake_sbatch(tmp_path)
    r = subprocess.run(["bash", str(SUBMIT), str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep2, sweep1, main2, main1, report = calls(log)
    assert "--ntasks=2" in sweep2 and "--array=0-3%8" in sweep2   # bias, lora: cells 0-3
    assert "--ntasks=1" in sweep1 and "--array=4-5%8" in sweep1   # central: cells 4-5
    for main, n, ix in ((main2, 2, "6-11"), (main1, 1, "12-14")):
        assert f"--ntasks={n}" in main and f"--array={ix}%8" in main
        assert "--dependency=afterany:101:102" in main
    assert "--dependency=afterany:103:104" in report


def test_dry_run_submits_nothing_and_a_bad_study_is_one_line(tmp_path):
    study = write_study(tmp_path)
    env, log = fake_sbatch(tmp_path)
    r = subprocess.run(["bash", str(SUBMIT), str(study), "--dry-run"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and not log.exists()
    assert "sbatch --ntasks=2 --time=01:00:00 --array=0-3%8 slurm/study_cell.sh" in r.stderr

    r = subprocess.run(["bash", str(SUBMIT), str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode != 0 and not log.exists()
    assert r.stderr.strip().splitlines() == [f"error: study file {tmp_path / 'missing.yaml'}: not found"]

    r = subprocess.run(["bash", str(SUBMIT), str(study), "--parallel", "0"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "--parallel 0" in r.stderr and not log.exists()


def test_cell_script_runs_the_array_tasks_cell(tmp_path):
    study = write_study(tmp_path)
    env, _ = fake_sbatch(tmp_path)
    r = subprocess.run(["bash", str(CELL), str(study), "--dry-run"], capture_output=True, text=True,
                       env={**env, "SLURM_ARRAY_TASK_ID": "5"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = [line.split("\t")[:2] for line in r.stdout.splitlines() if "\t" in line]
    assert printed == [["5", "method-bias_seed-1"]]

    r = subprocess.run(["bash", str(CELL), str(study)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "not an array task" in r.stderr


def finish(study, cell, acc: float) -> None:
    """Write the outputs of a finished federated cell (what is_complete reads) without training it."""
    from hpcfed.study.outputs import run_dir

    d = run_dir(study, cell)
    (d / "final").mkdir(parents=True, exist_ok=True)
    (d / "run_info.json").write_text(f'{{"config_hash": "{cell.config_hash()}"}}\n')
    (d / "metrics.jsonl").write_text(f'{{"round": {cell.cfg.fl.rounds}, "test_acc": {acc}}}\n')


def test_resumes_with_finished_sweeps_and_a_finished_swept_main_cell(tmp_path):
    """A main cell run with its arm's picked lr is complete: only the other main cells are submitted, with no
    sweep array and no dependency on one (before 3926746 every swept main cell looked unfinished)."""
    from hpcfed.study.spec import load_study
    from hpcfed.study.sweep import resolve_sweeps

    path = write_study(tmp_path)
    study = load_study(path)
    key = study.sweeps[0].key
    for c in study.cells:
        if c.kind == "sweep":  # the larger lr wins in both arms
            finish(study, c, 0.6 + 50 * c.labels[key])
    resolve_sweeps(study)
    assert set(study.chosen.values()) == {3.0e-3}
    first_main = next(i for i, c in enumerate(study.cells) if c.kind == "main")
    finish(study, study.cells[first_main], 0.8)

    env, log = fake_sbatch(tmp_path)
    r = subprocess.run(["bash", str(SUBMIT), str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    main, report = calls(log)
    assert f"--array={first_main + 1}-9%8" in main and not any(a.startswith("--dependency") for a in main)
    assert "--dependency=afterany:101" in report
    assert "lr-sweep" not in r.stderr
