"""The shard directory on disk: is it ours to replace, is it current, and the atomic install of a finished one.

:func:`hpcfed.data.pipeline.prepare` builds a directory under a temporary name and hands it to :func:`install`,
which renames it into place (moving a forced-over old one aside first, and putting it back if the rename fails).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from hpcfed.config import DataConfig
from hpcfed.data.errors import DataError
from hpcfed.data.report import PLOT_NAME
from hpcfed.data.shards import INDEX_NAME, TEST_FILE, jsonable, read_index

_OUR_FILES = (INDEX_NAME, TEST_FILE, PLOT_NAME)


def _has_phantom_class(index: dict) -> bool:
    """An index written before class ids were made contiguous, with an integer class no example has (labels
    1..4 gave a class '0'): such a directory is rebuilt."""
    if "label_mapping" in index or not all(str(n).isdigit() for n in index["class_names"]):
        return False
    hists = [c.get("label_histogram") for c in index["clients"]] + [(index.get("test") or {}).get("label_histogram")]
    total = [sum(col) for col in zip(*[h for h in hists if h])]
    return 0 in total


def has_content(path: Path) -> bool:
    """``path`` exists and is a file or a non-empty directory."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_replaceable(path: Path) -> None:
    """Refuse to overwrite anything that is not a shard directory (a mistyped data.shard_dir)."""
    if not path.is_dir():
        raise DataError(f"{path}: exists and is not a directory; refusing to overwrite")
    for p in path.iterdir():
        if not (p.name in _OUR_FILES or (p.name.startswith("shard-") and p.name.endswith(".h5"))):
            raise DataError(f"{path}: exists and is not a shard directory (contains {p.name}); refusing to overwrite")


def is_current(out: Path, cfg: DataConfig, tokenizer: Optional[str]) -> bool:
    """A complete directory prepared from the same data config (and tokenizer), whose files are all there."""
    try:
        index = read_index(out)
    except DataError:
        return False
    if index["data_config"] != jsonable(cfg.identity()) or index["name"] != cfg.name or _has_phantom_class(index):
        return False
    if cfg.kind == "text" and index["preprocessing"].get("tokenizer", {}).get("name_or_path") != tokenizer:
        return False
    files = [(s["file"], s.get("bytes")) for s in index["shards"]]
    if index.get("test"):
        files.append((index["test"]["file"], index["test"].get("bytes")))
    return all((out / f).is_file() and (out / f).stat().st_size == b for f, b in files)


def install(tmp: Path, out: Path, cfg: DataConfig, tokenizer: Optional[str], force: bool) -> Path:
    """Rename the finished temp dir to ``out`` (moving an old one aside first when forced)."""
    old: Optional[Path] = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif force:
            check_replaceable(out)
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        elif is_current(out, cfg, tokenizer):  # another process finished the same data first
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        else:
            raise DataError(f"{out}: appeared while preparing and holds other data; use force=True / --force")
    try:
        os.replace(tmp, out)
    except OSError:
        if is_current(out, cfg, tokenizer):
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous complete directory back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out
