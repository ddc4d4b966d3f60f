"""Evaluate a run's trained PEFT parameters on the global test split.

Usage::

    python -m hpcfed.evaluate run_dir=runs/NAME [export=DIR | weights=FILE] [key=value ...]

Reads ``<run_dir>/config.yaml`` (``key=value`` words override it, e.g. ``dist.device=cpu`` or
``eval.batch_size=64``), rebuilds the model with the same seed (so a random-init backbone is the run's own),
applies the PEFT method, loads the trained parameters — from ``export=DIR`` (a folder written by
:func:`hpcfed.export.export_peft`), ``weights=FILE`` (a :func:`hpcfed.export.save_peft` file), or by default
``<run_dir>/final/peft.safetensors`` — and evaluates on the test split of the prepared shards
(``cfg.data.resolved_shard_dir()``). Prints one JSON line: ``accuracy``, ``loss`` (mean cross-entropy),
``num_examples``, ``source``. Bad input prints ``error: ...`` and exits with 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from hpcfed.compose import load_run_config
from hpcfed.config import ConfigError

_OWN_KEYS = ("run_dir", "export", "weights")


def _parse(argv: Sequence[str]) -> tuple[dict, list[str]]:
    own: dict = {}
    rest: list[str] = []
    for word in argv:
        key, eq, value = word.partition("=")
        if not eq:
            raise ConfigError(f"command-line argument {word!r} is not key=value")
        if key in _OWN_KEYS:
            own[key] = value
        elif key == "config":
            raise ConfigError("config= is not accepted: the run's config.yaml is used (override keys instead)")
        else:
            rest.append(word)
    if "run_dir" not in own:
        raise ConfigError("run_dir=<runs/NAME> is required")
    if "export" in own and "weights" in own:
        raise ConfigError("give export= or weights=, not both")
    return own, rest


def _device(cfg) -> torch.device:
    if cfg.dist.device == "cpu" or not torch.cuda.is_available():
        if cfg.dist.device == "cuda":
            raise ConfigError("dist.device=cuda but no CUDA device is available")
        return torch.device("cpu")
    return torch.device("cuda")


def evaluate_run(argv: Sequence[str]) -> dict:
    """Run the evaluation described by ``argv`` (see the module docstring); returns the printed metrics.

    Raises:
        ConfigError, DataError, ModelError, LayoutError: missing run folder / weights, shards not prepared,
            weights that do not fit the model.
    """
    from hpcfed.data import ShardedDataset
    from hpcfed.export import load_export, load_peft
    from hpcfed.fl.client import evaluate
    from hpcfed.models import build_model
    from hpcfed.peft import LayoutError, apply_peft

    own, overrides = _parse(argv)
    run_dir = Path(own["run_dir"])
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir}: no such folder")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run_dir={run_dir}: no config.yaml (not a run folder)")
    cfg = load_run_config([f"config={run_dir / 'config.yaml'}", *overrides])
    if "export" in own:
        source = Path(own["export"])
    else:
        source = Path(own.get("weights") or run_dir / "final" / "peft.safetensors")
        if not source.is_file():
            raise LayoutError(f"{source}: no such file (did the run finish? give export=DIR or weights=FILE)")
    device = _device(cfg)
    if cfg.dist.num_threads:
        torch.set_num_threads(cfg.dist.num_threads)
    with ShardedDataset(cfg.data.resolved_shard_dir(), expect_name=cfg.data.name) as dataset:
        test = dataset.load_test()
        num_classes = cfg.model.num_classes or dataset.num_classes
        torch.manual_seed(cfg.seed)  # as hpcfed.main: the same head / LoRA / adapter init
        model = build_model(cfg.model, num_classes, class_names=dataset.class_names).to(device)
        flat = apply_peft(model, cfg.peft)
        theta = load_export(model, flat, source) if "export" in own else load_peft(source, flat)
        with torch.no_grad():
            flat.data.copy_(theta.to(flat.data.device))
        sums = evaluate(model, test, device, batch_size=cfg.eval.batch_size, bf16=cfg.fl.local.bf16).cpu()
    n = int(sums[2])
    return {"accuracy": float(sums[1]) / max(n, 1), "loss": float(sums[0]) / max(n, 1), "num_examples": n,
            "source": str(source), "method": cfg.peft.method}


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download (as hpcfed.main)
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from hpcfed.data import DataError
    from hpcfed.models import ModelError
    from hpcfed.peft import LayoutError

    try:
        metrics = evaluate_run(argv)
    except (ConfigError, DataError, ModelError, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
