"""Tables and plots of issue #17's two studies: accuracy against client-level ε, and accuracy under attack.

Reads the finished cells of ``configs/study/privacy_eps.yaml`` and ``configs/study/byzantine.yaml`` (each
cell's ``results.csv`` row and its ``metrics.jsonl``) and writes, under ``--out``:

- ``privacy.csv`` / ``privacy.md``: per method and ε target, the seeds, the final test accuracy (mean ± 95 %
  Student-t CI over the seeds), the ε the accountant reports after the last round (at the run's δ), the noise
  multiplier z and the clip norm C at the last round, and the share of clipped updates;
- ``privacy.png``: final test accuracy against ε (log axis, ε = ∞ drawn at the right), one line per method;
- ``byzantine.csv`` / ``byzantine.md``: final test accuracy per PEFT method × attack × Byzantine fraction
  (rows) and aggregator (columns), mean ± CI, from one or more byzantine study folders
  (``configs/study/byzantine.yaml``, ``configs/study/byzantine_lora.yaml``);
- ``byzantine.png``: the same as grouped bars, one panel per method and fraction.

Statistics use :func:`hpcfed.study.stats.mean_ci` (the study runner's own). The verdicts on the declared claims
are the studies' ``claims.csv`` (``python -m hpcfed.study report FILE``); this script only lays the numbers out.

Usage::

    python -m benchmarks.privacy_robustness_report --privacy runs/study/privacy_eps \
        --byzantine runs/study/byzantine runs/study/byzantine_lora --out docs/results/privacy_robustness

Raises ``SystemExit`` with one line when a study folder or its ``results.csv`` is missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from hpcfed.study.stats import mean_ci

EPS_ORDER = ("1", "3", "8", "inf")
AGGREGATORS = ("fedavg", "median", "trimmed_mean", "krum")
ATTACKS = ("none", "sign_flip", "sign_flip4", "scale", "gaussian", "label_flip")


def _rows(study_dir: Path) -> list[dict]:
    path = study_dir / "results.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no results.csv (run `python -m hpcfed.study report` on the study first)")
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["status"] == "done" and r["final_test_acc"]]


def _last_metrics(cell_dir: Path) -> dict:
    """The last line of the cell's metrics.jsonl that has each key (later lines win)."""
    out: dict = {}
    for line in (cell_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            out.update({k: v for k, v in json.loads(line).items() if v is not None})
    return out


def _eps_at(cell_dir: Path, z: float, delta: float) -> float:
    """ε of the cell's mechanism (its sampling, N, cohort, rounds, accountant and z) at another δ."""
    from hpcfed.fl.dp import epsilon
    from omegaconf import OmegaConf

    if not z:
        return math.inf
    c = OmegaConf.load(cell_dir / "config.yaml")
    return round(epsilon(c.fl.dp.accountant, c.fl.sampling, int(c.data.num_clients), int(c.fl.cohort_size), float(z),
                         int(c.fl.rounds), delta), 3)


def _num_clients(cell_dir: Path) -> int | None:
    from omegaconf import OmegaConf

    path = cell_dir / "config.yaml"
    return int(OmegaConf.load(path).data.num_clients) if path.is_file() else None


def _fmt(est, digits: int = 3) -> str:
    if est.n == 0:
        return "—"
    if est.half_width is None:
        return f"{est.mean:.{digits}f} (n=1)"
    return f"{est.mean:.{digits}f} ± {est.half_width:.{digits}f}"


def privacy(study_dir: Path, out: Path) -> list[dict]:
    """Write privacy.{csv,md,png}; return the table rows."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in _rows(study_dir):
        m = _last_metrics(study_dir / r["cell"])
        groups[(r["method"], r["epsilon"])].append({
            "seed": int(r["seed"]), "cell": r["cell"], "acc": float(r["final_test_acc"]), "eps": m.get("dp_epsilon"),
            "z": m.get("dp_noise_multiplier"), "clip": m.get("dp_clip_norm"),
            "clipped": m.get("dp_clipped_fraction"), "delta": m.get("dp_delta")})
    table = []
    for method in sorted({k[0] for k in groups}):
        for eps in EPS_ORDER:
            cells = sorted(groups.get((method, eps), []), key=lambda c: c["seed"])
            if not cells:
                continue
            acc = mean_ci([c["acc"] for c in cells])
            eps_got = [c["eps"] for c in cells if c["eps"] is not None]
            table.append({
                "method": method, "epsilon_target": eps, "seeds": " ".join(str(c["seed"]) for c in cells),
                "n": acc.n, "acc_mean": round(acc.mean, 4),
                "acc_ci_half": None if acc.half_width is None else round(acc.half_width, 4),
                "epsilon_reported": round(max(eps_got), 3) if eps_got else math.inf,
                "delta": cells[0]["delta"], "noise_multiplier": cells[0]["z"],
                "epsilon_at_delta_1e-5": _eps_at(study_dir / cells[0]["cell"], cells[0]["z"], 1e-5),
                "clip_norm_last": round(sum(c["clip"] for c in cells) / len(cells), 4),
                "clipped_fraction_last": round(sum(c["clipped"] for c in cells) / len(cells), 3),
                "num_clients": _num_clients(study_dir / cells[0]["cell"]), "_est": acc})
    cols = [k for k in table[0] if not k.startswith("_")] if table else []
    with open(out / "privacy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    lines = ["| method | ε target | ε reported (δ) | ε at δ = 1e-5 | z | final test acc (mean ± 95 % CI) | seeds | "
             "C at the last round |", "|---|---|---|---|---|---|---|---|"]
    for t in table:
        eps = "∞" if t["epsilon_target"] == "inf" else t["epsilon_target"]
        rep = "∞" if math.isinf(t["epsilon_reported"]) else f"{t['epsilon_reported']:.2f} ({t['delta']:.3g})"
        e5 = "∞" if math.isinf(t["epsilon_at_delta_1e-5"]) else f"{t['epsilon_at_delta_1e-5']:.2f}"
        lines.append(f"| {t['method']} | {eps} | {rep} | {e5} | {t['noise_multiplier']:.3g} | {_fmt(t['_est'])} | "
                     f"{t['seeds']} | {t['clip_norm_last']:.3g} |")
    (out / "privacy.md").write_text("\n".join(lines) + "\n")
    _plot_privacy(table, out / "privacy.png")
    return table


def _plot_privacy(table: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x_of = {"1": 1.0, "3": 3.0, "8": 8.0, "inf": 30.0}
    for i, method in enumerate(sorted({t["method"] for t in table})):
        rows = [t for t in table if t["method"] == method]
        xs = [x_of[t["epsilon_target"]] * (1 + 0.04 * i) for t in rows]
        ys = [t["acc_mean"] for t in rows]
        err = [t["acc_ci_half"] or 0.0 for t in rows]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks([1, 3, 8, 30])
    ax.set_xticklabels(["1", "3", "8", "∞"])
    ax.set_xlabel("client-level ε (RDP, δ = 1/N)")
    ax.set_ylabel("final test accuracy (SST-2 dev)")
    clients = sorted({t["num_clients"] for t in table if t["num_clients"]})
    seeds = max((t["n"] for t in table), default=0)
    ax.set_title(f"DP-FedAvg, {'/'.join(map(str, clients)) or '?'} clients, {seeds} seeds (95 % CI)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _method(study_dir: Path, cell: str) -> str:
    """The cell's ``peft.method`` (from its resolved config.yaml), or ``?`` when the file is missing."""
    from omegaconf import OmegaConf

    path = study_dir / cell / "config.yaml"
    return str(OmegaConf.load(path).peft.method) if path.is_file() else "?"


def _attack_order(attack: str) -> int:
    return ATTACKS.index(attack) if attack in ATTACKS else len(ATTACKS)


def byzantine(study_dirs: list[Path] | Path, out: Path) -> list[dict]:
    """Write byzantine.{csv,md,png} from one or more byzantine study folders; return the table rows.

    Rows are grouped by PEFT method (each cell's ``peft.method``), attack, Byzantine fraction and aggregator.
    Clean cells (no ``attack`` axis) are the attack ``none`` at fraction 0.
    """
    if isinstance(study_dirs, Path):
        study_dirs = [study_dirs]
    groups: dict[tuple[str, str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for study_dir in study_dirs:
        for r in _rows(study_dir):
            attack = r.get("attack") or "none"
            frac = r.get("fl.attack.fraction") or "0"
            groups[(_method(study_dir, r["cell"]), attack, f"{float(frac):g}", r["aggregator"])].append(
                (int(r["seed"]), float(r["final_test_acc"])))
    table = []
    for method in sorted({k[0] for k in groups}):
        for attack in sorted({k[1] for k in groups if k[0] == method}, key=_attack_order):
            for frac in sorted({k[2] for k in groups if k[:2] == (method, attack)}, reverse=True):
                for agg in AGGREGATORS:
                    cells = sorted(groups.get((method, attack, frac, agg), []))
                    if cells:
                        est = mean_ci([a for _, a in cells])
                        table.append({"method": method, "attack": attack, "fraction": frac, "aggregator": agg,
                                      "n": est.n, "seeds": " ".join(str(s) for s, _ in cells),
                                      "acc_mean": round(est.mean, 4),
                                      "acc_ci_half": None if est.half_width is None else round(est.half_width, 4),
                                      "_est": est})
    cols = [k for k in table[0] if not k.startswith("_")] if table else []
    with open(out / "byzantine.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    by = {(t["method"], t["attack"], t["fraction"], t["aggregator"]): t for t in table}
    lines = ["| method | attack | Byzantine share | " + " | ".join(AGGREGATORS) + " |",
             "|---|---|---|" + "---|" * len(AGGREGATORS)]
    for key in dict.fromkeys((t["method"], t["attack"], t["fraction"]) for t in table):
        method, attack, frac = key
        share = "0 %" if attack == "none" else f"{float(frac) * 100:g} %"
        cells = [_fmt(by[(*key, a)]["_est"]) if (*key, a) in by else "—" for a in AGGREGATORS]
        lines.append(f"| {method} | {attack} | {share} | " + " | ".join(cells) + " |")
    (out / "byzantine.md").write_text("\n".join(lines) + "\n")
    _plot_byzantine(table, out / "byzantine.png")
    return table


def _plot_byzantine(table: list[dict], path: Path) -> None:
    """Grouped bars, one panel per (PEFT method, Byzantine fraction); the clean cells lead every panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = sorted({(t["method"], t["fraction"]) for t in table if t["attack"] != "none"},
                    key=lambda p: (p[0], -float(p[1])))
    panels = panels or sorted({(t["method"], t["fraction"]) for t in table})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (method, frac) in zip(axes[0], panels):
        rows = [t for t in table if t["method"] == method]
        clean = {t["aggregator"]: t for t in rows if t["attack"] == "none"}
        groups = ["none"] + sorted({t["attack"] for t in rows if t["attack"] != "none" and t["fraction"] == frac},
                                   key=_attack_order)
        width = 0.8 / len(AGGREGATORS)
        for j, agg in enumerate(AGGREGATORS):
            ys, err = [], []
            for g in groups:
                t = clean.get(agg) if g == "none" else next(
                    (t for t in rows if t["attack"] == g and t["fraction"] == frac and t["aggregator"] == agg), None)
                ys.append(t["acc_mean"] if t else math.nan)
                err.append((t["acc_ci_half"] or 0.0) if t else 0.0)
            ax.bar([i + (j - 1.5) * width for i in range(len(groups))], ys, width, yerr=err, capsize=2, label=agg)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(["no attack"] + groups[1:], fontsize=8)
        ax.axhline(0.5092, color="grey", lw=0.8, ls="--")  # majority class of SST-2 dev (444 / 872)
        ax.set_title(f"{method}: {float(frac) * 100:g} % Byzantine clients", fontsize=9)
        ax.set_ylim(0.3, 0.9)
    axes[0][0].set_ylabel("final test accuracy (SST-2 dev)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--privacy", type=Path, default=None, help="privacy_eps study folder")
    ap.add_argument("--byzantine", type=Path, nargs="+", default=None,
                    help="byzantine study folder(s), e.g. the BitFit and the LoRA study")
    ap.add_argument("--out", type=Path, default=Path("docs/results/privacy_robustness"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.privacy:
        for t in privacy(args.privacy, args.out):
            print("privacy", t["method"], t["epsilon_target"], t["acc_mean"], t["acc_ci_half"], t["epsilon_reported"])
    if args.byzantine:
        for t in byzantine(args.byzantine, args.out):
            print("byzantine", t["method"], t["attack"], t["fraction"], t["aggregator"], t["acc_mean"],
                  t["acc_ci_half"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
