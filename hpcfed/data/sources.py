"""Reading sources: CSV/TSV text tables and ImageFolder trees (a directory or a .zip of one).

Every problem is raised as :class:`DataError` with one line naming the file (and line or member) and the
problem.
"""

from __future__ import annotations

import csv
import io
import itertools
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
    """Rows of a text table: ``texts[i]`` (and ``pairs[i]``, the second text of a sentence pair) with raw label
    string ``labels[i]`` and raw client id ``clients[i]`` (``data.client_column``), read at ``line_numbers[i]``
    (a 1-based file line, or a row number when ``where`` is 'row')."""

    path: Path
    texts: list[str]
    labels: list[str]
    line_numbers: list[int]
    pairs: Optional[list[str]] = None
    clients: Optional[list[str]] = None
    where: str = "line"
    class_order: Optional[list[str]] = None
    """The data set's own class order (a ``datasets`` ClassLabel), used instead of sorting."""


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


def _column_positions(path: Path, first: list[str], wanted: dict[str, str | int], header: bool) -> dict[str, int]:
    """Position of each wanted column (role -> name, or 0-based index when ``header`` is false)."""
    pos: dict[str, int] = {}
    for role, col in wanted.items():
        if header:
            if str(col) not in first:
                raise DataError(f"{path}: no column '{col}' in header (columns: {', '.join(first) or 'none'})")
            pos[role] = first.index(str(col))
        else:
            i = int(col)
            if not 0 <= i < len(first):
                raise DataError(f"{path}: data.{role}={col} is out of range: line 1 has {len(first)} fields "
                                f"(indices 0..{len(first) - 1}, data.header=false)")
            pos[role] = i
    return pos


