"""``logging.report_to`` trackers, each read back with its own library's reader, and the plain per-round line
written when stderr is not a terminal."""

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcfed.callbacks import ProgressBar, RoundLine, human_bytes, round_reporters
from hpcfed.config import ConfigError, load_config
from hpcfed.tracking import flat_config, make_trackers, scalars

ROUNDS = [  # round 1 without evaluation; round 2 evaluated, with a warning and a non-finite value
    {"round": 1, "train_loss": 0.5, "clients": 4, "bytes_up": 1000, "bytes_down": 1000, "round_s": 1.5},
    {"round": 2, "train_loss": 0.75, "clients": 4, "bytes_up": 1000, "bytes_down": 1000, "round_s": 1.25,
     "test_acc": 0.875, "test_balanced_acc": 0.5, "test_macro_f1": 0.4667, "stop_requested": True,
     "test_loss": float("nan"), "warnings": ["single_class"]},
]
EXPECTED = {  # what every tracker must hold: {key: {step: value}}
    "train_loss": {1: 0.5, 2: 0.75}, "test_acc": {2: 0.875}, "test_balanced_acc": {2: 0.5},
    "bytes_up": {1: 1000.0, 2: 1000.0}, "warn_single_class": {2: 1.0}, "stop_requested": {2: 1.0},
}


def _cfg(tmp_path, *report_to):
    return load_config(["name=trk", f"out_dir={tmp_path}", "model.path=null", "model.pretrained=false",
                        "fl.local.lr=0.125", f"logging.report_to=[{','.join(report_to)}]"])


def _feed(cfg, history=()):
    trackers = make_trackers(cfg, cfg.run_dir, history)
    for m in ROUNDS:
        for t in trackers:
            t.on_round_end(None, dict(m))
    for t in trackers:
        t.close()
    return trackers


