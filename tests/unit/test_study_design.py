"""hpcfed.study with seeds, arms, claims and learning-rate sweeps: parsing and its one-line errors, --cells /
--only selection, and a whole study of fake cells (a tiny script writes each run's files, no training):
sweep -> pick -> main cells -> per-arm CIs -> paired claims and verdicts, a missing seed, resumption."""

import csv
import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

from hpcfed import study as st


def write_study(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


GRID = {"method": {"lora": {"peft.method": "lora"}, "bias": {"peft.method": "bias"}}}


# -- parsing (no runs) ----------------------------------------------------------------------------------------

def test_seeds_axis_repeats_every_cell_and_defines_arms(tmp_path):
    s = st.load_study(write_study(tmp_path / "s.yaml", grid=GRID, cells=[{"fl.mode": "centralized"}], seeds=2,
                                  seed_keys=["seed", "data.seed"]))
    assert s.seeds == [0, 1] and s.axes == ["method", "fl.mode", "seed"]
    assert [c.id for c in s.cells] == ["method-lora_seed-0", "method-lora_seed-1", "method-bias_seed-0",
                                       "method-bias_seed-1", "mode-centralized_seed-0", "mode-centralized_seed-1"]
    assert list(s.arms) == ["method-lora", "method-bias", "mode-centralized"]
    assert [c.arm for c in s.cells] == ["method-lora"] * 2 + ["method-bias"] * 2 + ["mode-centralized"] * 2
    assert [(c.seed, c.cfg.seed, c.cfg.data.seed) for c in s.cells[:2]] == [(0, 0, 0), (1, 1, 1)]
    assert s.metrics == ("final_test_acc", "best_test_acc") and not s.claims and not s.sweeps


def test_a_seed_in_the_grid_or_cells_also_makes_arms(tmp_path):
    # the older way (cifar10_init.yaml): a seed as an ordinary key; cells differing only in it form one arm
    s = st.load_study(write_study(tmp_path / "s.yaml", grid={"peft.method": ["bias"], "fl.mode": ["federated"]},
                                  cells=[{"fl.mode": "federated", "seed": 1, "peft.method": "bias"}]))
    assert [c.id for c in s.cells] == ["method-bias_mode-federated", "mode-federated_seed-1_method-bias"]
    assert list(s.arms) == ["method-bias_mode-federated"] and [c.seed for c in s.cells] == [0, 1]


def test_claims_and_sweeps_name_arms_by_id_or_labels(tmp_path):
    s = st.load_study(write_study(
        tmp_path / "s.yaml", grid={**GRID, "data.alpha": [0.1, 1.0]}, seeds=[3, 4, 5], metrics=["best_test_acc"],
        lr_sweep={"values": [1.0e-3, 1.0e-2], "rounds": 2, "arms": [{"method": "lora"}]},
        claims=[{"name": "lora>bias", "a": {"method": "lora", "data.alpha": 0.1}, "b": "method-bias_alpha-0.1"},
                {"a": "method-lora_alpha-1.0", "b": "method-bias_alpha-1.0", "metric": "final test_acc",
                 "direction": "less"}]))
    assert s.claims == [st.Claim("lora>bias", "method-lora_alpha-0.1", "method-bias_alpha-0.1", "final_test_acc",
                                 "greater"),
                        st.Claim("method-lora_alpha-1.0 vs method-bias_alpha-1.0", "method-lora_alpha-1.0",
                                 "method-bias_alpha-1.0", "final_test_acc", "less")]
    assert s.metrics == ("best_test_acc", "final_test_acc")  # a claim's metric is always summarised
    (sw,) = s.sweeps
    assert (sw.key, sw.values, sw.seeds, sw.rounds, sw.arms) == (
        "fl.local.lr", (1e-3, 1e-2), (3,), 2, ("method-lora_alpha-0.1", "method-lora_alpha-1.0"))
    sweep = [c for c in s.cells if c.kind == "sweep"]
    assert [c.id for c in sweep] == [
        "sweep-method-lora_alpha-0.1_lr-0.001_seed-3", "sweep-method-lora_alpha-0.1_lr-0.01_seed-3",
        "sweep-method-lora_alpha-1.0_lr-0.001_seed-3", "sweep-method-lora_alpha-1.0_lr-0.01_seed-3"]
    assert s.cells[:4] == sweep  # sweep cells come first (lowest --cells indices)
    assert [(c.cfg.fl.local.lr, c.cfg.fl.rounds, c.cfg.seed) for c in sweep[:2]] == [(1e-3, 2, 3), (1e-2, 2, 3)]
    lora = [c for c in s.main_cells if c.arm == "method-lora_alpha-0.1"]
    assert all(c.blocked and c.chosen == {"fl.local.lr": 1e-3} for c in lora)
    assert not any(c.blocked for c in s.main_cells if c.arm.startswith("method-bias"))
    assert "fl.local.lr" in s.axes


@pytest.mark.parametrize("spec, match", [
    ({"seeds": [0, 0]}, "seeds: a seed is listed twice"),
    ({"seeds": [-1]}, "seeds: -1 is not an integer seed"),
    ({"seeds": 0}, "seeds=0 must be a count"),
    ({"seeds": [0, 1], "base": {"seed": 3}}, "seeds: 'seed' is also set in base, grid or cells"),
    ({"seed_keys": "seed", "seeds": 3}, "seed_keys must be a non-empty list"),
    ({"metrics": ["accuracy"]}, "metrics[0]='accuracy' is not a metric; choose one of: final_test_acc"),
    ({"claims": [{"a": "method-lora", "b": "method-nope"}]},
     "claims[0].b: no arm 'method-nope'; arms: method-lora"),
    ({"claims": [{"a": "method-lora"}]}, "claims[0].b: missing"),
    ({"claims": [{"a": "method-lora", "b": "method-lora"}]}, "claims[0]: a and b are the same arm"),
    ({"claims": [{"a": "method-lora", "b": "method-bias", "direction": "up"}]},
     "claims[0].direction='up' is not valid; choose one of: greater, less"),
    ({"claims": [{"a": "method-lora", "b": "method-bias", "metric": "acc"}]}, "claims[0].metric='acc' is not a metric"),
    ({"claims": [{"a": "method-lora", "b": "method-bias", "by": 1}]}, "claims[0]: unknown key 'by'"),
    ({"claims": [{"a": {"fl.mode": "federated"}, "b": "method-bias"}]},
     "claims[0].a: {'fl.mode': 'federated'} matches no arm"),
    ({"lr_sweep": {"values": [0.1]}}, "lr_sweep.values must be a list of at least 2 distinct values"),
    ({"lr_sweep": {"values": [0.1, 0.2], "goal": "best"}}, "lr_sweep.goal='best' is not valid"),
    ({"lr_sweep": {"values": [0.1, 0.2], "rounds": 0}}, "lr_sweep.rounds=0 must be an integer >= 1"),
    ({"lr_sweep": {"values": [0.1, 0.2], "step": 1}}, "lr_sweep: unknown key 'step'"),
    ({"lr_sweep": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4], "arms": ["method-bias"]}]},
     "lr_sweep[1].arms: arm method-bias is already swept by lr_sweep[0]"),
    ({"lr_sweep": {"key": "fl.local.lrr", "values": [0.1, 0.2]}}, "unknown key 'fl.local.lrr'"),
])
def test_bad_design_keys_fail_fast_with_one_line(tmp_path, capsys, spec, match):
    out = tmp_path / "out"
    path = write_study(tmp_path / "s.yaml", out_dir=str(out), grid=GRID, **spec)
    assert st.cli(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err, err
    assert not out.exists()


def test_claim_matching_two_arms_is_refused(tmp_path):
    with pytest.raises(st.StudyError, match=r"claims\[0\].a: \{'method': 'lora'\} matches 2 arms"):
        st.load_study(write_study(tmp_path / "s.yaml", grid={**GRID, "data.alpha": [0.1, 1.0]},
                                  claims=[{"a": {"method": "lora"}, "b": "method-bias_alpha-0.1"}]))


# -- selecting cells ------------------------------------------------------------------------------------------

def test_cells_and_only_select_by_index_arm_id_and_pattern(tmp_path):
    s = st.load_study(write_study(tmp_path / "s.yaml", grid=GRID, seeds=3))
    assert st.parse_cells("4", 6) == [4] and st.parse_cells("3-5,0,4", 6) == [0, 3, 4, 5]
    for bad, match in (("5-3", "increasing"), ("x", "not an index"), ("-1", "not an index"),
                       ("6", "out of range; this study's cells are 0-5")):
        with pytest.raises(st.StudyError, match=match):
            st.parse_cells(bad, 6)
    ids = lambda cells: [c.id for c in cells]  # noqa: E731
    assert ids(st.select_cells(s, "1-2")) == ["method-lora_seed-1", "method-lora_seed-2"]
    assert ids(st.select_cells(s, only=["method-bias"])) == [f"method-bias_seed-{i}" for i in range(3)]
    assert ids(st.select_cells(s, only=["*_seed-0,method-lora_seed-2"])) == [
        "method-lora_seed-0", "method-lora_seed-2", "method-bias_seed-0"]
    assert ids(st.select_cells(s, "0-3", ["method-bias"])) == ["method-bias_seed-0"]
    with pytest.raises(st.StudyError, match="--only 'nope' matches no cell or arm"):
        st.select_cells(s, only=["nope"])


# -- a whole study of fake cells ------------------------------------------------------------------------------

FAKE = """
import json, os, sys
d, cfg_hash, rounds, acc = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if acc == "fail":
    print("RuntimeError: loss is NaN", file=sys.stderr); sys.exit(1)
os.makedirs(os.path.join(d, "final"), exist_ok=True)
json.dump({"config_hash": cfg_hash, "trainable_params": 10}, open(os.path.join(d, "run_info.json"), "w"))
with open(os.path.join(d, "metrics.jsonl"), "w") as fh:
    for r in range(1, rounds + 1):
        m = {"round": r, "bytes_up": 1, "bytes_down": 1, "test_acc": float(acc) - 0.1 * (rounds - r)}
        fh.write(json.dumps(m) + "\\n")
"""

BASE_ACC = {"method-lora": 0.80, "method-bias": 0.70, "method-head": 0.70}
SEED_NOISE = {0: 0.0, 1: 0.01, 2: -0.01, 3: 0.004}


def fake_acc(cell):
    """lora: best at lr 1e-2 (+0.05); bias: lora - 0.1 +- noise; head: bias + per-seed noise (no difference)."""
    lr = cell.cfg.fl.local.lr
    if cell.arm == "method-bias" and cell.seed == 3:
        return "fail"
    acc = BASE_ACC[cell.arm] + SEED_NOISE[cell.seed] + (0.05 if lr == 1e-2 else 0.0)
    if cell.arm == "method-head":
        acc += {0: 0.02, 1: -0.03, 2: 0.015, 3: -0.004}[cell.seed]
    return repr(acc)


@pytest.fixture
def fake_cells(monkeypatch):
    monkeypatch.setattr(st, "cell_command", lambda study, cell: [
        sys.executable, "-c", FAKE, str(st.run_dir(study, cell)), cell.cfg.hash(), str(cell.cfg.fl.rounds),
        fake_acc(cell)])


def attempts(out: Path) -> dict[str, int]:
    """Cell id -> how many times it was started (the study appends a '=== ' line per attempt to its log)."""
    return {p.parent.name: p.read_text().count("=== ") for p in sorted(out.glob(f"*/{st.LOG_FILE}"))}


def test_fake_study_sweep_arms_claims_and_verdicts(tmp_path, fake_cells, caplog):
    out = tmp_path / "o"
    path = write_study(
        tmp_path / "s.yaml", name="fake", out_dir=str(out), base={"fl.rounds": 3},
        grid={"method": {"lora": {"peft.method": "lora"}, "bias": {"peft.method": "bias"},
                         "head": {"peft.method": "head"}}},
        seeds=[0, 1, 2, 3],
        lr_sweep={"values": [1.0e-3, 1.0e-2, 3.0e-2], "seeds": [0], "rounds": 2, "arms": ["method-lora"]},
        claims=[{"name": "lora beats bias", "a": "method-lora", "b": {"method": "bias"}},
                {"name": "head below bias", "a": "method-head", "b": "method-bias", "direction": "less"},
                {"name": "bias beats lora", "a": "method-bias", "b": "method-lora"}])
    # as a Slurm array task might: a main cell of the swept arm before its sweep has run is not started
    assert st.cli(["run", str(path), "--only", "method-lora_seed-0"]) == 1
    assert attempts(out) == {}
    assert "lr sweep of arm method-lora is not resolved: waiting for sweep cells" in json.loads(
        (out / "method-lora_seed-0" / st.RECORD_FILE).read_text())["error"]
    # the sweep cells (indices 0-2), then the rest
    assert st.cli(["run", str(path), "--cells", "0-2"]) == 0
    assert list(attempts(out)) == [f"sweep-method-lora_lr-{v}_seed-0" for v in ("0.001", "0.01", "0.03")]
    assert st.cli(["run", str(path)]) == 1  # bias seed 3 fails
    assert set(attempts(out).values()) == {1} and len(attempts(out)) == 3 + 12
    rec = json.loads((out / st.SWEEP_FILE).read_text())["arms"]["method-lora"]
    assert rec["chosen"] == 1e-2 and rec["key"] == "fl.local.lr" and rec["seeds"] == [0] and rec["rounds"] == 2
    assert [(x["value"], round(x["mean"], 4), x["n"]) for x in rec["scores"]] == [
        (1e-3, 0.8, 1), (1e-2, 0.85, 1), (3e-2, 0.8, 1)]
    # the main lora cells ran with the picked lr (fake_acc adds 0.05 for lr 1e-2 only)
    s = st.load_study(path)
    st.resolve_sweeps(s)
    cell = next(c for c in s.cells if c.id == "method-lora_seed-1")
    assert not cell.blocked and cell.cfg.fl.local.lr == 1e-2 and "fl.local.lr=0.01" in st.cell_argv(s, cell)

    arms = {(r["arm"], r["metric"]): r for r in read_csv(out / "arms.csv")}
    lo = arms[("method-lora", "final_test_acc")]
    assert (lo["n"], lo["seeds"], lo["missing_seeds"], lo["fl.local.lr"]) == ("4", "0 1 2 3", "", "0.01")
    assert float(lo["mean"]) == pytest.approx(0.851)
    bi = arms[("method-bias", "final_test_acc")]
    assert (bi["n"], bi["missing_seeds"]) == ("3", "3")
    # bias 0.70, 0.71, 0.69: mean 0.70, sd 0.01, half-width 4.302653 * 0.01 / sqrt(3)
    assert float(bi["ci_high"]) - float(bi["mean"]) == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, abs=1e-5)

    claims = {r["claim"]: r for r in read_csv(out / "claims.csv")}
    c1 = claims["lora beats bias"]
    assert (c1["n"], c1["seeds"], c1["missing_a"], c1["missing_b"]) == ("3", "0 1 2", "", "3")
    assert float(c1["mean_diff"]) == pytest.approx(0.15) and c1["verdict"] == "supported"
    assert claims["bias beats lora"]["verdict"] == "refuted"
    assert claims["head below bias"]["verdict"] == "inconclusive"  # diffs +0.02, -0.03, +0.015
    md = (out / "results.md").read_text()
    for text in ("## Arms: mean ± 95% CI over seeds", "## Claims: paired differences", "**supported**",
                 "**refuted**", "**inconclusive**", "b: 3", "## Learning-rate sweeps", "**0.01**", "0.03: 0.8 (1)"):
        assert text in md, text

    # resumption: nothing runs again and the pick is reused from lr_sweep.json
    caplog.set_level(logging.INFO, logger="hpcfed.study")
    assert st.cli(["run", str(path), "--only", "method-lora"]) == 0
    assert set(attempts(out).values()) == {1}
    assert sum("sweep is resolved" in r.getMessage() for r in caplog.records) == 3
    assert json.loads((out / st.SWEEP_FILE).read_text())["arms"]["method-lora"] == rec
    # with two seeds every claim is an anecdote
    assert st.cli(["report", str(path), "seeds=[0, 1]"]) == 0
    assert {r["verdict"] for r in read_csv(out / "claims.csv")} == {"anecdote (n<3)"}


