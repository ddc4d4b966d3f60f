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
    assert {"versions", "mpi_library", "cpu_model", "cpu_bf16_native", "gpu_models"} <= set(info)
    assert info["cpu_bf16_native"] in (True, False, None)
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


def test_cpu_bf16_native_follows_onednn_and_never_raises(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert envinfo.cpu_bf16_native() is False

    def broken():
        raise RuntimeError("no oneDNN")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", broken, raising=False)
    assert envinfo.cpu_bf16_native() is None


@pytest.mark.parametrize("native, device, bf16, warns", [
    (False, "cpu", True, True), (True, "cpu", True, False), (None, "cpu", True, False),
    (False, "cpu", False, False), (False, "cuda", True, False)])
def test_bf16_emulation_warning(monkeypatch, caplog, native, device, bf16, warns):
    import logging
    monkeypatch.setattr(envinfo, "cpu_bf16_native", lambda: native)
    log = logging.getLogger("hpcfed.test_envinfo")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert envinfo.warn_if_bf16_emulated(torch.device(device), bf16, "fl.local.bf16", log) is warns
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == int(warns)
    if warns:
        assert lines[0].startswith("fl.local.bf16=true on a CPU without native bf16")
        assert lines[0].endswith("set fl.local.bf16=false on this machine") and "\n" not in lines[0]


def test_run_warns_once_about_emulated_bf16(toy_text, tmp_path, monkeypatch, caplog):
    import logging
    monkeypatch.setattr(envinfo, "cpu_bf16_native", lambda: False)
    with caplog.at_level(logging.WARNING, logger="hpcfed"):
        run(load_config(toy_text + [f"out_dir={tmp_path}", "name=x", "fl.rounds=1", "fl.local.bf16=true"]))
    assert sum("without native bf16" in r.getMessage() for r in caplog.records) == 1


def test_run_writes_environment_into_run_info(toy_text, tmp_path):
    run(load_config(toy_text + [f"out_dir={tmp_path}", "name=x", "fl.rounds=1"]))
    info = json.loads((tmp_path / "x" / "run_info.json").read_text())
    check_info(info)
    assert info["world_size"] == 1 and info["trainable_params"] > 0  # the run's own keys are kept
    if sys.platform.startswith("linux"):
        assert info["cpu_model"]