def read_text_table(path: str | Path, text_column: str | int, label_column: str | int, *,
                    pair_column: Optional[str | int] = None, client_column: Optional[str | int] = None,
                    header: bool = True) -> TextTable:
    """Read a CSV (``,``, standard quoting) or TSV (``.tsv``/``.tab``: tab, ``csv.QUOTE_NONE``) file. With
    ``header`` the first row names the columns; without, columns are 0-based indices and every row is data
    (AG News style). ``pair_column`` is the second text of a sentence pair; ``client_column`` a client id.
    Blank lines are skipped.

    Raises:
        DataError: missing/unreadable file, not UTF-8 (with line number), missing column or index out of range,
            a row with the wrong number of fields.
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
    wanted: dict[str, str | int] = {"text_column": text_column, "label_column": label_column}
    if pair_column is not None:
        wanted["text_columns[1]"] = pair_column
    if client_column is not None:
        wanted["client_column"] = client_column
    cols: dict[str, list[str]] = {role: [] for role in wanted}
    lines: list[int] = []
    try:
        first = next(reader, None)
        if first is None:
            raise DataError(f"{path}: empty file" + (
                f" (expected a header row with '{text_column}' and '{label_column}')" if header else ""))
        if header:
            first = [h.strip() for h in first]
        pos = _column_positions(path, first, wanted, header)
        rows = reader if header else itertools.chain([first], reader)
        for row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(first):
                raise DataError(
                    f"{path}: line {reader.line_num}: {len(row)} fields, "
                    + (f"header has {len(first)}" if header else f"line 1 has {len(first)}")
                    + (" (a tab inside the text?)" if "\t" not in first and len(row) > len(first) else "")
                )
            for role, i in pos.items():
                cols[role].append(row[i] if role in ("text_column", "text_columns[1]") else row[i].strip())
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: {e}") from None
    if not lines:
        raise DataError(f"{path}: no rows" + (" after the header" if header else ""))
    return TextTable(path, cols["text_column"], cols["label_column"], lines, cols.get("text_columns[1]"),
                     cols.get("client_column"))


def _parse_ints(table: TextTable) -> Optional[list[int]]:
    """The labels as ints when every label is one (else None).

    Raises:
        DataError: empty label, negative integer, integers mixed with strings.
    """
    ints: list[Optional[int]] = []
    for lab, line in zip(table.labels, table.line_numbers):
        if lab == "":
            raise DataError(f"{table.path}: {table.where} {line}: empty label")
        try:
            ints.append(int(lab))
        except ValueError:
            ints.append(None)
    n_int = sum(v is not None for v in ints)
    if n_int == len(ints):
        bad = next((i for i, v in enumerate(ints) if v < 0), None)  # type: ignore[operator]
        if bad is not None:
            raise DataError(f"{table.path}: {table.where} {table.line_numbers[bad]}: negative label "
                            f"{table.labels[bad]!r}")
        return ints  # type: ignore[return-value]
    if n_int:
        i = next(i for i, v in enumerate(ints) if v is not None)
        j = next(i for i, v in enumerate(ints) if v is None)
        w = table.where
        raise DataError(
            f"{table.path}: label column mixes integers and strings "
            f"({w} {table.line_numbers[i]}: {table.labels[i]!r}, {w} {table.line_numbers[j]}: {table.labels[j]!r})"
        )
    return None


def label_vocabulary(table: TextTable) -> tuple[list[str], bool]:
    """Class names of a training table and whether labels are integers.

    Class ids are contiguous, 0..C-1, over the labels that occur: integer labels (every label parses as an int
    >= 0) are ordered by value and named by it (labels 1..4 give ids 0..3 named '1'..'4', with no empty class
    '0'); otherwise the sorted unique strings are the classes (or those of ``table.class_order`` that occur).

    Raises:
        DataError: empty label, negative integer, integers mixed with strings.
    """
    if table.class_order is not None:
        present = set(table.labels)
        return [n for n in table.class_order if n in present], False
    ints = _parse_ints(table)
    if ints is not None:
        return [str(v) for v in sorted(set(ints))], True
    return sorted(set(table.labels)), False


def _describe_classes(class_names: list[str], integer: bool) -> str:
    if integer and [int(c) for c in class_names] == list(range(int(class_names[0]), int(class_names[-1]) + 1)):
        return f"{class_names[0]}..{class_names[-1]}"
    return ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")


def encode_labels(table: TextTable, class_names: list[str], integer: bool) -> np.ndarray:
    """Map a table's raw labels to class ids (int64, shape (N,)): the position of the label among the training
    ``class_names`` (integer labels are matched by value, so '01' is class '1').

    Raises:
        DataError: a label that is not one of ``class_names`` (reports the file, line and label).
    """
    out = np.empty(len(table.labels), dtype=np.int64)
    lookup = {name: i for i, name in enumerate(class_names)}
    for k, (lab, line) in enumerate(zip(table.labels, table.line_numbers)):
        key = lab
        if integer:
            try:
                key = str(int(lab))
            except ValueError:
                pass
        v = lookup.get(key, -1)
        if v < 0:
            raise DataError(f"{table.path}: {table.where} {line}: unknown label {lab!r} "
                            f"(training labels: {_describe_classes(class_names, integer)})")
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


def stack_images(decoded, n: int, hw: Optional[tuple[int, int]]) -> tuple[np.ndarray, tuple[int, int]]:
    """Stack ``n`` decoded images into one array; every image must have the size of the first (or ``hw``).

    Args:
        decoded: iterable of ``(where, image)``: a description of the image for errors (file, member or row) and
            its uint8 (H, W, 3) RGB array.
        n: how many ``decoded`` yields (>= 1).
        hw: (H, W) that earlier batches had, or None.

    Returns:
        (uint8 (n, H, W, 3) array, (H, W)).

    Raises:
        DataError: an image whose size differs (naming it, and pointing to ``data.image_size``).
    """
    out: Optional[np.ndarray] = None
    for k, (where, img) in enumerate(decoded):
        if hw is None:
            hw = img.shape[:2]
        if img.shape[:2] != hw:
            raise DataError(f"{where}: image is {img.shape[1]}x{img.shape[0]}, earlier images are {hw[1]}x{hw[0]}; "
                            f"set data.image_size to resize")
        if out is None:
            out = np.empty((n,) + img.shape, dtype=np.uint8)  # (n, H, W, 3)
        out[k] = img
    assert out is not None and hw is not None
    return out, hw


def image_preprocessing(hw: tuple[int, int], image_size: Optional[int]) -> dict:
    """The shard index's ``preprocessing`` entry of an image data set stored as raw uint8 NHWC RGB."""
    return {"kind": "image", "height": hw[0], "width": hw[1], "channels": 3, "dtype": "uint8",
            "layout": "NHWC", "resize": image_size, "resample": "bicubic" if image_size else None,
            "normalization": "none (raw uint8 RGB; mean/std normalization is the model's job)"}