def test_a_cell_whose_config_changed_reruns_with_the_earlier_run_set_aside(tmp_path, fake_cells, caplog):
    out = tmp_path / "o"
    spec = dict(name="fake", out_dir=str(out), base={"fl.rounds": 2}, grid={"method": {"lora": {"peft.method": "lora"}}},
                seeds=[0])
    path = write_study(tmp_path / "s.yaml", **spec)
    assert st.cli(["run", str(path)]) == 0
    cell_dir = out / "method-lora_seed-0"
    old_hash = json.loads((cell_dir / "run_info.json").read_text())["config_hash"]
    (cell_dir / "checkpoints").mkdir()  # what would refuse to resume under the new config
    (cell_dir / "checkpoints" / "round-000002.safetensors").write_bytes(b"old")
    caplog.set_level(logging.INFO, logger="hpcfed.study")
    write_study(path, **{**spec, "base": {"fl.rounds": 2, "fl.local.lr": 0.05}})  # same cell id, new config
    assert st.cli(["run", str(path)]) == 0
    new_hash = json.loads((cell_dir / "run_info.json").read_text())["config_hash"]
    aside = out / st.SUPERSEDED_DIR / f"method-lora_seed-0-{old_hash}"
    assert new_hash != old_hash and (aside / "checkpoints" / "round-000002.safetensors").read_bytes() == b"old"
    assert json.loads((aside / "run_info.json").read_text())["config_hash"] == old_hash
    assert not (cell_dir / "checkpoints").exists() and attempts(out) == {"method-lora_seed-0": 1}
    assert sum("its config changed" in r.getMessage() for r in caplog.records) == 1
    assert st.cli(["run", str(path)]) == 0  # unchanged now: skipped, nothing more set aside
    assert len(list((out / st.SUPERSEDED_DIR).iterdir())) == 1 and attempts(out) == {"method-lora_seed-0": 1}


