"""Sources read through Hugging Face ``datasets`` (the optional ``data`` extra): parquet, JSON Lines, Arrow files,
``save_to_disk`` folders, CSV and image folders through ``datasets``' own builders, and hub data sets when
``data.allow_download`` is true (otherwise ``HF_DATASETS_OFFLINE=1``: nothing is downloaded).

:func:`source_format` decides how a path is read (``data.format``, or by its suffix); :class:`HFLoader` loads a
split into a ``datasets.Dataset`` (its Arrow cache in a temporary folder removed by :meth:`HFLoader.close`) and
turns the configured columns into a :class:`~hpcfed.data.sources.TextTable`; :class:`HFImageSource` is the
image source of ``hpcfed.data.readers`` for an image column.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from hpcfed.config import ConfigError, DataConfig, first_line
from hpcfed.data.errors import DataError
from hpcfed.data.sources import (
    TEXT_EXTENSIONS, TextTable, encode_labels, image_preprocessing, label_vocabulary, stack_images,
)

BUILT_IN = ("csv", "imagefolder")
"""Formats hpcfed reads itself (no ``datasets`` needed)."""
_BUILDERS = {"parquet": "parquet", "json": "json", "arrow": "arrow", "hf_csv": "csv"}
_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
_SPLITS = {"train": ("train",), "test": ("test", "validation", "valid", "dev")}


def source_format(path: str, fmt: str, kind: str, allow_download: bool) -> str:
    """How ``path`` is read: ``fmt`` unless 'auto'; else by suffix (.csv/.tsv/.tab/.txt 'csv', .parquet,
    .jsonl/.json 'json', .arrow), a ``save_to_disk`` folder 'disk', other folders / .zip 'imagefolder' (image
    data), and a name that is no local path 'hub' when downloads are allowed.

    Raises:
        DataError: the path does not exist (and is no allowed hub name), or its kind cannot be told.
        ConfigError: format 'hub' without data.allow_download.
    """
    p = Path(path).expanduser()
    if fmt == "hub" and not allow_download:
        raise ConfigError(f"data.format=hub reads {path} from the Hugging Face hub; set data.allow_download=true")
    if fmt != "auto":
        if fmt != "hub" and not p.exists():
            raise DataError(f"{path}: {kind} source not found")
        return fmt
    if not p.exists():
        hub_like = not str(path).startswith(("/", ".", "~")) and not p.suffix
        if allow_download and hub_like:
            return "hub"
        raise DataError(f"{path}: {kind} source not found"
                        + (" (a hub data set name needs data.allow_download=true)" if hub_like else ""))
    if p.is_dir():
        if any((p / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return "disk"
        if kind == "image":
            return "imagefolder"
        raise DataError(f"{path}: is a folder but no datasets save_to_disk folder; name a file or set data.format")
    suffix = p.suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        return "csv"
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if kind == "image" and suffix == ".zip":
        return "imagefolder"
    raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; set data.format "
                    f"(csv, parquet, json, arrow, disk, hf_csv, hf_imagefolder)")


def _import_datasets(allow_download: bool):
    if not allow_download:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise ConfigError("this data.source needs the `datasets` library: pip install 'hpcfed[data]'") from None
    datasets.config.HF_HUB_OFFLINE = not allow_download
    datasets.disable_progress_bars()
    return datasets


def _column(ds, path: str, role: str, col: Any, header: bool) -> str:
    """The column name of ``col`` (a name, or a 0-based index when ``header`` is false)."""
    names = list(ds.column_names)
    if not header:
        i = int(col)
        if not 0 <= i < len(names):
            raise DataError(f"{path}: data.{role}={col} is out of range (indices 0..{len(names) - 1}, "
                            f"data.header=false)")
        return names[i]
    if str(col) not in names:
        raise DataError(f"{path}: no column '{col}' (columns: {', '.join(names) or 'none'})")
    return str(col)


def _label_strings(ds, name: str) -> tuple[list[str], Optional[list[str]]]:
    """A label column as strings (ClassLabel ids as their names, integral floats as ints) and the ClassLabel
    order when there is one."""
    feature = ds.features[name]
    values = ds[name]
    names = getattr(feature, "names", None)
    if names is not None:
        return [names[v] if v is not None and 0 <= v < len(names) else "" for v in values], list(names)
    out = []
    for v in values:
        if v is None:
            out.append("")
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return out, None


def _texts(ds, path: str, name: str) -> list[str]:
    values = ds[name]
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(f"{path}: row {i + 1}: column '{name}' holds {type(v).__name__}, not text")
    return values


class HFLoader:
    """Loads the splits of one preparation through ``datasets``; the Arrow cache lives until :meth:`close`."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.cache: Optional[str] = None

    def load(self, path: str, fmt: str, role: str):
        """The ``role`` ('train' / 'test') split of ``path`` as a ``datasets.Dataset``: the only split there is,
        else 'train', or 'test' / 'validation' / 'valid' / 'dev'.

        Raises:
            DataError: unreadable by ``datasets``, or no split for ``role``.
        """
        datasets = _import_datasets(self.cfg.allow_download)
        if self.cache is None:
            self.cache = tempfile.mkdtemp(prefix="hpcfed-datasets-")
        try:
            if fmt == "disk":
                obj = datasets.load_from_disk(str(path))
            elif fmt == "hub":
                obj = datasets.load_dataset(str(path), cache_dir=self.cache)
            elif fmt == "hf_imagefolder":
                obj = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=self.cache)
            else:
                obj = datasets.load_dataset(_BUILDERS[fmt], data_files=str(path), cache_dir=self.cache)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; report one line
            raise DataError(f"{path}: cannot read as data.format={fmt} with datasets ({first_line(e)})") from None
        if not isinstance(obj, datasets.DatasetDict):
            return obj
        if len(obj) == 1:
            return next(iter(obj.values()))
        for split in _SPLITS[role]:
            if split in obj:
                return obj[split]
        raise DataError(f"{path}: no {' / '.join(_SPLITS[role])} split (splits: {', '.join(obj)})")

    def text_table(self, path: str, fmt: str, role: str, text: Any, label: Any, pair: Any = None,
                   client: Any = None) -> TextTable:
        """The configured columns of a split as a :class:`TextTable` (rows numbered from 1; labels as strings).

        Raises:
            DataError: unreadable source, missing column / index out of range, non-text values, no rows.
        """
        ds = self.load(path, fmt, role)
        if len(ds) == 0:
            raise DataError(f"{path}: no rows")
        header = self.cfg.header
        labels, order = _label_strings(ds, _column(ds, path, "label_column", label, header))
        table = TextTable(Path(path), _texts(ds, path, _column(ds, path, "text_column", text, header)), labels,
                          list(range(1, len(ds) + 1)), where="row", class_order=order)
        if pair is not None:
            table.pairs = _texts(ds, path, _column(ds, path, "text_columns[1]", pair, header))
        if client is not None:
            table.clients = [str(v) for v in ds[_column(ds, path, "client_column", client, header)]]
        return table

    def close(self) -> None:
        if self.cache is not None:
            shutil.rmtree(self.cache, ignore_errors=True)
            self.cache = None


