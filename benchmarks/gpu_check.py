"""GPU check: everything this repository can only verify on a CUDA machine, in at most 8 minutes, as one JSON file.

Usage (from the repository root; ``benchmarks/gpu_check.sh`` is the same with the venv's python)::

    python -m benchmarks.gpu_check [OUT.json]        # default docs/results/gpu_check.json

Steps, each in its own process under ``timeout`` (a failing or hanging step does not stop the others):

1. ``gpu_tests``      ``pytest -m gpu``: the tests marked as needing a CUDA device (``no_tests`` if none exist;
                      a skip fails the step, as in step 2);
2. ``kernels_cuda``   ``pytest tests/kernels -m ""``: the Triton kernels compiled on CUDA against their torch and
                      fp64 references (tests/kernels/conftest.py picks CUDA when available), incl. the slow sizes;
                      every test must run: a skipped one fails the step;
3. ``nccl_allreduce`` ``torchrun --nproc-per-node <GPUs>``: an NCCL all-reduce over every visible GPU, checked
                      element by element against the expected sum, plus its bus bandwidth;
4. ``main_job``       ``python -m hpcfed.main config=configs/sst2_minilm_bitfit.yaml fl.rounds=3 dist.device=cuda``
                      into a temporary folder; final ``test_acc`` and ``round_s`` from its metrics.jsonl;
5. ``kernel_bench``   ``python -m benchmarks.kernels --device cuda``: GB/s of each fused kernel at 1e6..1e8
                      elements (recorded, not judged; the step fails only without result rows or when the
                      dispatcher did not pick Triton).

For each step the JSON holds the command, exit code, status (``passed``, ``failed``, ``timeout``, ``no_tests``,
``not_run`` when the budget is used up, ``interrupted`` when the check got SIGTERM), wall seconds, the tail of
its output and the numbers parsed from it; at the top, the GPUs (from nvidia-smi: name, driver, memory), torch /
CUDA / cuDNN / NCCL / triton versions, date, host and git commit.

Exit status: 0 every step passed (``no_tests`` counts as passed and is listed under ``warnings``), 1 a step
failed or timed out, 2 no CUDA device is visible: then nothing is run and no JSON is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results" / "gpu_check.json"
SCHEMA = "hpcfed.gpu_check/1"
EXIT_FAILED = 1
EXIT_NO_GPU = 2
#: Seconds for the environment probe and all steps together (their own timeouts add up to 440 s): 8 minutes
#: less python start-up, the JSON and a margin. benchmarks/gpu_check.sh kills the whole check at 475 s.
BUDGET_S = 450.0
#: A step's limit ends this long before the budget: room for `timeout -k 10` to kill it.
END_MARGIN_S = 15.0
#: A step that would get less than this is not started.
MIN_STEP_S = 10.0
TAIL_LINES = 60
TAIL_CHARS = 6000
MAIN_ROUNDS = 3
ALLREDUCE_TAG = "ALLREDUCE_RESULT "
#: Statuses that do not fail the check.
OK_STATUSES = ("passed", "no_tests")


# ----------------------------------------------------------------------------------------------- pure helpers
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)\b")
_PYTEST_TIME = re.compile(r"\bin (\d+(?:\.\d+)?)s\b")


def parse_pytest_summary(text: str) -> dict:
    """Counts from pytest's final summary line (``3 failed, 10 passed, 2 skipped in 5.01s``), with
    ``duration_s``; ``errors``/``warnings`` are always plural. Empty dict when there is no summary line."""
    for line in reversed(text.splitlines()):
        m_time = _PYTEST_TIME.search(line)
        if not m_time:
            continue
        counts: dict = {}
        for num, key in _PYTEST_COUNT.findall(line):
            key = {"error": "errors", "warning": "warnings"}.get(key, key)
            counts[key] = counts.get(key, 0) + int(num)
        if counts or "no tests ran" in line:
            counts["duration_s"] = float(m_time.group(1))
            return counts
    return {}


def judge_pytest(rc: int, counts: dict, *, allow_empty: bool = False) -> tuple[str, list[str]]:
    """Status and problems of a pytest step from its exit code and summary counts.

    pytest exits 5 when no test was collected / selected: ``no_tests`` where that is allowed, else a failure.
    """
    if rc == 5:
        return ("no_tests", []) if allow_empty else ("failed", ["no tests were collected"])
    problems = []
    if rc != 0:
        problems.append(f"pytest exited {rc}")
    for key in ("failed", "errors"):
        if counts.get(key):
            problems.append(f"{counts[key]} {key}")
    if rc == 0 and not counts.get("passed"):
        problems.append("exit code 0 but no passed test in the summary")
    return ("failed" if problems else "passed"), problems


def parse_kernel_bench(text: str) -> list[dict]:
    """Rows of the markdown table printed by ``python -m benchmarks.kernels``: kernel, variant, n, GB/s, % copy."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 9 or cells[0] in ("kernel", "") or cells[0].startswith("---"):
            continue
        try:
            n = int(float(cells[2]))
            gbs = float(cells[5])
            pct = float(cells[8].rstrip("%"))
        except ValueError:
            continue
        rows.append({"kernel": cells[0], "variant": cells[1], "n": n, "gb_s": gbs, "dispatch_ms": float(cells[4]),
                     "copy_gb_s": max(float(cells[6]), float(cells[7])), "pct_copy": pct})
    return rows


