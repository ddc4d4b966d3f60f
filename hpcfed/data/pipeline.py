"""prepare: source -> partition -> HDF5 client shards + test.h5 + index.json, written atomically.

The whole directory is built as ``<shard_dir>.tmp-<pid>`` (index.json last) and renamed to ``<shard_dir>``
when complete, so a directory under the final name with an index.json is always finished.
The command line entry point is ``python -m hpcfed.data.prepare`` (:func:`main`).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hpcfed.config import ConfigError, DataConfig, resolved
from hpcfed.data.errors import DataError
from hpcfed.data.partition import partition
from hpcfed.data.shards import (
    INDEX_NAME, SCHEMA_VERSION, TEST_FILE, ShardedDataset, ShardWriter, first_line, jsonable, read_index,
    shard_file_name, shard_of_client, write_index,
)
from hpcfed.data.sources import (
    TEXT_EXTENSIONS, ImageFolderSource, decode_image, encode_labels, label_vocabulary, read_text_table,
)
from hpcfed.rng import DataStream, generator

log = logging.getLogger(__name__)


def _subsample(n: int, max_n: Optional[int], seed: int, stream: int) -> np.ndarray:
    """Indices of the examples kept: all, or the first ``max_n`` of a seeded shuffle (sorted). int64 (n',)."""
    if max_n is None or max_n >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(generator(seed, stream).permutation(n)[:max_n]).astype(np.int64)


def _norm_name(name: str) -> str:
    """Tokenizer identity: an existing local path is made absolute; a hub name is kept as given."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def _tokenizer_name(cfg: DataConfig, tokenizer: Optional[str]) -> str:
    name = cfg.tokenizer or tokenizer
    if not name:
        raise ConfigError("data.tokenizer is null and no tokenizer (model.path) was given; set data.tokenizer=PATH")
    return _norm_name(name)


# ---------------------------------------------------------------------------------------------- sources


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


class _TextSource:
    """A CSV/TSV table tokenized per call to :meth:`encode` with the backbone's fast tokenizer."""

    def __init__(self, cfg: DataConfig, tokenizer: str):
        self.cfg = cfg
        train = read_text_table(cfg.source, cfg.text_column, cfg.label_column)
        self.class_names, integer = label_vocabulary(train)
        self.tables = {"train": train}
        self.labels = {"train": encode_labels(train, self.class_names, integer)}
        if cfg.test_source:
            test = read_text_table(cfg.test_source, cfg.text_column, cfg.label_column)
            self.tables["test"] = test
            self.labels["test"] = encode_labels(test, self.class_names, integer)
        self.tokenizer_name = tokenizer
        self.example_shape: tuple[int, ...] = (cfg.max_length,)

    @property
    def tok(self):
        """Loaded on first use, so that data errors are reported before the (slow) tokenizer load."""
        return _load_tokenizer(self.tokenizer_name)
    def encode(self, split: str, idx: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Token ids int32 (n, max_length) right-padded with the pad id, and lengths int32 (n,)."""
        texts = [self.tables[split].texts[i] for i in idx]
        enc = self.tok(texts, truncation=True, max_length=self.cfg.max_length, padding="max_length",
                       return_attention_mask=True, return_token_type_ids=False, return_tensors="np")
        ids = np.ascontiguousarray(enc["input_ids"], dtype=np.int32)  # (n, L)
        lengths = enc["attention_mask"].sum(axis=1).astype(np.int32)  # (n,)
        return ids, lengths

    def preprocessing(self) -> dict:
        tok = self.tok
        return {
            "kind": "text",
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
        return {split: {"path": str(t.path), "bytes": t.path.stat().st_size, "rows": len(t.texts)}
                for split, t in self.tables.items()}

    def close(self) -> None:
        pass


class _ImageSource:
    """ImageFolder dir/zip; images decoded (and resized if ``image_size``) per call to :meth:`encode`."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        if cfg.test_source and cfg.test_source.lower().endswith(TEXT_EXTENSIONS):
            raise ConfigError(
                f"data.test_source={cfg.test_source} is a text table but data.kind=image; "
                "set data.test_source=null to use the source's test/ folder"
            )
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
        out: Optional[np.ndarray] = None
        for k, i in enumerate(idx):
            member = self.members[split][i]
            img = decode_image(src, member, self.cfg.image_size)  # (H, W, 3)
            if self.hw is None:
                self.hw = img.shape[:2]
            if img.shape[:2] != self.hw:
                raise DataError(f"{src.describe(member)}: image is {img.shape[1]}x{img.shape[0]}, earlier images "
                                f"are {self.hw[1]}x{self.hw[0]}; set data.image_size to resize")
            if out is None:
                out = np.empty((len(idx),) + img.shape, dtype=np.uint8)  # (n, H, W, 3)
            out[k] = img
        assert out is not None
        return out, None

    def preprocessing(self) -> dict:
        assert self.hw is not None
        return {"kind": "image", "height": self.hw[0], "width": self.hw[1], "channels": 3, "dtype": "uint8",
                "layout": "NHWC", "resize": self.cfg.image_size, "resample": "bicubic" if self.cfg.image_size
                else None, "normalization": "none (raw uint8 RGB; mean/std normalization is the model's job)"}

    def sources(self) -> dict:
        return {split: {"path": str(self.srcs[split].path), "bytes": self.srcs[split].path.stat().st_size
                        if self.srcs[split].path.is_file() else None, "images": len(m)}
                for split, m in self.members.items()}

    def close(self) -> None:
        for s in set(self.srcs.values()):
            s.close()


# ---------------------------------------------------------------------------------------------- directory


_OUR_FILES = (INDEX_NAME, TEST_FILE)


def _has_content(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _check_replaceable(path: Path) -> None:
    """Refuse to overwrite anything that is not a shard directory (a mistyped data.shard_dir)."""
    if not path.is_dir():
        raise DataError(f"{path}: exists and is not a directory; refusing to overwrite")
    for p in path.iterdir():
        if not (p.name in _OUR_FILES or (p.name.startswith("shard-") and p.name.endswith(".h5"))):
            raise DataError(f"{path}: exists and is not a shard directory (contains {p.name}); refusing to overwrite")


def _is_current(out: Path, cfg: DataConfig, tokenizer: Optional[str]) -> bool:
    """A complete directory prepared from the same data config (and tokenizer), whose files are all there."""
    try:
        index = read_index(out)
    except DataError:
        return False
    if index["data_config"] != jsonable(cfg.identity()) or index["name"] != cfg.name:
        return False
    if cfg.kind == "text" and index["preprocessing"].get("tokenizer", {}).get("name_or_path") != tokenizer:
        return False
    files = [(s["file"], s.get("bytes")) for s in index["shards"]]
    if index.get("test"):
        files.append((index["test"]["file"], index["test"].get("bytes")))
    return all((out / f).is_file() and (out / f).stat().st_size == b for f, b in files)


def _install(tmp: Path, out: Path, cfg: DataConfig, tokenizer: Optional[str], force: bool) -> Path:
    """Rename the finished temp dir to ``out`` (moving an old one aside first when forced)."""
    old: Optional[Path] = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif force:
            _check_replaceable(out)
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        elif _is_current(out, cfg, tokenizer):  # another process finished the same data first
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        else:
            raise DataError(f"{out}: appeared while preparing and holds other data; use force=True / --force")
    try:
        os.replace(tmp, out)
    except OSError:
        if _is_current(out, cfg, tokenizer):
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous complete directory back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- prepare


def prepare(cfg: DataConfig, tokenizer: Optional[str] = None, *, force: bool = False) -> Path:
    """Partition ``cfg.source`` into ``cfg.num_clients`` clients and write them to ``cfg.resolved_shard_dir()``.

    Args:
        cfg: the data section of the run config.
        tokenizer: text only: tokenizer path/name used when ``cfg.tokenizer`` is null (pass ``model.path``).
        force: rebuild even if the directory exists (it is replaced only when complete).

    Returns:
        The shard directory.

    Raises:
        DataError: bad source data (see :mod:`hpcfed.data.sources`), a partition that is impossible for the
            data (names the source file), the directory exists (without ``force``) or is not a shard directory.
        ConfigError: no tokenizer given for text; unresolvable config values.
    """
    cfg = resolved(cfg)
    out = cfg.resolved_shard_dir()
    if _has_content(out):
        if not force:
            raise DataError(f"{out}: already exists; use ensure_prepared(), or force=True (--force) to rebuild")
        _check_replaceable(out)
    t0 = time.perf_counter()
    tok_name = _tokenizer_name(cfg, tokenizer) if cfg.kind == "text" else None
    src = _TextSource(cfg, tok_name) if cfg.kind == "text" else _ImageSource(cfg)
    try:
        out = _build(cfg, src, out, tok_name, force)
    finally:
        src.close()
    log.info("prepared %s in %.1f s: %s", cfg.name, time.perf_counter() - t0, out)
    return out


def _build(cfg: DataConfig, src, out: Path, tok_name: Optional[str], force: bool) -> Path:
    num_classes = len(src.class_names)
    keep = _subsample(len(src.labels["train"]), cfg.max_train_samples, cfg.seed, DataStream.TRAIN_SUBSAMPLE)
    labels = src.labels["train"][keep]
    try:
        parts = partition(cfg.partition, labels, cfg.num_clients, cfg.seed, num_classes=num_classes,
                          alpha=cfg.alpha, classes_per_client=cfg.classes_per_client,
                          shots_per_class=cfg.shots_per_class)
    except ValueError as e:
        raise DataError(f"{cfg.source}: cannot split {labels.size} examples into {cfg.num_clients} clients "
                        f"(data.partition={cfg.partition}): {e}") from None
    for c, p in enumerate(parts):
        if p.size == 0:
            raise DataError(f"{cfg.source}: client {c} would be empty (data.partition={cfg.partition})")
    test_keep = None
    if "test" in src.labels:
        test_keep = _subsample(len(src.labels["test"]), cfg.max_test_samples, cfg.seed, DataStream.TEST_SUBSAMPLE)

    prepare_id = uuid.uuid4().hex
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        clients: list[dict] = []
        shards: list[dict] = []
        for s in range(cfg.num_shards):
            cids = [c for c in range(cfg.num_clients) if shard_of_client(c, cfg.num_clients, cfg.num_shards) == s]
            fname = shard_file_name(s)
            with ShardWriter(tmp / fname, name=cfg.name, kind=cfg.kind, shard_id=s, prepare_id=prepare_id) as w:
                for c in cids:
                    y = labels[parts[c]]
                    x, lengths = src.encode("train", keep[parts[c]])
                    w.add_client(c, x, y, lengths)
                    clients.append({"id": c, "shard": s, "file": fname, "num_samples": int(y.size),
                                    "label_histogram": np.bincount(y, minlength=num_classes).tolist()})
                nbytes = w.close()
            shards.append({"id": s, "file": fname, "bytes": nbytes, "clients": [cids[0], cids[-1] + 1]})
            log.info("wrote shard %d/%d (%d clients)", s + 1, cfg.num_shards, len(cids))
        test = None
        if test_keep is not None:
            y = src.labels["test"][test_keep]
            x, lengths = src.encode("test", test_keep)
            with ShardWriter(tmp / TEST_FILE, name=cfg.name, kind=cfg.kind, shard_id=-1,
                             prepare_id=prepare_id) as w:
                w.add_test(x, y, lengths)
                nbytes = w.close()
            test = {"file": TEST_FILE, "bytes": nbytes, "num_samples": int(y.size),
                    "label_histogram": np.bincount(y, minlength=num_classes).tolist()}
        index = {
            "schema_version": SCHEMA_VERSION,
            "name": cfg.name,
            "kind": cfg.kind,
            "num_classes": num_classes,
            "class_names": list(src.class_names),
            "num_clients": cfg.num_clients,
            "num_shards": cfg.num_shards,
            "num_samples": int(sum(c["num_samples"] for c in clients)),
            "num_source_examples": int(len(src.labels["train"])),
            "example_shape": list(src.example_shape),
            "x_dtype": "int32" if cfg.kind == "text" else "uint8",
            "partition": cfg.partition,
            "prepare_id": prepare_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_config": jsonable(cfg.identity()),
            "preprocessing": src.preprocessing(),
            "sources": src.sources(),
            "shards": shards,
            "test": test,
            "clients": clients,
        }
        write_index(tmp / INDEX_NAME, index)  # last: marks the directory complete
        return _install(tmp, out, cfg, tok_name, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_prepared(cfg: DataConfig, tokenizer: Optional[str] = None) -> Path:
    """The shard directory of ``cfg``: reused if it holds a complete index of the same data config (and the same
    tokenizer for text, and all files are present), otherwise (re)built by :func:`prepare`.

    Not a lock: on several ranks let one rank call it and the others wait (barrier), then open the directory.
    The source files are not re-read to check for changes; after editing a source in place, use force / --force.
    """
    cfg = resolved(cfg)
    out = cfg.resolved_shard_dir()
    tok_name = _tokenizer_name(cfg, tokenizer) if cfg.kind == "text" else None
    if _is_current(out, cfg, tok_name):
        return out
    return prepare(cfg, tokenizer, force=_has_content(out))


def summarize(ds: ShardedDataset) -> str:
    """A few lines: where, what, and the client size distribution."""
    sizes = np.array([ds.client_num_samples(c) for c in range(ds.num_clients)])
    names = ", ".join(ds.class_names[:10]) + (", ..." if ds.num_classes > 10 else "")
    test = ds.index.get("test")
    lines = [
        f"shards: {ds.root}",
        f"data set: {ds.name} ({ds.kind}), {ds.num_classes} classes: {names}",
        f"clients: {ds.num_clients} in {len(ds.index['shards'])} shards, partition={ds.index['partition']}",
        f"train samples: {int(sizes.sum())} (per client min {sizes.min()} / median {float(np.median(sizes)):g} "
        f"/ max {sizes.max()})",
        f"test samples: {test['num_samples'] if test else 'none'}",
    ]
    return "\n".join(lines)


_USAGE = """usage: python -m hpcfed.data.prepare [config=FILE] [data.key=value ...] [--force]

Partition cfg.data.source into client shards under cfg.data.shard_dir (or data_cache/<name>-<hash>).
Reuses an up-to-date directory unless --force. Text is tokenized with data.tokenizer or model.path."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: prepare ``cfg.data``; prints the directory and a summary. Errors: ``error: ...`` on stderr, exit 2."""
    from hpcfed.config import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(_USAGE)
        return 0
    force = "--force" in args
    args = [a for a in args if a != "--force"]
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        cfg = load_config(args)
        data = resolved(cfg.data)
        tokenizer = data.tokenizer or cfg.model.path
        out = data.resolved_shard_dir()
        tok_name = _tokenizer_name(data, tokenizer) if data.kind == "text" else None
        if not force and _is_current(out, data, tok_name):
            print(f"up to date (use --force to rebuild): {out}")
        else:
            out = prepare(data, tokenizer, force=force or _has_content(out))  # logs "prepared ... in N s"
        with ShardedDataset(out, expect_identity=data.identity()) as ds:
            print(summarize(ds))
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