class HFImageSource:
    """Images in a ``datasets`` image column (``data.image_column``), labels in ``data.label_column``; decoded
    (and resized if ``image_size``) per call to :meth:`encode`. Same interface as ``readers.ImageSource``."""

    def __init__(self, cfg: DataConfig, loader: HFLoader, formats: dict[str, str]):
        self.cfg = cfg
        self.loader = loader
        self.formats = formats
        self.data: dict[str, Any] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.paths: dict[str, str] = {}
        self.train_clients: Optional[list[str]] = None
        tables = {}
        for role, path in (("train", cfg.source), ("test", cfg.test_source)):
            if not path:
                continue
            ds = loader.load(path, formats[role], role)
            if len(ds) == 0:
                raise DataError(f"{path}: no rows")
            col = _column(ds, path, "image_column", cfg.image_column, cfg.header)
            feature = ds.features[col]
            if type(feature).__name__ != "Image":
                datasets = _import_datasets(cfg.allow_download)
                ds = ds.cast_column(col, datasets.Image())
            labels, order = _label_strings(ds, _column(ds, path, "label_column", cfg.label_column, cfg.header))
            table = TextTable(Path(path), [], labels, list(range(1, len(ds) + 1)), where="row", class_order=order)
            if role == "train" and cfg.client_column is not None:
                self.train_clients = [str(v) for v in
                                      ds[_column(ds, path, "client_column", cfg.client_column, cfg.header)]]
            self.data[role] = (ds, col)
            self.paths[role] = path
            tables[role] = table
        self.class_names, integer = label_vocabulary(tables["train"])
        for role, table in tables.items():
            self.labels[role] = encode_labels(table, self.class_names, integer)
        self.hw: Optional[tuple[int, int]] = (cfg.image_size, cfg.image_size) if cfg.image_size else None

    @property
    def example_shape(self) -> tuple[int, ...]:
        assert self.hw is not None
        return self.hw + (3,)

    def encode(self, split: str, idx: Sequence[int]) -> tuple[np.ndarray, None]:
        """uint8 (n, H, W, 3) RGB; every image must have the size of the first unless image_size is set."""
        from PIL import Image

        ds, col = self.data[split]
        size = self.cfg.image_size

        def decoded():
            for i in idx:
                where = f"{self.paths[split]}: row {int(i) + 1}"
                try:
                    im = ds[int(i)][col].convert("RGB")
                except Exception as e:  # noqa: BLE001 - PIL / datasets decode errors; report one line
                    raise DataError(f"{where}: cannot decode image ({first_line(e)})") from None
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                yield where, np.asarray(im, dtype=np.uint8)  # (H, W, 3)

        out, self.hw = stack_images(decoded(), len(idx), self.hw)
        return out, None

    def preprocessing(self) -> dict:
        assert self.hw is not None
        return image_preprocessing(self.hw, self.cfg.image_size)

    def sources(self) -> dict:
        return {role: {"path": str(p), "format": self.formats[role], "rows": len(self.data[role][0])}
                for role, p in self.paths.items()}

    def close(self) -> None:
        self.data.clear()
        self.loader.close()


__all__ = ["BUILT_IN", "HFLoader", "HFImageSource", "source_format"]
