"""hpcfed.restore: a finished run is rebuilt through its method's own build (FedDAT's dual adapters, FedYolo's
per-task modules and heads), so `python -m hpcfed.evaluate` reproduces the run's last metrics.jsonl row, from
final/peft.safetensors and from the export folder; a method whose metric needs state that is not restored
(FedDAT's personal heads) is refused in one line."""

import json

import pytest

from hpcfed.config import ConfigError, load_config
from hpcfed.evaluate import cli
from hpcfed.main import run

FEDDAT = ["fl.algorithm=feddat", "peft.method=adapter", "peft.adapter_reduction_factor=8"]
RUNS = {
    "feddat": FEDDAT + ["fl.algo.head=shared", "fl.algo.eval_clients=2"],
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
        assert got["algorithm"] == name and got["num_examples"] == 120
        assert got["accuracy"] == last["test_acc"] and got["loss"] == pytest.approx(last["test_loss"], rel=1e-6)
        if name == "fedyolo":  # the mean over its tasks, each on its own test split
            assert got["metrics"]["test_acc_task1"] == last["test_acc_task1"]


def test_feddat_personal_heads_are_refused(toy_text, tmp_path):
    from hpcfed.algorithms import get_algorithm
    from hpcfed.restore import check_evaluable

    cfg = load_config(toy_text + FEDDAT + [f"out_dir={tmp_path}"])  # fl.algo.head=personal: the default
    with pytest.raises(ConfigError, match="fl.algo.head=personal has no global model"):
        check_evaluable(cfg, get_algorithm("feddat").from_config(cfg))
    shared = load_config(toy_text + RUNS["feddat"] + [f"out_dir={tmp_path}"])
    check_evaluable(shared, get_algorithm("feddat").from_config(shared))


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
