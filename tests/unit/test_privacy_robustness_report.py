"""benchmarks/privacy_robustness_report.py on small synthetic study folders (the layout hpcfed.study writes)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from benchmarks import privacy_robustness_report as prr
from hpcfed.fl.dp import epsilon


def _write_study(root: Path, cols: list[str], rows: list[dict], configs: dict[str, str],
                 metrics: dict[str, list[dict]]) -> Path:
    root.mkdir(parents=True)
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    for cell, text in configs.items():
        (root / cell).mkdir()
        (root / cell / "config.yaml").write_text(text)
        (root / cell / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics.get(cell, [])) + "\n")
    return root


def _dp_config(method: str, z: float) -> str:
    return (f"peft:\n  method: {method}\ndata:\n  num_clients: 500\nfl:\n  rounds: 12\n  cohort_size: 50\n"
            f"  sampling: poisson\n  dp:\n    accountant: rdp\n    noise_multiplier: {z}\n")


@pytest.fixture
def privacy_study(tmp_path):
    cols = ["cell", "method", "epsilon", "seed", "status", "final_test_acc"]
    rows, configs, metrics = [], {}, {}
    accs = {("bias", "inf"): [0.70, 0.72, 0.71], ("bias", "1"): [0.66, 0.69, 0.67]}
    for (method, eps), values in accs.items():
        z = 0.0 if eps == "inf" else 1.41
        for seed, acc in enumerate(values):
            cell = f"method-{method}_epsilon-{eps}_seed-{seed}"
            rows.append({"cell": cell, "method": method, "epsilon": eps, "seed": seed, "status": "done",
                         "final_test_acc": acc})
            configs[cell] = _dp_config(method, z)
            last = {"round": 12, "dp_noise_multiplier": z, "dp_clip_norm": 0.05 + 0.01 * seed,
                    "dp_clipped_fraction": 0.5, "dp_delta": 0.002}
            if z:
                last["dp_epsilon"] = 1.0 + 0.001 * seed
            metrics[cell] = [{"round": 1, "dp_clip_norm": 0.1}, last]
    # A failed cell is left out of every statistic.
    rows.append({"cell": "method-bias_epsilon-1_seed-3", "method": "bias", "epsilon": "1", "seed": 3,
                 "status": "failed", "final_test_acc": ""})
    return _write_study(tmp_path / "privacy_eps", cols, rows, configs, metrics)


def test_privacy_table_mean_ci_epsilon_and_outputs(privacy_study, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    table = prr.privacy(privacy_study, out)
    by = {(t["method"], t["epsilon_target"]): t for t in table}
    assert list(by) == [("bias", "1"), ("bias", "inf")]  # EPS_ORDER, failed cell dropped
    t1 = by[("bias", "1")]
    assert t1["n"] == 3 and t1["seeds"] == "0 1 2"
    assert t1["acc_mean"] == pytest.approx(round((0.66 + 0.69 + 0.67) / 3, 4))
    sd = stats.tstd([0.66, 0.69, 0.67])
    assert t1["acc_ci_half"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3), abs=1e-4)
    assert t1["epsilon_reported"] == pytest.approx(1.002)  # the largest ε over the seeds
    # ε at δ = 1e-5 is the library's for the cell's mechanism, and larger than at δ = 1/N = 0.002.
    assert t1["epsilon_at_delta_1e-5"] == pytest.approx(epsilon("rdp", "poisson", 500, 50, 1.41, 12, 1e-5), abs=1e-3)
    assert t1["epsilon_at_delta_1e-5"] > 1.0
    assert t1["clip_norm_last"] == pytest.approx(0.06)  # the last round's C, averaged over seeds
    assert t1["num_clients"] == 500
    tinf = by[("bias", "inf")]
    assert math.isinf(tinf["epsilon_reported"]) and math.isinf(tinf["epsilon_at_delta_1e-5"])
    md = (out / "privacy.md").read_text()
    assert "| bias | 1 | 1.00 (0.002) |" in md and "| bias | ∞ | ∞ | ∞ |" in md
    with open(out / "privacy.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (out / "privacy.png").stat().st_size > 0


@pytest.fixture
def byzantine_studies(tmp_path):
    cols = ["cell", "aggregator", "attack", "fl.attack.fraction", "seed", "status", "final_test_acc"]
    dirs = []
    for method, base in (("bias", 0.6), ("lora", 0.5)):
        rows, configs = [], {}
        for agg_i, agg in enumerate(prr.AGGREGATORS):
            for attack, frac in ((None, None), ("sign_flip4", 0.2), ("sign_flip", 0.1)):
                for seed in range(3):
                    cell = f"{method}-{agg}-{attack}-{frac}-{seed}"
                    rows.append({"cell": cell, "aggregator": agg, "attack": attack or "",
                                 "fl.attack.fraction": "" if frac is None else frac, "seed": seed,
                                 "status": "done", "final_test_acc": base + 0.01 * agg_i + 0.001 * seed})
                    configs[cell] = f"peft:\n  method: {method}\n"
        dirs.append(_write_study(tmp_path / f"byz_{method}", cols, rows, configs, {}))
    return dirs


def test_byzantine_table_groups_method_attack_fraction(byzantine_studies, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    table = prr.byzantine(byzantine_studies, out)
    keys = [(t["method"], t["attack"], t["fraction"]) for t in table]
    # Per method: the clean cells first, then the attacks in ATTACKS order, larger fractions first.
    assert list(dict.fromkeys(keys)) == [("bias", "none", "0"), ("bias", "sign_flip", "0.1"),
                                         ("bias", "sign_flip4", "0.2"), ("lora", "none", "0"),
                                         ("lora", "sign_flip", "0.1"), ("lora", "sign_flip4", "0.2")]
    row = next(t for t in table if t["method"] == "lora" and t["attack"] == "sign_flip4" and t["aggregator"] == "krum")
    assert row["n"] == 3 and row["acc_mean"] == pytest.approx(0.5 + 0.03 + 0.001)
    md = (out / "byzantine.md").read_text().splitlines()
    assert md[0].startswith("| method | attack | Byzantine share | fedavg | median | trimmed_mean | krum |")
    assert any(line.startswith("| lora | sign_flip4 | 20 % | 0.501 ± ") for line in md)
    assert (out / "byzantine.png").stat().st_size > 0


def test_missing_results_csv_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no results.csv"):
        prr.privacy(tmp_path, tmp_path)