def test_scalars_and_flat_config(tmp_path):
    s = scalars(ROUNDS[1])
    assert "round" not in s and "test_loss" not in s and "warnings" not in s  # step, NaN, list
    assert s["warn_single_class"] == 1.0 and s["stop_requested"] == 1.0
    flat = flat_config(_cfg(tmp_path, "csv"))
    assert flat["fl.local.lr"] == 0.125 and flat["logging.report_to"] == '["csv"]'
    assert flat["data.max_train_samples"] == "null"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_csv(tmp_path):
    cfg = _cfg(tmp_path, "csv")
    restored = [{"round": 0, "test_acc": 0.25}]
    _feed(cfg, history=restored)
    with open(cfg.run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["test_acc"] == "0.25" and rows[1]["test_acc"] == "" and float(rows[2]["test_acc"]) == 0.875
    assert rows[2]["warnings"] == "single_class" and float(rows[1]["train_loss"]) == 0.5


def test_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = _cfg(tmp_path, "tensorboard")
    _feed(cfg)
    ea = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    ea.Reload()
    for key, want in EXPECTED.items():
        assert {e.step: e.value for e in ea.Scalars(key)} == pytest.approx(want), key
    assert "test_loss" not in ea.Tags()["scalars"]  # NaN skipped
    start = plugin_data_pb2.HParamsPluginData.FromString(
        ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["fl.local.lr"].number_value == 0.125
    assert start.hparams["name"].string_value == "trk"
    assert ea.Tensors("warnings/text_summary")[0].step == 2


def test_mlflow(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = _cfg(tmp_path, "mlflow")
    (tracker,) = _feed(cfg)
    client = MlflowClient(tracking_uri=f"file:{(cfg.run_dir / 'mlruns').resolve()}")
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "trk" and run.info.status == "FINISHED"
    assert run.data.params["fl.local.lr"] == "0.125" and run.data.params["peft.method"] == "bias"
    for key, want in EXPECTED.items():
        assert {m.step: m.value for m in client.get_metric_history(tracker.run_id, key)} == pytest.approx(want)
    assert client.get_experiment_by_name("hpcfed").experiment_id == run.info.experiment_id


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    exe = shutil.which("wandb", path=str(Path(sys.executable).parent)) or shutil.which("wandb")
    if exe is None:
        pytest.skip("the wandb command line is not installed")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    cfg = _cfg(tmp_path, "wandb")
    _feed(cfg)
    (run_file,) = (cfg.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's own reader of its transaction log, one JSON record per line
    r = subprocess.run([exe, "leet", "inspect", "--json", str(run_file)], capture_output=True, text=True,
                       timeout=120, check=True)
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    run = next(rec["run"] for rec in records if rec["type"] == "run")
    assert run["display_name"] == "trk" and run["project"] == "hpcfed"
    assert run["config"]["update"]["fl.local.lr"] == 0.125
    got: dict = {}
    for rec in records:
        if rec["type"] == "history":
            item = rec["history"]["item"]
            for k, v in item.items():
                got.setdefault(k, {})[item["_step"]] = v
    for key, want in EXPECTED.items():
        assert got[key] == pytest.approx(want), key
    assert "test_loss" not in got


@pytest.mark.parametrize("tracker, module", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                             ("mlflow", "mlflow")])
def test_missing_library_is_one_config_error(tmp_path, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=rf"^logging.report_to: '{tracker}' needs .* pip install "
                                          rf"'hpcfed\[{tracker}\]'$"):
        make_trackers(_cfg(tmp_path, "csv", tracker), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()  # checked before any tracker starts


def test_logging_config_checked():
    with pytest.raises(ConfigError, match="logging.report_to"):
        load_config(["logging.report_to=[tensorbored]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config(["logging.report_to=[csv,csv]"])
    base = load_config([])
    assert load_config(["logging.report_to=[csv]"]).hash() == base.hash()  # trackers do not change a run
    assert load_config([]).logging.report_to == []


def test_round_line_format():
    line = RoundLine(20).line({**ROUNDS[1], "round": 3, "bytes_up": 1_050_000, "bytes_down": 1_050_000})
    assert line == ("round 3/20 loss 0.7500 acc 0.8750 bal_acc 0.5000 f1 0.4667 time 1.2 s bytes 2.1 MB "
                    "warnings single_class")
    assert RoundLine(5).line(ROUNDS[0]) == "round 1/5 loss 0.5000 time 1.5 s bytes 2.0 kB"
    assert [human_bytes(n) for n in (999, 1000, 2.5e9, 3e12)] == ["999 B", "1.0 kB", "2.5 GB", "3.0 TB"]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_round_reporters_pick_by_terminal():
    pipe = io.StringIO()
    (line,) = round_reporters(4, stream=pipe, progress=False)
    assert isinstance(line, RoundLine)
    line.on_round_end(None, ROUNDS[0])
    assert pipe.getvalue().endswith(" hpcfed: round 1/4 loss 0.5000 time 1.5 s bytes 2.0 kB\n")
    (bar,) = round_reporters(4, stream=_Tty(), progress=False)
    assert isinstance(bar, ProgressBar)
    bar.close()


def test_main_run_non_tty_lines_and_run_info(toy_text, tmp_path, capsys):
    """A whole run (one round) with stderr captured (not a terminal): one plain line per round, the majority-class rate in
    run_info.json, the CSV tracker beside metrics.jsonl with the same rounds."""
    from hpcfed.main import run
    from hpcfed.runlog import read_metrics

    cfg = load_config(toy_text + ["fl.rounds=1", "fl.cohort_size=1", "fl.local.steps=1", "name=line",
                                  f"out_dir={tmp_path}", "logging.report_to=[csv]", "progress=true"])
    run(cfg)
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if " hpcfed: round " in s]
    assert len(lines) == 1 and " hpcfed: round 1/1 loss " in lines[0] and " bal_acc " in lines[0]
    assert "rounds:" not in err  # no progress bar in a log file
    info = json.loads((cfg.run_dir / "run_info.json").read_text())
    metrics = read_metrics(cfg.run_dir)
    assert 0.5 <= info["test_majority_rate"] <= 1.0
    assert {"test_balanced_acc", "test_macro_f1", "test_acc"} <= set(metrics[-1])
    with open(cfg.run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [m["round"] for m in metrics] == [1]
    assert math.isclose(float(rows[-1]["test_acc"]), metrics[-1]["test_acc"])
