"""prepare: source -> partition -> HDF5 client shards + test.h5 + index.json, written atomically.

The whole directory is built as ``<shard_dir>.tmp-<pid>`` (index.json last) and renamed to ``<shard_dir>``
when complete, so a directory under the final name with an index.json is always finished.
The command line entry point is ``python -m hpcfed.data.prepare`` (:func:`main`).

The source readers (text table, ImageFolder, ``datasets`` sources) are in :mod:`hpcfed.data.readers`; the checks
on an existing shard directory and the final rename into place are in :mod:`hpcfed.data.directory`; the label
distribution plot and the summary line in :mod:`hpcfed.data.report`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from hpcfed.config import ConfigError, DataConfig, resolved
from hpcfed.data.directory import check_replaceable, has_content, install, is_current
from hpcfed.data.errors import DataError
from hpcfed.data.partition import natural, partition
from hpcfed.data.readers import open_source, tokenizer_name
from hpcfed.data.report import PLOT_NAME, plot_label_distribution, summary_line
from hpcfed.data.shards import (
    INDEX_NAME, SCHEMA_VERSION, TEST_FILE, ShardedDataset, ShardWriter, jsonable, shard_file_name, shard_of_client,
    write_index,
)
from hpcfed.rng import DataStream, generator

log = logging.getLogger(__name__)


def _subsample(n: int, max_n: Optional[int], seed: int, stream: int) -> np.ndarray:
    """Indices of the examples kept: all, or the first ``max_n`` of a seeded shuffle (sorted). int64 (n',)."""
    if max_n is None or max_n >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(generator(seed, stream).permutation(n)[:max_n]).astype(np.int64)


def reserved_rows(num_rows: int, cfg: DataConfig) -> np.ndarray:
    """The rows of the train source withheld from every client (``data.reserve_train_samples``): the first N
    of the [data.seed, RESERVED] permutation, sorted; int64 (N,), empty when the key is 0.

    Raises:
        DataError: N leaves fewer rows than clients.
    """
    n = cfg.reserve_train_samples
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if num_rows - n < (cfg.num_clients or 1):
        raise DataError(f"{cfg.source}: data.reserve_train_samples={n} leaves {num_rows - n} of {num_rows} rows "
                        f"for {cfg.num_clients} clients")
    return np.sort(generator(cfg.seed, DataStream.RESERVED).permutation(num_rows)[:n]).astype(np.int64)


ENCODE_BATCH_ROWS = 8192
"""Text: the rows of consecutive clients are tokenized together, up to this many per tokenizer call."""


def encode_clients(src, kind: str, keep: np.ndarray, parts: Sequence[np.ndarray], cids: Sequence[int],
                   batch_rows: Optional[int] = None) -> Iterator[tuple[int, np.ndarray, Optional[np.ndarray]]]:
    """``(c, x, lengths)`` for each client ``c`` of ``cids`` in order: ``src.encode("train", keep[parts[c]])``.

    Text is tokenized row by row (truncated and padded to ``max_length``), so the rows of consecutive clients
    are encoded in one call of up to ``batch_rows`` rows (default :data:`ENCODE_BATCH_ROWS`; a client larger
    than that alone) and split again: the same arrays as one call per client, without a tokenizer call per
    client (5,000 calls took ~10 s of a 5,000-client SST-2 preparation; issue #16). Images are encoded one
    client at a time (their arrays are large). The yielded arrays may be views of a larger batch.
    """
    if kind != "text":
        for c in cids:
            x, lengths = src.encode("train", keep[parts[c]])
            yield c, x, lengths
        return
    batch_rows = ENCODE_BATCH_ROWS if batch_rows is None else batch_rows
    i = 0
    while i < len(cids):
        j, rows = i + 1, parts[cids[i]].size
        while j < len(cids) and rows + parts[cids[j]].size <= batch_rows:
            rows += parts[cids[j]].size
            j += 1
        group = cids[i:j]
        x, lengths = src.encode("train", np.concatenate([keep[parts[c]] for c in group]))  # (rows, L), (rows,)
        off = 0
        for c in group:
            n = parts[c].size
            yield c, x[off:off + n], None if lengths is None else lengths[off:off + n]
            off += n
        i = j


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
    if has_content(out):
        if not force:
            raise DataError(f"{out}: already exists; use ensure_prepared(), or force=True (--force) to rebuild")
        check_replaceable(out)
    t0 = time.perf_counter()
    tok_name = tokenizer_name(cfg, tokenizer) if cfg.kind == "text" else None
    src = open_source(cfg, tok_name)
    try:
        out = _build(cfg, src, out, tok_name, force)
    finally:
        src.close()
    log.info("prepared %s in %.1f s: %s", cfg.name, time.perf_counter() - t0, out)
    return out


def _natural(cfg: DataConfig, src, keep: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """One client per distinct ``data.client_column`` value among the kept rows; checks data.num_clients."""
    if src.train_clients is None:
        raise DataError(f"{cfg.source}: data.partition=natural but no data.client_column was read")
    try:
        parts, names = natural([src.train_clients[i] for i in keep])
    except ValueError as e:
        raise DataError(f"{cfg.source}: data.client_column={cfg.client_column}: {e}") from None
    if cfg.num_clients is not None and cfg.num_clients != len(parts):
        raise DataError(f"{cfg.source}: data.client_column={cfg.client_column} has {len(parts)} distinct values "
                        f"but data.num_clients={cfg.num_clients}; set data.num_clients={len(parts)} or null")
    if cfg.num_shards > len(parts):
        raise DataError(f"{cfg.source}: data.num_shards={cfg.num_shards} is more than the {len(parts)} natural "
                        "clients; lower data.num_shards")
    return parts, names


def _build(cfg: DataConfig, src, out: Path, tok_name: Optional[str], force: bool) -> Path:
    num_classes = len(src.class_names)
    n_rows = len(src.labels["train"])
    pool = np.setdiff1d(np.arange(n_rows, dtype=np.int64), reserved_rows(n_rows, cfg))  # sorted; all if none
    keep = pool[_subsample(len(pool), cfg.max_train_samples, cfg.seed, DataStream.TRAIN_SUBSAMPLE)]
    labels = src.labels["train"][keep]
    names: Optional[list[str]] = None
    if cfg.partition == "natural":
        parts, names = _natural(cfg, src, keep)
    else:
        try:
            parts = partition(cfg.partition, labels, cfg.num_clients, cfg.seed, num_classes=num_classes,
                              alpha=cfg.alpha, classes_per_client=cfg.classes_per_client,
                              shots_per_class=cfg.shots_per_class,
                              quantity_sigma=cfg.quantity_sigma if cfg.quantity_skew == "lognormal" else None)
        except ValueError as e:
            raise DataError(f"{cfg.source}: cannot split {labels.size} examples into {cfg.num_clients} clients "
                            f"(data.partition={cfg.partition}): {e}") from None
    num_clients = len(parts)
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
            cids = [c for c in range(num_clients) if shard_of_client(c, num_clients, cfg.num_shards) == s]
            fname = shard_file_name(s)
            with ShardWriter(tmp / fname, name=cfg.name, kind=cfg.kind, shard_id=s, prepare_id=prepare_id) as w:
                for c, x, lengths in encode_clients(src, cfg.kind, keep, parts, cids):
                    y = labels[parts[c]]
                    w.add_client(c, x, y, lengths)
                    clients.append({"id": c, "shard": s, "file": fname, "num_samples": int(y.size),
                                    "label_histogram": np.bincount(y, minlength=num_classes).tolist(),
                                    **({"name": names[c]} if names is not None else {})})
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
            "num_clients": num_clients,
            "num_shards": cfg.num_shards,
            "num_samples": int(sum(c["num_samples"] for c in clients)),
            "num_source_examples": int(len(src.labels["train"])),
            "example_shape": list(src.example_shape),
            "x_dtype": "int32" if cfg.kind == "text" else "uint8",
            "partition": cfg.partition,
            "label_mapping": "contiguous",  # class ids 0..C-1 over the training labels that occur
            "prepare_id": prepare_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data_config": jsonable(cfg.identity()),
            "preprocessing": src.preprocessing(),
            "sources": src.sources(),
            "shards": shards,
            "test": test,
            "clients": clients,
        }
        hists = np.array([c["label_histogram"] for c in clients], dtype=np.int64).reshape(num_clients, num_classes)
        if plot_label_distribution(tmp / PLOT_NAME, hists, src.class_names, names, f"{cfg.name}: {cfg.partition}"
                                   + (f", quantity skew sigma={cfg.quantity_sigma:g}" if cfg.quantity_skew != "none"
                                      else "")):
            index["label_distribution_plot"] = PLOT_NAME
        log.info("%s: %s", cfg.name, summary_line(hists, src.class_names))
        write_index(tmp / INDEX_NAME, index)  # last: marks the directory complete
        return install(tmp, out, cfg, tok_name, force)
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
    tok_name = tokenizer_name(cfg, tokenizer) if cfg.kind == "text" else None
    if is_current(out, cfg, tok_name):
        return out
    return prepare(cfg, tokenizer, force=has_content(out))


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
        tok_name = tokenizer_name(data, tokenizer) if data.kind == "text" else None
        if not force and is_current(out, data, tok_name):
            print(f"up to date (use --force to rebuild): {out}")
        else:
            out = prepare(data, tokenizer, force=force or has_content(out))  # logs "prepared ... in N s"
        with ShardedDataset(out, expect_identity=data.identity()) as ds:
            print(summarize(ds))
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
