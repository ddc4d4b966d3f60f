"""Reading sources: CSV/TSV text tables and ImageFolder trees (a directory or a .zip of one).

Every problem is raised as :class:`DataError` with one line naming the file (and line or member) and the
problem.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from hpcfed.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
TEXT_EXTENSIONS = (".tsv", ".tab", ".csv", ".txt")


# ---------------------------------------------------------------------------------------------- text tables


@dataclass
class TextTable:
    """Rows of a text table: ``texts[i]`` with raw label string ``labels[i]`` read at ``line_numbers[i]``."""

    path: Path
    texts: list[str]
    labels: list[str]
    line_numbers: list[int]


def _decode_utf8(path: Path, raw: bytes) -> str:
    """Decode UTF-8 (a leading BOM is dropped); on failure name the line and column of the first bad byte."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {col}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
            "re-encode the file as UTF-8"
        ) from None


def read_text_table(path: str | Path, text_column: str, label_column: str) -> TextTable:
    """Read a CSV (``,``, standard quoting) or TSV (``.tsv``/``.tab``: tab, ``csv.QUOTE_NONE``) file with a
    header row naming ``text_column`` and ``label_column``. Blank lines are skipped.

    Raises:
        DataError: missing/unreadable file, not UTF-8 (with line number), missing column, a row with the wrong
            number of fields.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: text source not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    text = _decode_utf8(path, raw)
    if path.suffix.lower() in (".tsv", ".tab"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header row with '{text_column}' and '{label_column}')")
        header = [h.strip() for h in header]
        for col in (text_column, label_column):
            if col not in header:
                raise DataError(f"{path}: no column '{col}' in header (columns: {', '.join(header) or 'none'})")
        ti, li = header.index(text_column), header.index(label_column)
        texts: list[str] = []
        labels: list[str] = []
        lines: list[int] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {reader.line_num}: {len(row)} fields, header has {len(header)}"
                    + (" (a tab inside the text?)" if "\t" not in header and len(row) > len(header) else "")
                )
            texts.append(row[ti])
            labels.append(row[li].strip())
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}") from None
    if not texts:
        raise DataError(f"{path}: no rows after the header")
    return TextTable(path, texts, labels, lines)


def label_vocabulary(table: TextTable) -> tuple[list[str], bool]:
    """Class names of a training table and whether labels are integers.

    Integer labels (every label parses as an int >= 0) give classes ``'0' .. str(max)``; otherwise the sorted
    unique strings are the classes.

    Raises:
        DataError: empty label, negative integer, integers mixed with strings.
    """
    ints: list[Optional[int]] = []
    for lab, line in zip(table.labels, table.line_numbers):
        if lab == "":
            raise DataError(f"{table.path}: line {line}: empty label")
        try:
            ints.append(int(lab))
        except ValueError:
            ints.append(None)
    n_int = sum(v is not None for v in ints)
    if n_int == len(ints):
        bad = next((i for i, v in enumerate(ints) if v < 0), None)  # type: ignore[operator]
        if bad is not None:
            raise DataError(f"{table.path}: line {table.line_numbers[bad]}: negative label {table.labels[bad]!r}")
        return [str(i) for i in range(max(ints) + 1)], True  # type: ignore[type-var]
    if n_int:
        i = next(i for i, v in enumerate(ints) if v is not None)
        j = next(i for i, v in enumerate(ints) if v is None)
        raise DataError(
            f"{table.path}: label column mixes integers and strings "
            f"(line {table.line_numbers[i]}: {table.labels[i]!r}, line {table.line_numbers[j]}: {table.labels[j]!r})"
        )
    return sorted(set(table.labels)), False


def encode_labels(table: TextTable, class_names: list[str], integer: bool) -> np.ndarray:
    """Map a table's raw labels to class ids (int64, shape (N,)).

    Raises:
        DataError: a label that is not one of ``class_names`` (reports the line).
    """
    out = np.empty(len(table.labels), dtype=np.int64)
    lookup = {name: i for i, name in enumerate(class_names)}
    for k, (lab, line) in enumerate(zip(table.labels, table.line_numbers)):
        if integer:
            try:
                v = int(lab)
            except ValueError:
                v = -1
            ok = 0 <= v < len(class_names)
        else:
            v = lookup.get(lab, -1)
            ok = v >= 0
        if not ok:
            known = f"0..{len(class_names) - 1}" if integer else ", ".join(class_names[:10]) + (
                ", ..." if len(class_names) > 10 else "")
            raise DataError(f"{table.path}: line {line}: unknown label {lab!r} (training labels: {known})")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------- image folders


class ImageFolderSource:
    """An ImageFolder tree, ``[prefix/]<split>/<class>/**/<image>``, in a directory or a .zip file.

    Members are addressed by POSIX paths relative to the directory / inside the zip. ``split`` is 'train',
    'test', or '' (class folders at the top, for a separate test source).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip: Optional[zipfile.ZipFile] = None
        if self.path.is_dir():
            names = []
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = Path(dirpath).relative_to(self.path)
                names.extend((rel / f).as_posix() for f in filenames)
        elif self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{self.path}: not a readable zip file ({e})") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            raise DataError(f"{self.path}: image source not found")
        self.images = sorted(
            n for n in names
            if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("__MACOSX/")
            and not PurePosixPath(n).name.startswith(".")
        )

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def describe(self, member: str) -> str:
        """How to name a member in an error message."""
        return f"{self.path}: member {member}" if self._zip is not None else str(self.path / member)

    def split(self, split: str) -> tuple[list[str], list[str]]:
        """Image members of a split and their class folder names, sorted by path.

        ``split=''`` takes class folders at the top (or under a single wrapping folder).
        The prefix is the shortest folder path under which ``<split>/<class>/<file>`` occurs.
        """
        prefixes = set()
        for n in self.images:
            parts = n.split("/")
            if split:
                for i, p in enumerate(parts[:-2]):
                    if p == split:
                        prefixes.add("/".join(parts[:i + 1]) + "/")
                        break
            elif len(parts) >= 2:
                prefixes.add("")
        if not prefixes:
            return [], []
        prefix = min(prefixes, key=lambda p: (p.count("/"), p))
        if not split:
            tops = {n.split("/")[0] for n in self.images}
            if len(tops) == 1 and all(n.count("/") >= 2 for n in self.images):
                prefix = tops.pop() + "/"  # one wrapping folder around the class folders
        members = [n for n in self.images if n.startswith(prefix) and n.count("/") >= prefix.count("/") + 1]
        classes = [n[len(prefix):].split("/")[0] for n in members]
        return members, classes

    def read(self, member: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(member)
            return (self.path / member).read_bytes()
        except (zipfile.BadZipFile, OSError, KeyError, EOFError, ValueError) as e:
            raise DataError(f"{self.describe(member)}: cannot read ({e})") from None

    def __enter__(self) -> "ImageFolderSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_image(src: ImageFolderSource, member: str, size: Optional[int]) -> np.ndarray:
    """Decode one image to uint8 RGB, shape (H, W, 3); resized to (size, size) with bicubic filtering if given.

    Raises:
        DataError: the bytes do not decode as an image (names the member).
    """
    from PIL import Image, UnidentifiedImageError

    data = src.read(member)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{src.describe(member)}: cannot decode image ({e})") from None
