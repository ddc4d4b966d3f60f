"""``python -m hpcfed.study basin``: pairing a study's cells into segments, reusing measured segment files,
the per-group CI and the paired claim by seed, and one-line errors for a bad ``basin`` key. (The barrier itself
is tested in test_basin.py; here segment files are written by hand, so nothing trains or evaluates.)"""

import csv
import json

import pytest
import yaml

from hpcfed import study as st
from hpcfed.study import basin as sb

GRID = {"init": {"pre": {"model.pretrained": True}, "rnd": {"model.pretrained": False}},
        "setting": {"iid": {"data.partition": "iid"}, "dir": {"data.partition": "dirichlet"}}}
CLAIM = {"name": "random init has the higher barrier", "a": {"init": "rnd"}, "b": {"init": "pre"}}


def _study(tmp_path, **basin):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "out_dir": str(tmp_path / "o"), "grid": GRID, "seeds": [0, 1, 2],
                                    "basin": basin}))
    return st.load_study(path)


def test_segments_pair_cells_that_differ_only_in_the_pair_axis(tmp_path):
    s = _study(tmp_path, pair={"setting": ["iid", "dir"]})
    spec = sb.parse_basin(s.basin, s)
    segs = sb.segments(s, spec)
    assert len(segs) == 6  # 2 inits x 3 seeds
    for group, seed, a, b in segs:
        assert a.labels["setting"] == "iid" and b.labels["setting"] == "dir"
        assert a.seed == b.seed == seed and a.labels["init"] == b.labels["init"] == dict(group)["init"]


def test_measured_segments_give_group_cis_and_a_paired_verdict(tmp_path):
    s = _study(tmp_path, pair={"setting": ["iid", "dir"]}, k=3, claims=[CLAIM])
    spec = sb.parse_basin(s.basin, s)
    barrier = {("rnd", 0): 0.9, ("rnd", 1): 1.1, ("rnd", 2): 1.0, ("pre", 0): 0.01, ("pre", 1): 0.02, ("pre", 2): 0.0}
    for group, seed, a, b in sb.segments(s, spec):
        f = s.out_dir / sb.SEGMENT_DIR / f"{a.id}__{b.id}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"barrier": barrier[(dict(group)["init"], seed)], "error_barrier": 0.1,
                                 "distance": 3.0, "accuracies": [0.8, 0.5, 0.7]}))
    md = sb.basin(s, s.basin, log=lambda m: None)
    rows = list(csv.DictReader(open(s.out_dir / "basin.csv")))
    assert len(rows) == 6 and {r["min_acc"] for r in rows} == {"0.5"} and {r["acc_b"] for r in rows} == {"0.7"}
    assert "| init=rnd | 3 | 1 ± 0.25 |" in md  # mean 1.0, sd 0.1, t(0.975, 2) * 0.1 / sqrt(3) = 0.248
    line = next(l for l in md.splitlines() if l.startswith("| random init has the higher barrier"))
    assert "| 3 | +0.99 |" in line and line.endswith("**supported** |")


def test_unfinished_cells_are_waited_for_not_measured(tmp_path):
    s = _study(tmp_path, pair={"setting": ["iid", "dir"]})
    said = []
    assert sb.run_segments(s, sb.parse_basin(s.basin, s), log=said.append) == []
    assert len(said) == 6 and all("waiting for" in m for m in said)



def test_cells_without_weights_are_named_not_measured(tmp_path):
    """Cells taken from raw result files (reuse_from) are complete but keep no final/peft.safetensors: the basin
    step names them in one line each and starts no measurement."""
    s = _study(tmp_path, pair={"setting": ["iid", "dir"]})
    for cell in s.cells:
        d = st.run_dir(s, cell)
        d.mkdir(parents=True)
        (d / "run_info.json").write_text(json.dumps({"config_hash": cell.config_hash()}))
        (d / "metrics.jsonl").write_text(json.dumps({"round": cell.cfg.fl.rounds, "test_acc": 0.7}) + "\n")
        (d / st.RECORD_FILE).write_text(json.dumps({"status": "done"}))
    assert all(st.is_complete(s, c) for c in s.cells)
    said = []
    assert sb.run_segments(s, sb.parse_basin(s.basin, s), log=said.append) == []
    assert len(said) == 6 and all("no final/peft.safetensors in" in m and "\n" not in m for m in said)
    assert not (s.out_dir / sb.SEGMENT_DIR).exists()


def test_swept_arms_are_measured_once_their_sweep_has_picked(tmp_path):
    """A random-init arm with an lr sweep (chen_minilm_v2): its main cells are blocked until the sweep resolves; the
    basin step resolves it as `run` does, so finished main cells at the picked lr are paired, not waited for."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "out_dir": str(tmp_path / "o"), "grid": GRID, "seeds": [0],
                                    "base": ["fl.rounds=2"],
                                    "lr_sweep": {"arms": [{"init": "rnd"}], "values": [0.1, 0.3], "seeds": [0]},
                                    "basin": {"pair": {"setting": ["iid", "dir"]}}}))
    s = st.load_study(path)
    for cell in s.cells:  # sweep cells: lr 0.3 wins; main cells of the swept arm then run at 0.3
        d = st.run_dir(s, cell)
        d.mkdir(parents=True)
        acc = 0.7 if "lr-0.3" in cell.id else 0.6
        (d / "metrics.jsonl").write_text(json.dumps({"round": 2, "test_acc": acc}) + "\n")
        (d / st.RECORD_FILE).write_text(json.dumps({"status": "done"}))
        if cell.kind == "sweep":
            (d / "run_info.json").write_text(json.dumps({"config_hash": cell.config_hash()}))
    st.resolve_sweeps(s)
    for cell in s.main_cells:  # each main cell's recorded hash is that of its config at the pick
        (st.run_dir(s, cell) / "run_info.json").write_text(json.dumps({"config_hash": cell.config_hash()}))
    fresh = st.load_study(path)  # as `python -m hpcfed.study basin` loads it: sweeps not yet resolved
    said = []
    sb.run_segments(fresh, sb.parse_basin(fresh.basin, fresh), log=said.append)
    assert sum("waiting for" in m for m in said) == 1  # the swept arm's segment, before the fix: forever
    said.clear()
    sb.basin(fresh, fresh.basin, log=said.append)
    assert not any("waiting for" in m for m in said)
    assert sum("no final/peft.safetensors" in m for m in said) == 2  # both segments reached the weights check


@pytest.mark.parametrize("basin, match", [
    ({"pair": {"mode": ["a", "b"]}}, r"basin.pair: 'mode' is not an axis"),
    ({"pair": {"setting": ["iid", "iid"]}}, r"basin.pair.setting must list two different labels"),
    ({"pair": {"setting": ["iid", "x"]}}, r"basin.pair.setting: no cell has label 'x'"),
    ({"pair": {"setting": ["iid", "dir"]}, "k": 1}, r"basin.k=1 must be an integer >= 2"),
    ({"pair": {"setting": ["iid", "dir"]}, "claims": [{**CLAIM, "metric": "acc"}]}, r"claims\[0\].metric='acc'"),
    ({"pair": {"setting": ["iid", "dir"]}, "kk": 1}, r"basin: unknown key 'kk'"),
])
def test_bad_basin_key_is_one_line(tmp_path, basin, match):
    s = _study(tmp_path, **basin)
    with pytest.raises(st.StudyError, match=match):
        sb.parse_basin(s.basin, s)