def test_list_prints_indices_for_slurm_arrays(tmp_path, capsys):
    path = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), grid=GRID, seeds=2,
                       lr_sweep={"values": [0.1, 0.2], "arms": ["method-bias"]})
    assert st.cli(["list", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# s: 6 cells, 2 arms; main cells 2-5; lr sweep cells 0-1 (run them first)"
    assert lines[1] == "0\tsweep\tsweep-method-bias_lr-0.1_seed-0\tpending"
    assert lines[-1] == "5\tmain\tmethod-bias_seed-1\tpending\t(waiting for its arm's lr sweep)"


def _finished(s, cell, acc=None):
    """Write a finished run's files for ``cell`` (acc None: a failed attempt with the cell's current config)."""
    d = st.run_dir(s, cell)
    d.mkdir(parents=True, exist_ok=True)
    if acc is None:
        (d / st.RECORD_FILE).write_text(json.dumps({"status": "failed", "config_hash": cell.config_hash()}))
        return
    (d / "final").mkdir()
    (d / "run_info.json").write_text(json.dumps({"config_hash": cell.config_hash()}))
    (d / "metrics.jsonl").write_text(json.dumps({"round": cell.cfg.fl.rounds, "test_acc": acc}) + "\n")


def test_sweep_pick_rules(tmp_path):
    path = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), grid=GRID, seeds=[0, 1], lr_sweep=[
        {"values": [0.1, 0.2, 0.3], "seeds": [0, 1], "arms": ["method-lora"]},
        {"values": [0.1, 0.2], "goal": "min", "arms": ["method-bias"]}])
    s = st.load_study(path)
    cells = {c.id: c for c in s.cells if c.kind == "sweep"}
    lora = [f"sweep-method-lora_lr-{v}_seed-{k}" for v in (0.1, 0.2, 0.3) for k in (0, 1)]
    # a failure recorded by an older config (no hash) does not finish a sweep cell
    for cid in lora:
        d = st.run_dir(s, cells[cid])
        d.mkdir(parents=True)
        (d / st.RECORD_FILE).write_text(json.dumps({"status": "failed"}))
    st.resolve_sweeps(s)
    assert not s.chosen and all(c.blocked for c in s.main_cells)
    # lora: 0.1 -> 0.6, 0.8 (mean 0.7); 0.2 -> one failed seed and 0.7; 0.3 -> both failed: a tie goes to 0.1
    for cid, acc in zip(lora, (0.6, 0.8, None, 0.7, None, None)):
        _finished(s, cells[cid], acc)
    _finished(s, cells["sweep-method-bias_lr-0.1_seed-0"], 0.9)
    st.resolve_sweeps(s)
    assert s.chosen == {"method-lora": 0.1}
    assert [(x["value"], x["n"], x["failed"]) for x in s.sweep_entries["method-lora"]["scores"]] == [
        (0.1, 2, []), (0.2, 1, [lora[2]]), (0.3, 0, lora[4:])]
    assert [c.cfg.fl.local.lr for c in s.main_cells if c.arm == "method-lora"] == [0.1, 0.1]
    assert all("waiting for sweep cells sweep-method-bias_lr-0.2_seed-0" in c.blocked
               for c in s.main_cells if c.arm == "method-bias")
    _finished(s, cells["sweep-method-bias_lr-0.2_seed-0"], 0.5)
    st.resolve_sweeps(s)
    assert s.chosen == {"method-lora": 0.1, "method-bias": 0.2}  # goal: min
    assert json.loads((s.out_dir / st.SWEEP_FILE).read_text())["arms"]["method-bias"]["chosen"] == 0.2


