"""Saving and loading the global PEFT parameters as safetensors with their flat layout.

The file holds one tensor per trainable parameter (names as in the model) and metadata:
``layout`` (JSON list of [name, shape, offset]), ``peft_method`` and ``config_hash``. Loading never
unpickles anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hpcfed.peft import FlatParams, LayoutError


def save_peft(path: Path, flat: FlatParams, theta: Optional[torch.Tensor] = None, **metadata: str) -> Path:
    """Write ``theta`` (default: the flat buffer's values) as named tensors to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in flat.state_dict(theta).items()}
    meta = {"layout": flat.layout_json(), **{k: str(v) for k, v in metadata.items()}}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_peft(path: Path, flat: FlatParams) -> torch.Tensor:
    """Read a file written by :func:`save_peft` into an (n,) vector of ``flat``'s layout.

    Raises:
        LayoutError: the file is unreadable or does not fit the model (names the file).
    """
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LayoutError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return flat.flat_from_state_dict(sd)
    except LayoutError as e:
        raise LayoutError(f"{path}: {e}") from None
