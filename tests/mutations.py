"""Break the code on purpose, one behaviour at a time, and check that the test guarding it fails.

Usage: python tests/mutations.py [OUT.json]   (default docs/results/mutation_checks.json; ≈ 4 min on 2 cores)

Each mutation replaces one exact snippet of a source file, runs the named tests, and restores the file (also on
Ctrl-C). A mutation is "caught" when those tests fail. The original tree must pass them (checked first), so a
catch is the mutation's doing. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MUTATIONS = [
    {
        "name": "rank-dependent client RNG (breaks rank-count invariance)",
        "file": "hpcfed/fl/loop.py",
        "old": "client_seed(self.cfg.seed, round_idx, cid), cid)",
        "new": "client_seed(self.cfg.seed, round_idx, cid) + self.comm.rank, cid)",
        "tests": ["tests/multirank/test_multirank.py::test_rank_count_invariance_1_2_3_ranks"],
    },
    {
        "name": "server optimizer moments not restored on resume (FedAdam)",
        "file": "hpcfed/fl/server.py",
        "old": "            self.state[k].copy_(sd[f\"server_opt.{k}\"])",
        "new": "            pass",
        "tests": ["tests/multirank/test_resume.py::test_interrupted_then_resumed_is_bitwise_equal[kill9]"],
    },
    {
        "name": "bytes_down from a formula (cohort x n) instead of the masks handed out",
        "file": "hpcfed/fl/loop.py",
        "old": "\"bytes_down\": stats[\"elems_down\"] * elem_bytes,",
        "new": "\"bytes_down\": self.cfg.fl.cohort_size * self.flat.numel * elem_bytes,",
        "tests": ["tests/unit/test_loop_comm.py::test_bytes_follow_the_client_masks"],
    },
    {
        "name": "centralized baseline pools only the first client",
        "file": "hpcfed/fl/baselines.py",
        "old": "parts = [self.inner.load_client(c) for c in range(self.inner.num_clients)]",
        "new": "parts = [self.inner.load_client(c) for c in range(1)]",
        "tests": ["tests/unit/test_baselines.py::test_centralized_pools_all_data_with_cohort_budget"],
    },
    {
        "name": "NaN check skipped (poisoned updates aggregated)",
        "file": "hpcfed/fl/loop.py",
        "old": "        if not math.isfinite(norm):\n            raise ClientFailure(\"non-finite update\")",
        "new": "        pass",
        "tests": ["tests/unit/test_failures.py::test_unhealthy_updates_dropped[nan]"],
    },
]


def _pytest(tests: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                       capture_output=True, text=True, cwd=REPO, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return r.returncode, time.perf_counter() - t0, lines[-1] if lines else ""


def main(out: Path) -> int:
    rows = []
    for m in MUTATIONS:
        path = REPO / m["file"]
        src = path.read_text()
        if src.count(m["old"]) != 1:
            rows.append({**m, "status": "snippet not found once (update this table)"})
            continue
        rc, secs, last = _pytest(m["tests"])
        if rc != 0:
            rows.append({**m, "status": f"guarding tests fail on the unmutated tree: {last}"})
            continue
        try:
            path.write_text(src.replace(m["old"], m["new"]))
            rc, secs, last = _pytest(m["tests"])
        finally:
            path.write_text(src)
        rows.append({**m, "status": "caught" if rc != 0 else "NOT caught", "pytest": last, "seconds": round(secs, 1)})
        print(f"{rows[-1]['status']:>10}  {m['name']}  ({last})", flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "date": time.strftime("%Y-%m-%d"),
                               "command": "python tests/mutations.py", "mutations": rows}, indent=1) + "\n")
    return 0 if all(r["status"] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "results" / "mutation_checks.json"))