def summarize_bench(rows: list[dict]) -> dict:
    """``"kernel / variant" -> {n, gb_s, pct_copy}`` at the largest n measured for it."""
    best: dict = {}
    for r in rows:
        key = f"{r['kernel']} / {r['variant']}"
        if key not in best or r["n"] > best[key]["n"]:
            best[key] = {"n": r["n"], "gb_s": r["gb_s"], "pct_copy": r["pct_copy"]}
    return best


def parse_metrics(lines: Sequence[str]) -> dict:
    """Key numbers of a run's metrics.jsonl lines: rounds, final test_acc (of the last evaluated round),
    every round's round_s and their mean."""
    recs = [json.loads(line) for line in lines if line.strip()]
    evaluated = [r for r in recs if r.get("test_acc") is not None]
    round_s = [float(r["round_s"]) for r in recs if r.get("round_s") is not None]
    return {
        "rounds": recs[-1].get("round") if recs else None,
        "final_test_acc": evaluated[-1]["test_acc"] if evaluated else None,
        "final_test_acc_round": evaluated[-1].get("round") if evaluated else None,
        "round_s": round_s,
        "mean_round_s": sum(round_s) / len(round_s) if round_s else None,
    }


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    return "\n".join(text.splitlines()[-lines:])[-chars:]


def status_of(rc: Optional[int], timed_out: bool, judged: tuple[str, list[str]]) -> tuple[str, list[str]]:
    """A timeout wins over everything; otherwise the step's own verdict."""
    if timed_out:
        return "timeout", ["step ran past its timeout and was killed"]
    return judged


def assemble_report(steps: list[dict], env: dict, *, started_utc: str, wall_s: float, budget_s: float) -> dict:
    """The JSON document: environment, every step, and the verdict."""
    failed = [s["name"] for s in steps if s["status"] not in OK_STATUSES]
    warnings = [f"{s['name']}: no tests selected" for s in steps if s["status"] == "no_tests"]
    return {
        "schema": SCHEMA,
        "date_utc": started_utc,
        "ok": not failed,
        "failed_steps": failed,
        "warnings": warnings,
        "wall_s": round(wall_s, 1),
        "budget_s": budget_s,
        "env": env,
        "steps": {s["name"]: s for s in steps},
    }


