"""Checkpoints of a federated run: atomic, safe to load, exact to resume.

A checkpoint is one safetensors file ``<run_dir>/checkpoints/round-XXXXXX.safetensors`` holding

* ``theta_global`` — the global flat buffer (n,) fp32;
* ``server_opt.*`` — the server optimizer's state (momentum / Adam moments, step count);
* ``client_state.*`` — persistent per-client state of algorithms that keep some;
* ``rng.torch`` — the torch CPU RNG state (uint8);

and metadata: ``round``, ``config_hash``, ``metrics`` (the JSON history so far), ``format``.
Writes go to a temp file, are fsynced and renamed, then the directory is fsynced; the last ``keep_last`` are
kept. Reading uses safetensors only (no pickle is ever executed).

Every rank computes identical round results, so rank 0 alone writes; on resume every rank reads the same
file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hpcfed.atomic import atomic_path

FORMAT = "hpcfed-checkpoint-1"
_NAME = re.compile(r"^round-(\d{6,})\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, another config, another layout)."""


@dataclass
class Checkpoint:
    path: Path
    round: int
    config_hash: str
    tensors: dict[str, torch.Tensor]
    history: list[dict]


def checkpoint_path(ckpt_dir: Path, round_idx: int) -> Path:
    return ckpt_dir / f"round-{round_idx:06d}.safetensors"


def save_checkpoint(ckpt_dir: Path, round_idx: int, tensors: dict[str, torch.Tensor], *, config_hash: str,
                    history: list[dict], keep_last: int = 3) -> Path:
    """Write a checkpoint atomically (temp file, fsync, rename) and delete all but the newest ``keep_last``.

    Args:
        tensors: name -> tensor (moved to CPU, made contiguous).
        history: per-round metrics so far (JSON-serialisable).
    """
    path = checkpoint_path(ckpt_dir, round_idx)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": FORMAT, "round": str(round_idx), "config_hash": config_hash,
            "metrics": json.dumps(history)}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=meta)
    for old in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files in ``ckpt_dir``, oldest round first (temp files excluded)."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check one checkpoint file.

    Raises:
        CheckpointError: unreadable, truncated, or not an hpcfed checkpoint (the message names the file).
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not an hpcfed checkpoint (format={meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    try:
        history = json.loads(meta["metrics"])
        rnd = int(meta["round"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged metadata ({e})") from None
    return Checkpoint(path, rnd, meta.get("config_hash", ""), tensors, history)


def find_resume_checkpoint(ckpt_dir: Path, resume: str, *, config_hash: str, force: bool,
                           log=None) -> Optional[Checkpoint]:
    """Pick the checkpoint to resume from.

    Args:
        resume: 'auto' (newest valid file in ``ckpt_dir``; None when there is none), 'none', or a file path.
        config_hash: the current run's config hash; a checkpoint of another config is refused unless
            ``force``.

    Raises:
        CheckpointError: an explicit path that is unusable, or a checkpoint from another config (without
            ``force``).
    """
    if resume == "none":
        return None
    if resume == "auto":
        ckpt = None
        for path in reversed(list_checkpoints(ckpt_dir)):
            try:
                ckpt = load_checkpoint(path)
                break
            except CheckpointError as e:  # a damaged newest file: fall back to the one before
                if log:
                    log.warning("skipping %s", e)
        if ckpt is None:
            return None
    else:
        if not Path(resume).is_file():
            raise CheckpointError(f"resume={resume}: no such checkpoint file")
        ckpt = load_checkpoint(Path(resume))
    if ckpt.config_hash != config_hash and not force:
        raise CheckpointError(
            f"{ckpt.path}: written by a different config (hash {ckpt.config_hash} != {config_hash}); "
            "use checkpoint.force_resume=true to resume anyway, or checkpoint.resume=none to start afresh")
    return ckpt
