"""One device resolver (hpcfed.dist.resolve_device) for every entry point: 'auto' / 'cpu' / 'cuda', the local
rank's CUDA device, and one `error:` line (exit status 2, no traceback) when CUDA is asked for and absent — in
hpcfed.main, hpcfed.evaluate, hpcfed.analysis.basin (which used to fall back to the CPU silently) and
hpcfed.pretrain."""

import pytest
import torch

from hpcfed.atomic import atomic_write_text
from hpcfed.config import ConfigError, load_config
from hpcfed.dist import init_runtime, resolve_device
from tests.conftest import tiny_model_args

NO_CUDA = "dist.device=cuda but no CUDA device is visible (torch.cuda.is_available() is False)"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_and_auto_without_cuda(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")


def test_cuda_without_cuda_is_one_line_naming_the_key(no_cuda):
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda")
    assert str(e.value).startswith(NO_CUDA) and "use dist.device=cpu or auto" in str(e.value)
    assert "\n" not in str(e.value)


def test_local_rank_picks_its_gpu(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_unknown_value_names_the_key():
    with pytest.raises(ConfigError, match="dist.device='tpu' is not valid"):
        resolve_device("tpu")


def test_init_runtime_uses_it(no_cuda):
    with pytest.raises(ConfigError, match="dist.device=cuda but no CUDA"):
        init_runtime(device="cuda")


# -- every entry point: one line, exit status 2 -----------------------------------------------------------------
@pytest.fixture
def fake_runs(tmp_path):
    """Two run folders with a valid config.yaml and a (never read) weights file: the device is resolved before
    any data or weights are opened."""
    runs = []
    for name in ("a", "b"):
        cfg = load_config([*tiny_model_args("timm_vit"), "peft.method=bias", f"out_dir={tmp_path}", f"name={name}"])
        atomic_write_text(cfg.run_dir / "config.yaml", cfg.to_yaml())
        (cfg.run_dir / "final").mkdir()
        (cfg.run_dir / "final" / "peft.safetensors").write_bytes(b"")
        runs.append(cfg.run_dir)
    return runs


def _one_line(rc, capsys):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    assert NO_CUDA in err
    return err


def test_evaluate_cli(no_cuda, fake_runs, capsys):
    from hpcfed.evaluate import cli

    _one_line(cli([f"run_dir={fake_runs[0]}", "dist.device=cuda"]), capsys)


def test_basin_errors_instead_of_falling_back_to_cpu(no_cuda, fake_runs, capsys):
    from hpcfed.analysis.basin import main

    _one_line(main([f"run_a={fake_runs[0]}", f"run_b={fake_runs[1]}", "dist.device=cuda"]), capsys)


def test_pretrain_cli(no_cuda, tmp_path, capsys):
    from hpcfed.pretrain.cli import main

    _one_line(main(["dist.device=cuda", f"out_dir={tmp_path}"], log=lambda s: None), capsys)


def test_main_cli_no_traceback(no_cuda, tmp_path, capsys):
    from hpcfed.main import cli

    _one_line(cli([*tiny_model_args("timm_vit"), "dist.device=cuda", f"out_dir={tmp_path}"]), capsys)