def write_json_atomic(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def no_gpu_message(count: int) -> Optional[str]:
    """The one-line refusal when no CUDA device is visible, else None."""
    if count >= 1:
        return None
    return ("gpu_check: no CUDA GPU visible (torch.cuda.device_count() == 0); nothing was run and no JSON was "
            "written. Run it on a machine with an NVIDIA GPU.")


# ------------------------------------------------------------------------------------------------ environment
def gpu_count() -> int:
    """Number of visible CUDA devices (0 when torch or the driver is missing); does not create a CUDA context."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - any problem here means: no usable GPU
        return 0


def _cmd_out(argv: list[str], timeout_s: float = 20.0) -> Optional[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict:
    import importlib.metadata as md

    import torch

    def version(dist: str) -> Optional[str]:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    gpus = []
    smi = _cmd_out(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                    "--format=csv,noheader"]) if shutil.which("nvidia-smi") else None
    for line in (smi or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"index": parts[0], "name": parts[1], "driver": parts[2], "memory": parts[3]})
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # noqa: BLE001
        nccl = None
    status = _cmd_out(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "gpus": gpus,
        "nvidia_smi": smi is not None,
        "cuda_device_count": gpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": nccl,
        "triton": version("triton"),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        # the caller's word wins: a copy of the working tree sent to a GPU machine may carry no .git, or an
        # older .git whose HEAD is not the tree's commit (the tree then reads as "dirty")
        "git_commit": os.environ.get("HPCFED_GIT_COMMIT") or _cmd_out(["git", "rev-parse", "HEAD"]),
        "git_dirty": None if status is None else bool(status),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }


# ------------------------------------------------------------------------------------------------------ steps
@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: float
    #: (exit code, output) -> (status, problems, parsed numbers); called when the step did not time out.
    judge: Callable[[int, str], tuple[str, list[str], dict]]
    env: dict = field(default_factory=dict)


def _pytest_judge(allow_empty: bool = False, forbid_skips: bool = False):
    """``forbid_skips``: on the GPU machine every test of the step must run; a skip (its reason from pytest's
    ``-ra`` summary, on by default in pyproject.toml) fails the step."""
    def judge(rc: int, out: str) -> tuple[str, list[str], dict]:
        counts = parse_pytest_summary(out)
        status, problems = judge_pytest(rc, counts, allow_empty=allow_empty)
        if forbid_skips and counts.get("skipped"):
            reasons = [line.strip() for line in out.splitlines() if line.startswith("SKIPPED")]
            status = "failed"
            problems = problems + [f"{counts['skipped']} skipped: " + ("; ".join(reasons[:3]) or "see tail")]
        return status, problems, counts
    return judge


def _allreduce_judge(world: int):
    def judge(rc: int, out: str) -> tuple[str, list[str], dict]:
        res: dict = {}
        for line in out.splitlines():
            if line.startswith(ALLREDUCE_TAG):
                res = json.loads(line[len(ALLREDUCE_TAG):])
        problems = []
        if rc != 0:
            problems.append(f"torchrun exited {rc}")
        if not res:
            problems.append("no result line from rank 0")
        elif not res.get("ok"):
            problems.append(f"all-reduce result differs from the expected sum: {res.get('errors')}")
        elif res.get("world_size") != world:
            problems.append(f"world size {res.get('world_size')} != {world} GPUs")
        return ("failed" if problems else "passed"), problems, res
    return judge


def _main_job_judge(run_dir: Path):
    def judge(rc: int, out: str) -> tuple[str, list[str], dict]:
        problems = [] if rc == 0 else [f"exited {rc}"]
        metrics_path = run_dir / "metrics.jsonl"
        parsed: dict = {}
        if metrics_path.exists():
            lines = metrics_path.read_text().splitlines()
            parsed = parse_metrics(lines)
            parsed["metrics"] = [json.loads(line) for line in lines if line.strip()]
        else:
            problems.append(f"no {metrics_path.name}")
        info_path = run_dir / "run_info.json"
        if info_path.exists():
            info = json.loads(info_path.read_text())
            parsed["device"] = info.get("device")
            parsed["trainable_params"] = info.get("trainable_params")
            if not str(info.get("device", "")).startswith("cuda"):
                problems.append(f"ran on {info.get('device')!r}, not CUDA")
        elif rc == 0:
            problems.append("no run_info.json")
        if rc == 0 and parsed.get("rounds") != MAIN_ROUNDS:
            problems.append(f"metrics end at round {parsed.get('rounds')}, expected {MAIN_ROUNDS}")
        if rc == 0 and parsed.get("final_test_acc") is None:
            problems.append("no test_acc in the metrics")
        return ("failed" if problems else "passed"), problems, parsed
    return judge


def _bench_judge(rc: int, out: str) -> tuple[str, list[str], dict]:
    rows = parse_kernel_bench(out)
    problems = [] if rc == 0 else [f"exited {rc}"]
    if not rows:
        problems.append("no result rows")
    m = re.search(r"^dispatch backend: (\w+)", out, re.M)
    if m and m.group(1) != "triton":
        problems.append(f"dispatch backend {m.group(1)!r}, not triton")
    hw = re.search(r"^hardware: (.*)$", out, re.M)
    parsed = {"hardware": hw.group(1) if hw else None, "largest_n": summarize_bench(rows), "rows": rows}
    return ("failed" if problems else "passed"), problems, parsed


def make_steps(py: str, ngpu: int, tmp: Path) -> list[Step]:
    run_dir = tmp / "runs" / "gpu_check"
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return [
        Step("gpu_tests", pytest + ["-m", "gpu"], 45, _pytest_judge(allow_empty=True, forbid_skips=True)),
        Step("kernels_cuda", pytest + ["tests/kernels", "-m", ""], 120, _pytest_judge(forbid_skips=True)),
        Step("nccl_allreduce", [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ngpu}",
                                "-m", "benchmarks.gpu_check", "--allreduce-worker=cuda"], 45, _allreduce_judge(ngpu)),
        Step("main_job", [py, "-m", "hpcfed.main", "config=configs/sst2_minilm_bitfit.yaml",
                          f"fl.rounds={MAIN_ROUNDS}", "dist.device=cuda", f"out_dir={run_dir.parent}",
                          f"name={run_dir.name}", "progress=false", "checkpoint.resume=none"], 150,
             _main_job_judge(run_dir)),
        Step("kernel_bench", [py, "-m", "benchmarks.kernels", "--device", "cuda", "--sizes", "1e6", "1e7", "1e8",
                              "--min-time", "0.1", "--min-repeats", "3"], 80, _bench_judge),
    ]


def step_env(base: Optional[dict] = None) -> dict:
    """Environment of the steps: repository on PYTHONPATH, the venv's bin first on PATH, offline Hugging Face,
    and no TRITON_INTERPRET / HPCFED_KERNEL_BACKEND from the caller (they would keep Triton off the GPU)."""
    env = dict(os.environ if base is None else base)
    for k in ("TRITON_INTERPRET", "HPCFED_KERNEL_BACKEND"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


class Stopped(Exception):
    """The check received SIGTERM (e.g. from gpu_check.sh's backstop timeout)."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped(f"signal {signum}")


def run_step(step: Step, env: dict, deadline: float) -> dict:
    """Run one step under ``timeout`` (its own limit, cut to what is left of the budget); raises only when the
    check itself is stopped (:class:`Stopped`, KeyboardInterrupt), after killing the step's processes."""
    limit = min(step.timeout_s, deadline - time.monotonic() - END_MARGIN_S)
    result = {"name": step.name, "cmd": " ".join(shlex.quote(a) for a in step.argv), "timeout_s": round(limit, 1)}
    if limit < MIN_STEP_S:
        return {**result, "status": "not_run", "rc": None, "wall_s": 0.0, "tail": "",
                "problems": ["the 8-minute budget was used up by earlier steps"], "parsed": {}}
    argv = step.argv
    if shutil.which("timeout"):
        argv = ["timeout", "-k", "10", f"{limit:.0f}"] + argv
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env={**env, **step.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit + 20)
        rc = proc.returncode
    except subprocess.TimeoutExpired:  # `timeout` itself hung or is missing: kill the whole group
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = 124
    except BaseException:  # the check itself is being stopped (SIGTERM, Ctrl-C): take the step down with it
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    wall = time.monotonic() - t0
    timed_out = rc in (124, 137) or (rc == -signal.SIGKILL)
    try:
        status, problems, parsed = step.judge(rc, out)
    except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the other steps
        status, problems, parsed = "failed", [f"could not parse the output: {exc!r}"], {}
    status, problems = status_of(rc, timed_out, (status, problems))
    return {**result, "status": status, "rc": rc, "wall_s": round(wall, 1), "problems": problems,
            "parsed": parsed, "tail": tail(out)}


# ------------------------------------------------------------------------------------------ all-reduce worker
def allreduce_worker(device: str = "cuda", numel: int = 1 << 24, iters: int = 10) -> int:
    """Run under torchrun, one process per GPU: check an NCCL all-reduce and time it; rank 0 prints the result.

    ``device='cpu'`` uses gloo instead (to try the worker on a machine without a GPU).
    """
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    errors = []
    # exact check: an fp64 ramp times (rank + 1); the sum is ramp * world (world + 1) / 2, exact in fp64
    ramp = torch.arange(1 << 20, dtype=torch.float64, device=dev)
    x = ramp * (rank + 1)
    dist.all_reduce(x)
    expected = ramp * (world * (world + 1) / 2)
    if not torch.equal(x, expected):
        errors.append(f"rank {rank}: fp64 ramp, max error {(x - expected).abs().max().item():.3e}")
    # fp32 buffer of integers: exact while world (world + 1) / 2 < 2^24
    y = torch.full((numel,), float(rank + 1), dtype=torch.float32, device=dev)
    dist.all_reduce(y)
    if not bool((y == world * (world + 1) / 2).all()):
        errors.append(f"rank {rank}: fp32 sum wrong, e.g. {y[0].item()} != {world * (world + 1) / 2}")
    # bandwidth, nccl-tests convention: algbw = bytes / t, busbw = algbw * 2 (world - 1) / world
    z = torch.ones(numel, dtype=torch.float32, device=dev)
    for _ in range(3):
        dist.all_reduce(z)
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dist.all_reduce(z)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, errors)
    all_errors = [e for errs in gathered for e in errs]
    if rank == 0:
        nbytes = numel * 4
        algbw = nbytes / t / 1e9
        print(ALLREDUCE_TAG + json.dumps({
            "ok": not all_errors, "world_size": world, "backend": dist.get_backend(), "errors": all_errors,
            "bytes": nbytes, "median_s": t, "algbw_gb_s": algbw, "busbw_gb_s": algbw * 2 * (world - 1) / world,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        }), flush=True)
    dist.destroy_process_group()
    return 1 if all_errors else 0


# ----------------------------------------------------------------------------------------------------- driver
def main(argv: Optional[Sequence[str]] = None, *, count_gpus: Callable[[], int] = gpu_count) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help=f"result JSON (default {DEFAULT_OUT})")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds for all steps together")
    ap.add_argument("--allreduce-worker", choices=["cuda", "cpu"], default=None,
                    help="internal: run as one rank of the all-reduce step (torchrun)")
    args = ap.parse_args(argv)
    if args.allreduce_worker:
        return allreduce_worker(args.allreduce_worker)
    ngpu = count_gpus()
    msg = no_gpu_message(ngpu)
    if msg:
        print(msg, file=sys.stderr)
        return EXIT_NO_GPU
    out_path = Path(args.out).resolve()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    signal.signal(signal.SIGTERM, _raise_stopped)
    env_info = environment()
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hpcfed_gpu_check_") as tmp:
        env = step_env()
        plan = make_steps(sys.executable, ngpu, Path(tmp))
        try:
            for step in plan:
                print(f"gpu_check: {step.name} ...", flush=True)
                res = run_step(step, env, deadline)
                print(f"gpu_check: {step.name}: {res['status']} in {res['wall_s']:.0f} s"
                      + (f" ({'; '.join(res['problems'])})" if res["problems"] else ""), flush=True)
                steps.append(res)
        except (Stopped, KeyboardInterrupt) as exc:  # still write what was measured, marked as incomplete
            for step in plan[len(steps):]:
                steps.append({"name": step.name, "cmd": " ".join(shlex.quote(a) for a in step.argv),
                              "status": "interrupted", "rc": None, "wall_s": None, "tail": "", "parsed": {},
                              "problems": [f"the check was stopped ({exc!r})"]})
    doc = assemble_report(steps, env_info, started_utc=started, wall_s=time.monotonic() - t0, budget_s=args.budget_s)
    write_json_atomic(out_path, doc)
    print(f"gpu_check: {'OK' if doc['ok'] else 'FAILED: ' + ', '.join(doc['failed_steps'])}; wrote {out_path}")
    return 0 if doc["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