def test_final_key_metrics_name_any_reported_metric():
    """``final_<key>``: the last value of a metric the runs report (e.g. FedDAT's personalised accuracy); it gets
    a table column of its own; anything else must be one of the built-in columns."""
    from hpcfed.study import design

    assert design.metric_name("final personal_local_acc", "m") == "final_personal_local_acc"
    assert design.extra_metric_columns(("final_test_acc", "final_dat_local_acc")) == ["final_dat_local_acc"]
    with pytest.raises(st.StudyError, match="final_<any key of metrics.jsonl>"):
        design.metric_name("dat_local_acc", "m")


def test_rounds_to_acc_metric_names_its_own_target():
    """``rounds_to_acc_<x>``: rounds to a target of its own (one study asks 0.75 of one model, 0.88 of another);
    the target must be an accuracy in (0, 1] written as a fraction."""
    from hpcfed.study import design

    assert design.metric_name("rounds_to_acc_0.88", "m") == "rounds_to_acc_0.88"
    assert design.rounds_to_acc_target("rounds_to_acc_0.88") == 0.88
    assert design.rounds_to_acc_target("rounds_to_acc_1") == 1.0
    assert design.rounds_to_acc_target("rounds_to_target") is None
    assert design.extra_metric_columns(("rounds_to_target", "rounds_to_acc_0.9")) == ["rounds_to_acc_0.9"]
    for bad in ("rounds_to_acc_88", "rounds_to_acc_1.5", "rounds_to_acc_0", "rounds_to_acc_0.0", "rounds_to_acc_"):
        with pytest.raises(st.StudyError, match=r"accuracy in \(0, 1\]"):
            design.metric_name(bad, "claims[0].metric")


