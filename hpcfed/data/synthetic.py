"""Tiny deterministic sources for tests and smoke runs: a text table and an ImageFolder tree / zip.

Not used by prepare itself. Images are PNG by default (lossless, so shard contents can be compared exactly).
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

WORDS = ("good", "bad", "great", "awful", "movie", "plot", "actors", "boring", "fun", "slow", "the", "a", "very")


def write_text_table(path: str | Path, num_rows: int = 40, *, classes: Sequence[str] = ("0", "1"), seed: int = 0,
                     text_column: str = "sentence", label_column: str = "label") -> Path:
    """A TSV (``.tsv``: tab, no quoting) or CSV (other suffixes) with header ``text_column, label_column``.

    Labels cycle through ``classes`` in a seeded shuffle; texts are 1-12 random words.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    labels = [classes[i % len(classes)] for i in range(num_rows)]
    labels = [labels[i] for i in rng.permutation(num_rows)]
    rows = [(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 13)))), lab) for lab in labels]
    with open(path, "w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".tsv":
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        else:
            w = csv.writer(f, lineterminator="\n")
        w.writerow([text_column, label_column])
        w.writerows(rows)
    return path


def image_arrays(num_images: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB images, (num_images, size, size, 3)."""
    return np.random.default_rng(seed).integers(0, 256, size=(num_images, size, size, 3), dtype=np.uint8)


def _encode_image(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_image_folder(path: str | Path, classes: Sequence[str] = ("cat", "dog", "frog"), *, train_per_class: int = 6,
                       test_per_class: int = 2, size: int = 8, seed: int = 0, fmt: str = "PNG",
                       prefix: str = "", as_zip: Optional[bool] = None) -> dict[str, dict[str, np.ndarray]]:
    """Write ``[prefix/]{train,test}/<class>/NNNN.png`` to a directory, or to a zip when ``path`` ends in .zip.

    Returns ``{split: {member path: image array (size, size, 3) uint8}}`` (member paths relative to the root).
    """
    path = Path(path)
    as_zip = path.suffix.lower() == ".zip" if as_zip is None else as_zip
    ext = {"PNG": "png", "JPEG": "jpg"}.get(fmt.upper(), fmt.lower())
    written: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    k = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c in classes:
            imgs = image_arrays(per_class, size, seed=seed + 1000 * k)
            k += 1
            for i, arr in enumerate(imgs):
                written[split][f"{prefix}{split}/{c}/{i:04d}.{ext}"] = arr
    if as_zip:
        with zipfile.ZipFile(path, "w") as z:
            for split in written:
                for name, arr in written[split].items():
                    z.writestr(name, _encode_image(arr, fmt))
    else:
        for split in written:
            for name, arr in written[split].items():
                f = path / name
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(_encode_image(arr, fmt))
    return written
