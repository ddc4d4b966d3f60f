"""hpcfed.restore: a finished run is rebuilt through its method's own build (FedDAT's dual adapters, FedYolo's
per-task modules and heads), so `python -m hpcfed.evaluate` reproduces the run's last metrics.jsonl row, from
final/peft.safetensors and from the export folder; FedDAT with personal heads reads each client's state from the
run's store as of its last round (Algorithm.on_restore)."""

import json

import pytest

from hpcfed.config import ConfigError, load_config
from hpcfed.evaluate import cli
from hpcfed.main import run

FEDDAT = ["fl.algorithm=feddat", "peft.method=adapter", "peft.adapter_reduction_factor=8"]
RUNS = {
    "feddat": FEDDAT + ["fl.algo.head=shared", "fl.algo.eval_clients=2"],
    "feddat_personal": FEDDAT + ["fl.algo.eval_clients=2"],  # the default: personal heads
    "fedyolo": ["fl.algorithm=fedyolo", "peft.method=lora"],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_evaluate_reproduces_the_runs_final_metrics(toy_text, tmp_path, capsys, name):
    cfg = load_config(toy_text + RUNS[name] + ["fl.local.lr=0.01", "dist.num_threads=1", f"out_dir={tmp_path}",
                                              f"name={name}"])
    run(cfg)
    last = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    # the run's own file, and its library-format export (FedYolo: one peft adapter folder per task)
    for extra in ([], [f"export={cfg.run_dir / 'final' / 'export'}"]):
        assert cli([f"run_dir={cfg.run_dir}", "dist.device=cpu", *extra]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["algorithm"] == name.split("_")[0] and got["num_examples"] == 120
        assert got["accuracy"] == last["test_acc"] and got["loss"] == pytest.approx(last["test_loss"], rel=1e-6)
        if name == "fedyolo":  # the mean over its tasks, each on its own test split
            assert got["metrics"]["test_acc_task1"] == last["test_acc_task1"]
        if name.startswith("feddat"):  # and the personalised metrics, from the run's client store
            assert got["metrics"]["as_local_acc"] == last["as_local_acc"]


def test_restore_errors_name_the_folder_or_file(toy_text, tmp_path):
    from hpcfed.peft import LayoutError
    from hpcfed.restore import restore_run

    with pytest.raises(ConfigError, match="no such folder"):
        restore_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no config.yaml"):
        restore_run(tmp_path)
    cfg = load_config(toy_text + [f"out_dir={tmp_path}", "name=r"])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(cfg.to_yaml())
    with pytest.raises(LayoutError, match="final/peft.safetensors: no such file"):
        restore_run(cfg.run_dir)
    with pytest.raises(ConfigError, match="not both"):
        restore_run(cfg.run_dir, weights="a", export="b")
