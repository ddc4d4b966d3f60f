"""``python -m hpcfed.report``: accuracy and loss against round and cumulative bytes, one line per run."""

import json
import subprocess
import sys

import pytest

from hpcfed.report import curves, main
from tests.conftest import REPO


def _write_run(run_dir, rounds, bytes_per_round, acc0):
    run_dir.mkdir(parents=True)
    lines = [{"round": 0, "test_acc": acc0, "test_loss": 0.7}]
    for r in range(1, rounds + 1):
        m = {"round": r, "train_loss": 1.0 / r, "bytes_up": bytes_per_round, "bytes_down": bytes_per_round}
        if r % 2 == 0 or r == rounds:
            m.update(test_acc=acc0 + 0.05 * r, test_loss=0.7 / r)
        lines.append(m)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"torn')


def test_curves_cumulative_bytes_and_gaps(tmp_path):
    _write_run(tmp_path / "a", 3, 100, 0.5)
    from hpcfed.runlog import read_metrics

    c = curves(read_metrics(tmp_path / "a"))
    assert c["round"] == [0, 1, 2, 3]
    assert c["bytes"] == [0.0, 200.0, 400.0, 600.0]  # bytes_up + bytes_down, summed over rounds
    assert c["test_acc"] == [0.5, None, pytest.approx(0.6), pytest.approx(0.65)]
    assert c["train_loss"][0] is None and c["train_loss"][3] == pytest.approx(1 / 3)


def test_two_runs_make_a_png(tmp_path, capsys):
    import matplotlib.image

    _write_run(tmp_path / "runs" / "fedavg", 4, 1000, 0.5)
    _write_run(tmp_path / "runs" / "fedprox", 6, 400, 0.55)
    out = tmp_path / "cmp.png"
    assert main([str(tmp_path / "runs" / "fedavg"), str(tmp_path / "runs" / "fedprox"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600
    assert img[..., :3].std() > 0.05  # something was drawn

    # one run: the default output goes into the run folder
    assert main([str(tmp_path / "runs" / "fedavg")]) == 0
    assert (tmp_path / "runs" / "fedavg" / "report.png").stat().st_size > 10_000


def test_folder_without_metrics_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    _write_run(tmp_path / "ok", 2, 10, 0.5)
    r = subprocess.run([sys.executable, "-m", "hpcfed.report", str(tmp_path / "ok"), str(tmp_path / "empty"),
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'empty'}: no metrics.jsonl with metrics "
                                              "(is it a run folder?)"]
    assert not (tmp_path / "x.png").exists()
