"""The ``data`` config section: where client data comes from (files, `datasets` sources), how it is read
(columns, header, labels) and how it is split into clients and HDF5 shards. Validates its own values in
``__post_init__``; re-exported by :mod:`hpcfed.config.sections` and :mod:`hpcfed.config`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hpcfed.config.checks import ConfigError, check_choice, check_positive, default_cache_root

PARTITIONS = ("iid", "dirichlet", "pathological", "fewshot", "natural")
DATA_KINDS = ("text", "image")
DATA_FORMATS = ("auto", "csv", "imagefolder", "parquet", "json", "arrow", "disk", "hf_csv", "hf_imagefolder", "hub")
QUANTITY_SKEWS = ("none", "lognormal")


@dataclass
class DataConfig:
    """Where client data comes from and how it is split into clients and HDF5 shards."""

    name: str = "sst2"
    """Data set name; recorded in the shard index and checked when shards are opened."""
    kind: str = "text"
    """'text' (CSV/TSV, tokenized at prepare time) or 'image' (ImageFolder directory or .zip of one)."""
    source: str = "${hpcfed_data_root:}/sst2/train.tsv"
    """Training source: a CSV/TSV file (text), or an ImageFolder dir / .zip with train/ and test/ (image)."""
    test_source: Optional[str] = "${hpcfed_data_root:}/sst2/dev.tsv"
    """Global test split. Text: a CSV/TSV file. Image: null uses the source's test/ folder."""
    format: str = "auto"
    """How sources are read: 'auto' (by suffix: .csv/.tsv built-in, .parquet, .jsonl/.json, .arrow, a
    save_to_disk folder 'disk', else ImageFolder), or one of DATA_FORMATS ('hf_*', 'hub': via `datasets`)."""
    header: bool = True
    """CSV/TSV: the first row names the columns; false: columns are 0-based indices (text_column=1)."""
    text_column: Optional[str] = "sentence"
    """Text column (name, or index when header=false); ignored (must be null or left default) with text_columns."""
    text_columns: Optional[list[str]] = None
    """Two text columns encoded as a sentence pair, tokenizer(a, b) (MRPC/QNLI style); null: text_column."""
    label_column: str = "label"
    image_column: str = "image"
    """Image sources read through `datasets`: the column holding the images."""
    client_column: Optional[str] = None
    """data.partition=natural: each distinct value of this column is one client (FEMNIST/Shakespeare style)."""
    allow_download: bool = False
    """Allow `datasets` to reach the hub (format 'hub'); off sets HF_DATASETS_OFFLINE."""
    max_length: int = 64
    """Text: tokens kept per example (truncation) at prepare time."""
    tokenizer: Optional[str] = None
    """Text: tokenizer path or name; null uses model.path."""
    image_size: Optional[int] = None
    """Image: resize to this square size (pixels) at prepare time; null keeps the source size."""
    partition: str = "dirichlet"
    """'iid', 'dirichlet' (label skew with concentration alpha), 'pathological' (k classes per client),
    'fewshot' (shots_per_class examples of each class per client), 'natural' (one client per client_column value)."""
    quantity_skew: str = "none"
    """'none' or 'lognormal' (partition=iid: client sizes drawn log-normal with sigma quantity_sigma)."""
    quantity_sigma: float = 1.0
    alpha: float = 0.5
    """Dirichlet concentration α; smaller is more skewed."""
    classes_per_client: int = 2
    shots_per_class: int = 16
    num_clients: Optional[int] = 20
    """null only with partition=natural (the number of distinct client_column values)."""
    num_shards: int = 4
    max_train_samples: Optional[int] = None
    """Keep only the first N training examples (after a seeded shuffle); null keeps all."""
    max_test_samples: Optional[int] = None
    reserve_train_samples: int = 0
    """Rows of the train source withheld from every client (the first N of a seeded permutation, chosen before
    ``max_train_samples``): public data no client holds, e.g. FedPFT's distillation set
    (:func:`hpcfed.data.reserved_rows`)."""
    seed: int = 0
    """Partition seed (independent of the training seed)."""
    shard_dir: Optional[str] = None
    """Where the shards live; null derives <cache>/<name>-<hash of this section>, <cache> being $HPCFED_CACHE or
    ./data_cache in the working directory."""

    def __post_init__(self) -> None:
        check_choice("data.kind", self.kind, DATA_KINDS)
        check_choice("data.partition", self.partition, PARTITIONS)
        check_choice("data.format", self.format, DATA_FORMATS)
        check_choice("data.quantity_skew", self.quantity_skew, QUANTITY_SKEWS)
        for key in ("alpha", "quantity_sigma"):
            check_positive(f"data.{key}", getattr(self, key), allow_zero=key == "quantity_sigma")  # sigma 0: equal
            if getattr(self, key) != getattr(self, key):  # NaN passes every comparison
                raise ConfigError(f"data.{key}=nan must be a number")
        self._check_columns()
        check_positive("data.alpha", self.alpha)
        check_positive("data.num_clients", self.num_clients)
        check_positive("data.num_shards", self.num_shards)
        check_positive("data.max_length", self.max_length)
        check_positive("data.classes_per_client", self.classes_per_client)
        check_positive("data.shots_per_class", self.shots_per_class)
        check_positive("data.max_train_samples", self.max_train_samples)
        check_positive("data.max_test_samples", self.max_test_samples)
        check_positive("data.reserve_train_samples", self.reserve_train_samples, allow_zero=True)
        if self.num_clients is not None and self.num_shards > self.num_clients:
            raise ConfigError(
                f"data.num_shards={self.num_shards} must be <= data.num_clients={self.num_clients}"
            )

    def _check_columns(self) -> None:
        """Cross-field checks of the column, natural-partition and quantity-skew keys (one ConfigError line)."""
        if self.text_columns is not None:
            if self.text_column not in (None, "sentence"):
                raise ConfigError(f"data.text_column={self.text_column!r} and data.text_columns="
                                  f"{list(self.text_columns)} are mutually exclusive; set data.text_column=null")
            if not 1 <= len(self.text_columns) <= 2:
                raise ConfigError(f"data.text_columns={list(self.text_columns)} must name 1 or 2 columns")
        elif self.text_column is None:
            raise ConfigError("data.text_column is null and data.text_columns is not set; name the text column")
        if self.partition == "natural" and self.client_column is None:
            raise ConfigError("data.partition=natural needs data.client_column (one client per distinct value)")
        if self.client_column is not None and self.partition != "natural":
            raise ConfigError(f"data.client_column={self.client_column!r} needs data.partition=natural "
                              f"(not {self.partition})")
        if self.num_clients is None and self.partition != "natural":
            raise ConfigError(f"data.num_clients=null is only valid with data.partition=natural, "
                              f"not {self.partition}")
        if self.quantity_skew != "none" and self.partition != "iid":
            raise ConfigError(f"data.quantity_skew={self.quantity_skew} combines with data.partition=iid only "
                              f"(not {self.partition})")
        if not self.header:
            for key, cols in (("data.label_column", [self.label_column]), ("data.client_column", [
                    self.client_column]), ("data.text_columns" if self.text_columns else "data.text_column",
                                         self.text_columns or [self.text_column])):
                bad = [c for c in cols if c is not None and not str(c).isdigit()]
                if bad:
                    raise ConfigError(f"{key}={bad[0]!r}: with data.header=false columns are 0-based indices")

    def identity(self) -> dict:
        """The fields that determine the shards' content (everything except where they are stored). Keys at
        their defaults that were added later are left out, so shards prepared before them stay current."""
        d = dataclasses.asdict(self)
        d.pop("shard_dir")
        d.pop("allow_download")
        for key, default in (("reserve_train_samples", 0), ("format", "auto"), ("header", True),
                             ("text_columns", None), ("image_column", "image"), ("client_column", None),
                             ("quantity_skew", "none")):
            if d[key] == default:
                d.pop(key)
        if "quantity_skew" not in d:
            d.pop("quantity_sigma")
        return d

    def resolved_shard_dir(self) -> Path:
        if self.shard_dir:
            return Path(self.shard_dir)
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]
        return default_cache_root() / f"{self.name}-{digest}"
