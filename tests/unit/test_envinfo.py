"""environment_info(): library versions, MPI library, CPU / GPU models, and their place in run_info.json."""

import importlib.metadata
import json
import sys

import pytest
import torch

from hpcfed import envinfo
from hpcfed.config import load_config
from hpcfed.envinfo import PACKAGES, environment_info
from hpcfed.main import run

VERSION_KEYS = {"python", "torch", "transformers", "peft", "timm", "open_clip_torch", "triton", "mpi4py"}


def check_info(info: dict) -> None:
    assert {"versions", "mpi_library", "cpu_model", "gpu_models"} <= set(info)
    assert set(info["versions"]) == VERSION_KEYS
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    if torch.cuda.is_available():
        assert info["gpu_models"] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        assert info["gpu_models"] is None


def test_keys_and_versions():
    info = environment_info()
    check_info(info)
    assert set(PACKAGES) | {"python"} == VERSION_KEYS
    json.dumps(info)  # serializable as it is


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo is Linux's")
def test_cpu_model_on_linux():
    model = environment_info()["cpu_model"]
    assert isinstance(model, str) and model.strip()


def test_mpi_library_version_leaves_this_process_alone():
    pytest.importorskip("mpi4py")
    imported = "mpi4py.MPI" in sys.modules
    lib = envinfo.mpi_library_version()
    assert isinstance(lib, str) and lib and "\n" not in lib
    assert ("mpi4py.MPI" in sys.modules) == imported  # asked in a child process: MPI not initialized here


def test_missing_package_is_none(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name in ("peft", "mpi4py"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    info = environment_info()
    assert info["versions"]["peft"] is None and info["versions"]["mpi4py"] is None
    assert info["mpi_library"] is None  # no mpi4py: not asked
    assert info["versions"]["torch"] == torch.__version__


def test_run_writes_environment_into_run_info(toy_text, tmp_path):
    run(load_config(toy_text + [f"out_dir={tmp_path}", "name=x", "fl.rounds=1"]))
    info = json.loads((tmp_path / "x" / "run_info.json").read_text())
    check_info(info)
    assert info["world_size"] == 1 and info["trainable_params"] > 0  # the run's own keys are kept
    if sys.platform.startswith("linux"):
        assert info["cpu_model"]