def test_difference_of_differences_claim(tmp_path):
    """``a_minus`` / ``b_minus``: (a − a_minus) − (b − b_minus) paired by seed, e.g. "pre-training closes the
    federated-vs-centralized gap"; an arm used twice in one claim is refused."""
    grid = {"init": {"pre": {"model.pretrained": True}, "rnd": {"model.pretrained": False}},
            "mode": {"fed": {"fl.mode": "federated"}, "cen": {"fl.mode": "centralized"}}}
    claim = {"name": "gap closes", "a": {"init": "rnd", "mode": "cen"}, "a_minus": {"init": "rnd", "mode": "fed"},
             "b": {"init": "pre", "mode": "cen"}, "b_minus": {"init": "pre", "mode": "fed"}}
    path = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), grid=grid, seeds=[0, 1, 2],
                       claims=[claim])
    s = st.load_study(path)
    (cl,) = s.claims
    assert (cl.a, cl.a_minus, cl.b, cl.b_minus) == ("init-rnd_mode-cen", "init-rnd_mode-fed", "init-pre_mode-cen",
                                                    "init-pre_mode-fed")
    # random init: gap 0.20, 0.22, 0.18 (seed 0, 1, 2); pre-trained: gap 0.05, 0.04, 0.06 -> contrast 0.15, 0.18, 0.12
    acc = {("rnd", "cen"): (0.7, 0.72, 0.68), ("rnd", "fed"): (0.5, 0.5, 0.5),
           ("pre", "cen"): (0.9, 0.9, 0.9), ("pre", "fed"): (0.85, 0.86, 0.84)}
    for c in s.main_cells:
        init, mode = (part.split("-")[1] for part in c.arm.split("_"))
        _finished(s, c, acc[(init, mode)][c.seed])
    assert st.cli(["report", str(path)]) == 0
    (row,) = read_csv(tmp_path / "o" / "claims.csv")
    assert row["a"] == "init-rnd_mode-cen − init-rnd_mode-fed" and row["n"] == "3"
    assert float(row["mean_diff"]) == pytest.approx(0.15) and row["verdict"] == "supported"
    with pytest.raises(st.StudyError, match=r"claims\[0\]: an arm appears twice"):
        st.load_study(write_study(tmp_path / "t.yaml", grid=grid, claims=[{**claim, "b_minus": claim["a"]}]))
