"""The source readers of :mod:`hpcfed.data.pipeline`: a text table (CSV/TSV, or anything ``datasets`` reads)
tokenized with the backbone's fast tokenizer (:class:`TextSource`), an ImageFolder directory / zip
(:class:`ImageSource`) and an image column read through ``datasets`` (``hfsource.HFImageSource``);
:func:`open_source` picks one.

Both hold the class names and the integer labels of each split (``train``, and ``test`` when there is one)
and turn the examples at given indices into the arrays a shard stores (:meth:`encode`); they also describe
their preprocessing and source files for the index. :func:`tokenizer_name` is the tokenizer identity a text
preparation is keyed on.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from hpcfed.config import ConfigError, DataConfig, first_line
from hpcfed.data.errors import DataError
from hpcfed.data.hfsource import BUILT_IN, HFImageSource, HFLoader, source_format
from hpcfed.data.sources import (
    TEXT_EXTENSIONS, ImageFolderSource, decode_image, encode_labels, image_preprocessing, label_vocabulary,
    read_text_table, stack_images,
)

log = logging.getLogger(__name__)


def _norm_name(name: str) -> str:
    """Tokenizer identity: an existing local path is made absolute; a hub name is kept as given."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def tokenizer_name(cfg: DataConfig, tokenizer: Optional[str]) -> str:
    """The tokenizer a text data set is prepared with: ``cfg.tokenizer``, else ``tokenizer`` (normalised)."""
    name = cfg.tokenizer or tokenizer
    if not name:
        raise ConfigError("data.tokenizer is null and no tokenizer (model.path) was given; set data.tokenizer=PATH")
    return _norm_name(name)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str):
    """The fast tokenizer at ``name``, set to right padding with a pad token (cached per process)."""
    looks_local = name.startswith(("/", ".", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().exists():
        raise DataError(f"{name}: tokenizer folder not found")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; report one line
        raise DataError(f"{name}: cannot load tokenizer ({first_line(e)})") from None
    if not getattr(tok, "is_fast", False):
        log.warning("tokenizer %s is not a fast tokenizer; prepare will be slow", name)
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise DataError(f"{name}: tokenizer has no pad token (nor an eos token to pad with)")
        tok.pad_token = tok.eos_token
    return tok


def _formats(cfg: DataConfig) -> dict[str, str]:
    """How each source (train, and test when set) is read (:func:`hpcfed.data.hfsource.source_format`)."""
    out = {"train": source_format(cfg.source, cfg.format, cfg.kind, cfg.allow_download)}
    if cfg.test_source:
        out["test"] = source_format(cfg.test_source, cfg.format, cfg.kind, cfg.allow_download)
    return out


def open_source(cfg: DataConfig, tokenizer: Optional[str]):
    """The reader for ``cfg``: :class:`TextSource`, :class:`ImageSource` (ImageFolder) or ``HFImageSource``.

    Raises:
        DataError / ConfigError: as the readers; a text format for image data or the reverse.
    """
    if cfg.kind == "image" and cfg.test_source and cfg.test_source.lower().endswith(TEXT_EXTENSIONS):
        return ImageSource(cfg)  # raises its one-line ConfigError
    formats = _formats(cfg)
    if cfg.kind == "text":
        assert tokenizer is not None
        return TextSource(cfg, tokenizer, formats)
    if set(formats.values()) <= {"imagefolder"} and cfg.client_column is None:
        return ImageSource(cfg)
    if "csv" in formats.values():
        raise ConfigError(f"data.kind=image but data.source={cfg.source} is a text table")
    if "imagefolder" in formats.values():
        raise ConfigError("data.partition=natural on images needs a source read through datasets (parquet, "
                          "disk, hf_imagefolder with a metadata file), not a plain ImageFolder"
                          if cfg.client_column is not None else
                          "data.source and data.test_source must both be ImageFolders or both datasets sources")
    return HFImageSource(cfg, HFLoader(cfg), formats)


class TextSource:
    """A text table tokenized per call to :meth:`encode` with the backbone's fast tokenizer; one text column,
    or two (``data.text_columns``) encoded as a sentence pair ``tokenizer(a, b)``."""

    def __init__(self, cfg: DataConfig, tokenizer: str, formats: Optional[dict[str, str]] = None):
        self.cfg = cfg
        self.formats = formats or _formats(cfg)
        self.loader = HFLoader(cfg)
        cols = list(cfg.text_columns) if cfg.text_columns else [cfg.text_column]
        self.pair = len(cols) == 2
        try:
            train = self._read(cfg.source, "train", cols, cfg.client_column)
            self.class_names, integer = label_vocabulary(train)
            self.tables = {"train": train}
            self.labels = {"train": encode_labels(train, self.class_names, integer)}
            if cfg.test_source:
                test = self._read(cfg.test_source, "test", cols, None)
                self.tables["test"] = test
                self.labels["test"] = encode_labels(test, self.class_names, integer)
        finally:
            self.loader.close()  # the columns are in memory now
        self.train_clients = train.clients
        self.tokenizer_name = tokenizer
        self.example_shape: tuple[int, ...] = (cfg.max_length,)

    def _read(self, path: str, role: str, cols: list, client: Optional[str]):
        fmt = self.formats[role]
        pair = cols[1] if self.pair else None
        if fmt == "csv":
            return read_text_table(path, cols[0], self.cfg.label_column, pair_column=pair, client_column=client,
                                   header=self.cfg.header)
        if fmt in BUILT_IN:
            raise ConfigError(f"data.kind=text but {path} is read as data.format={fmt}")
        return self.loader.text_table(path, fmt, role, cols[0], self.cfg.label_column, pair, client)

    @property
    def tok(self):
        """Loaded on first use, so that data errors are reported before the (slow) tokenizer load."""
        return _load_tokenizer(self.tokenizer_name)
    def encode(self, split: str, idx: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Token ids int32 (n, max_length) right-padded with the pad id, and lengths int32 (n,)."""
        table = self.tables[split]
        texts = [table.texts[i] for i in idx]
        pairs = [table.pairs[i] for i in idx] if table.pairs is not None else None
        enc = self.tok(texts, pairs, truncation=True, max_length=self.cfg.max_length, padding="max_length",
                       return_attention_mask=True, return_token_type_ids=False, return_tensors="np")
        ids = np.ascontiguousarray(enc["input_ids"], dtype=np.int32)  # (n, L)
        lengths = enc["attention_mask"].sum(axis=1).astype(np.int32)  # (n,)
        return ids, lengths

    def preprocessing(self) -> dict:
        tok = self.tok
        pair = {"pair": {"columns": list(self.cfg.text_columns), "encoding": "tokenizer(a, b): a [sep] b, "
                         "truncation longest_first; token type ids not stored"}} if self.pair else {}
        return {
            "kind": "text",
            **pair,
            "tokenizer": {
                "name_or_path": self.tokenizer_name,
                "class": type(tok).__name__,
                "vocab_size": len(tok),
                "pad_id": int(tok.pad_token_id),
                "max_length": self.cfg.max_length,
                "padding_side": "right",
                "truncation": True,
            },
        }

    def sources(self) -> dict:
        return {split: {"path": str(t.path), "bytes": t.path.stat().st_size if t.path.is_file() else None,
                        "rows": len(t.texts), **({} if self.formats[split] == "csv" else
                                                 {"format": self.formats[split]})}
                for split, t in self.tables.items()}

    def close(self) -> None:
        pass


class ImageSource:
    """ImageFolder dir/zip; images decoded (and resized if ``image_size``) per call to :meth:`encode`."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        if cfg.test_source and cfg.test_source.lower().endswith(TEXT_EXTENSIONS):
            raise ConfigError(
                f"data.test_source={cfg.test_source} is a text table but data.kind=image; "
                "set data.test_source=null to use the source's test/ folder"
            )
        self.train_clients: Optional[list[str]] = None
        self.srcs: dict[str, ImageFolderSource] = {}
        self.members: dict[str, list[str]] = {}
        self.labels: dict[str, np.ndarray] = {}
        train = ImageFolderSource(cfg.source)
        self.srcs["train"] = train
        members, classes = train.split("train")
        if not members:
            raise DataError(f"{cfg.source}: no images under train/<class>/ (expected an ImageFolder tree)")
        self.class_names = sorted(set(classes))
        self._set("train", members, classes)
        if cfg.test_source:
            test = ImageFolderSource(cfg.test_source)
            self.srcs["test"] = test
            members, classes = test.split("test")
            if not members:
                members, classes = test.split("")
            if not members:
                raise DataError(f"{cfg.test_source}: no images under test/<class>/ or <class>/")
            self._set("test", members, classes)
        else:
            self.srcs["test"] = train
            members, classes = train.split("test")
            if members:
                self._set("test", members, classes)
            else:
                log.warning("%s has no test/<class>/ images; no test split is prepared", cfg.source)
        self.hw: Optional[tuple[int, int]] = (cfg.image_size, cfg.image_size) if cfg.image_size else None

    def _set(self, split: str, members: list[str], classes: list[str]) -> None:
        lookup = {c: i for i, c in enumerate(self.class_names)}
        for m, c in zip(members, classes):
            if c not in lookup:
                raise DataError(f"{self.srcs[split].describe(m)}: class folder {c!r} is not one of the "
                                f"{len(self.class_names)} training classes")
        self.members[split] = members
        self.labels[split] = np.array([lookup[c] for c in classes], dtype=np.int64)

    @property
    def example_shape(self) -> tuple[int, ...]:
        assert self.hw is not None
        return self.hw + (3,)

    def encode(self, split: str, idx: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 (n, H, W, 3) RGB; every image must have the size of the first unless image_size is set."""
        src = self.srcs[split]
        members = [self.members[split][i] for i in idx]
        out, self.hw = stack_images(((src.describe(m), decode_image(src, m, self.cfg.image_size)) for m in members),
                                    len(members), self.hw)
        return out, None

    def preprocessing(self) -> dict:
        assert self.hw is not None
        return image_preprocessing(self.hw, self.cfg.image_size)

    def sources(self) -> dict:
        return {split: {"path": str(self.srcs[split].path), "bytes": self.srcs[split].path.stat().st_size
                        if self.srcs[split].path.is_file() else None, "images": len(m)}
                for split, m in self.members.items()}

    def close(self) -> None:
        for s in set(self.srcs.values()):
            s.close()
