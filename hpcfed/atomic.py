"""Atomic file writes: a reader (another rank, a resumed run, a user) sees the old file or the new one, never a
partial one. The one helper behind every file hpcfed writes whole (checkpoints, PEFT weights, exports, configs,
client states, plots, derived data).

    with atomic_path(path) as tmp:      # tmp: a unique name in path's folder
        save_file(tensors, str(tmp))    # write it any way you like
    # on a clean exit: tmp fsynced, renamed over path, the folder fsynced; on an exception: tmp removed
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Optional


def fsync_dir(path: Path) -> None:
    """Make a rename inside folder ``path`` durable (fsync of the folder); a file system that cannot fsync a
    folder is skipped silently."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, fsync: bool = True, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if missing); when the block ends without an
    exception, fsync the temporary file (``fsync``), give it permission bits ``mode`` (default: 0o666 less the
    umask, as a plain ``open`` would — some writers create 0600 files), rename it over ``path`` and fsync the
    folder. On an exception the temporary file is removed and ``path`` is untouched.

    Raises:
        OSError: the folder cannot be created, or the file cannot be synced or renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`); returns ``path`` as a Path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
