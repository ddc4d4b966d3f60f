"""The HDF5 shard schema: writing shards, and :class:`ShardedDataset`, which reads one client at a time.

A prepared directory holds::

    index.json            written last; its presence marks the directory complete
    shard-00000.h5 ...    clients/<id>/{x, y[, lengths]} for a contiguous range of client ids
    test.h5               test/{x, y[, lengths]} (absent when no test split was prepared)

Arrays per example set (N examples):

- ``x``: text int32 (N, max_length) token ids, right-padded with the tokenizer's pad id;
  image uint8 (N, H, W, 3), raw RGB (no normalization).
- ``y``: int64 (N,) class ids in [0, num_classes).
- ``lengths`` (text only): int32 (N,), real tokens per example (special tokens included).

File attributes: ``schema_version``, ``dataset`` (the data set name), ``kind``, ``split`` ('train'/'test'),
``shard_id`` (-1 for test.h5) and ``prepare_id`` (random per prepare run, also in the index, so that files
from different runs are never mixed). Datasets are chunked with the fletcher32 checksum filter and the files use
the latest HDF5 format (checksummed metadata), so flipped bytes are reported, not read as data.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import h5py
import numpy as np
import torch

from hpcfed.config import first_line
from hpcfed.data.errors import DataError

SCHEMA_VERSION = 1
"""Version of the shard layout and index format; readers refuse other versions."""
INDEX_NAME = "index.json"
TEST_FILE = "test.h5"
CHUNK_BYTES = 4 << 20
"""Target HDF5 chunk size (bytes) along the example axis."""


def shard_file_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.h5"


def shard_of_client(cid: int, num_clients: int, num_shards: int) -> int:
    """Clients go to shards contiguously: client c lives in shard ``c * num_shards // num_clients``."""
    return cid * num_shards // num_clients


@dataclass
class ClientData:
    """In-memory examples of one client or of the test split (CPU tensors).

    Attributes:
        x: text int32 (N, L) token ids padded with the pad id; image uint8 (N, H, W, C).
        y: int64 (N,) class ids.
        lengths: text int32 (N,) real token counts; image None.
    """

    x: torch.Tensor
    y: torch.Tensor
    lengths: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


# ---------------------------------------------------------------------------------------------- writing


def _write_arrays(group: h5py.Group, x: np.ndarray, y: np.ndarray, lengths: Optional[np.ndarray]) -> None:
    n = int(y.shape[0])
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize)
    rows = max(1, min(n, CHUNK_BYTES // row_bytes))
    group.create_dataset("x", data=x, chunks=(rows,) + tuple(x.shape[1:]), fletcher32=True)
    group.create_dataset("y", data=y.astype(np.int64, copy=False), chunks=(min(n, 1 << 18),), fletcher32=True)
    if lengths is not None:
        group.create_dataset(
            "lengths", data=lengths.astype(np.int32, copy=False), chunks=(min(n, 1 << 18),), fletcher32=True
        )


class ShardWriter:
    """Writes one HDF5 file of the schema (a client shard, or test.h5 with ``shard_id=-1``)."""

    def __init__(self, path: Path, *, name: str, kind: str, shard_id: int, prepare_id: str):
        self.path = path
        self._f = h5py.File(path, "w", libver="latest")
        self._f.attrs.update(
            schema_version=SCHEMA_VERSION, dataset=name, kind=kind, shard_id=shard_id,
            split="test" if shard_id < 0 else "train", prepare_id=prepare_id,
        )

    def add_client(self, cid: int, x: np.ndarray, y: np.ndarray, lengths: Optional[np.ndarray]) -> None:
        _write_arrays(self._f.require_group("clients").create_group(str(cid)), x, y, lengths)

    def add_test(self, x: np.ndarray, y: np.ndarray, lengths: Optional[np.ndarray]) -> None:
        _write_arrays(self._f.create_group("test"), x, y, lengths)

    def close(self) -> int:
        """Close the file; returns its size in bytes (recorded in the index)."""
        self._f.close()
        return os.path.getsize(self.path)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._f.id.valid:
            self._f.close()


def write_index(path: Path, index: dict) -> None:
    """index.json with one client per line (readable for hundreds of clients)."""
    head = {k: v for k, v in index.items() if k != "clients"}
    lines = json.dumps(head, indent=1).rstrip("}").rstrip().rstrip(",")
    clients = ",\n  ".join(json.dumps(c) for c in index["clients"])
    path.write_text(f'{lines},\n "clients": [\n  {clients}\n ]\n}}\n')


# ---------------------------------------------------------------------------------------------- reading

_INDEX_KEYS = ("schema_version", "name", "kind", "num_classes", "class_names", "num_clients", "prepare_id",
               "clients", "shards", "example_shape", "data_config", "preprocessing")


def read_index(root: Path) -> dict:
    """Read and check index.json of a prepared directory.

    Raises:
        DataError: missing, not JSON, schema version mismatch, missing keys, inconsistent client table.
    """
    path = root / INDEX_NAME
    if not path.is_file():
        what = "directory not found" if not root.exists() else f"no {INDEX_NAME} (not prepared, or unfinished)"
        raise DataError(f"{path}: {what}; run `python -m hpcfed.data.prepare`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable shard index ({first_line(e)})") from None
    if not isinstance(index, dict):
        raise DataError(f"{path}: shard index is not a JSON object")
    version = index.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: shard schema version {version!r}, this hpcfed reads version {SCHEMA_VERSION}; "
            "re-run prepare (--force)"
        )
    missing = [k for k in _INDEX_KEYS if k not in index]
    if missing:
        raise DataError(f"{path}: shard index lacks {', '.join(missing)}")
    clients = index["clients"]
    if len(clients) != index["num_clients"] or [c.get("id") for c in clients] != list(range(len(clients))):
        raise DataError(f"{path}: client table is not clients 0..{index['num_clients'] - 1}")
    for c in clients:
        if c.get("num_samples", 0) < 1:
            raise DataError(f"{path}: client {c['id']} is empty")
        if Path(str(c.get("file"))).name != c.get("file"):
            raise DataError(f"{path}: client {c['id']}: bad shard file name {c.get('file')!r}")
    if len(index["class_names"]) != index["num_classes"]:
        raise DataError(f"{path}: {len(index['class_names'])} class names for num_classes={index['num_classes']}")
    return index


@contextlib.contextmanager
def _h5_errors(path: Path, where: str) -> Iterator[None]:
    """Turn h5py's errors on a damaged file (OSError, KeyError, ValueError, ...) into a one-line DataError."""
    try:
        yield
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: {where}: unreadable ({first_line(e)}); the shard is corrupt (failed checksum "
                        "or damaged metadata), re-run prepare (--force)") from None


def _resolve_identity(identity: dict) -> dict:
    """``DataConfig().identity()`` of a config built in Python holds unresolved ``${...}`` defaults; prepare
    records them resolved, so resolve them the same way before comparing."""
    if not any(isinstance(v, str) and "${" in v for v in identity.values()):
        return identity
    from hpcfed.config import DataConfig, resolved

    return resolved(DataConfig(**identity)).identity()


def jsonable(d: Any) -> Any:
    """``d`` as it reads back from JSON (tuples become lists, ...), for comparing with a stored index."""
    return json.loads(json.dumps(d))


class ShardedDataset:
    """A prepared shard directory. Opens only the shard files of the clients that are loaded, lazily, and keeps
    the handles until :meth:`close` (also a context manager).

    Args:
        root: the prepared directory (the one holding index.json).
        expect_name: if given, the index's data set name must equal it.
        expect_identity: if given (``DataConfig.identity()``), the index's recorded identity must equal it.

    Raises:
        DataError: missing/corrupt index, schema version mismatch, name or identity mismatch.
    """

    def __init__(self, root: str | Path, *, expect_name: Optional[str] = None,
                 expect_identity: Optional[dict] = None):
        root = Path(root)
        if root.name == INDEX_NAME and root.is_file():
            root = root.parent
        self.root = root
        self.index = read_index(root)
        ix = self.index
        self.name: str = ix["name"]
        self.kind: str = ix["kind"]
        self.num_classes: int = int(ix["num_classes"])
        self.class_names: list[str] = list(ix["class_names"])
        self.num_clients: int = int(ix["num_clients"])
        self.example_shape: tuple[int, ...] = tuple(ix["example_shape"])
        tok = ix["preprocessing"].get("tokenizer") if self.kind == "text" else None
        self.pad_id: Optional[int] = int(tok["pad_id"]) if tok else None
        self._files: dict[str, h5py.File] = {}
        if expect_name is not None and expect_name != self.name:
            raise DataError(f"{root / INDEX_NAME}: shards are of data set {self.name!r}, expected {expect_name!r}")
        if expect_identity is not None:
            want, have = jsonable(_resolve_identity(expect_identity)), ix["data_config"]
            if want != have:
                keys = sorted(k for k in set(want) | set(have) if want.get(k, "<absent>") != have.get(k, "<absent>"))
                diff = ", ".join(f"{k}={have.get(k, '<absent>')!r} (expected {want.get(k, '<absent>')!r})"
                                 for k in keys[:4])
                raise DataError(f"{root / INDEX_NAME}: prepared with a different data config: {diff}")

    # ------------------------------------------------------------------ index queries

    def _client(self, cid: int) -> dict:
        if not 0 <= cid < self.num_clients:
            raise DataError(f"{self.root / INDEX_NAME}: no client {cid} (clients are 0..{self.num_clients - 1})")
        return self.index["clients"][cid]

    def client_num_samples(self, cid: int) -> int:
        return int(self._client(cid)["num_samples"])

    def label_histogram(self, cid: int) -> np.ndarray:
        """Examples per class of client ``cid``, int64 (num_classes,)."""
        return np.asarray(self._client(cid)["label_histogram"], dtype=np.int64)

    def shard_of(self, cid: int) -> int:
        return int(self._client(cid)["shard"])

    @property
    def has_test(self) -> bool:
        return self.index.get("test") is not None

    # ------------------------------------------------------------------ files

    def _open(self, file: str, *, shard_id: int, expect_bytes: Optional[int]) -> h5py.File:
        f = self._files.get(file)
        if f is not None:
            return f
        path = self.root / file
        if not path.is_file():
            raise DataError(f"{path}: shard file missing")
        size = path.stat().st_size
        truncated = expect_bytes is not None and size != expect_bytes
        try:
            f = h5py.File(path, "r")
        except (OSError, ValueError, RuntimeError) as e:
            if not h5py.is_hdf5(path):
                what = "not an HDF5 file"
            elif truncated:
                what = f"truncated or overwritten ({size} bytes, index records {expect_bytes})"
            else:
                what = "not a readable HDF5 file"
            raise DataError(f"{path}: {what} ({first_line(e)}); re-run prepare (--force)") from None
        try:
            with _h5_errors(path, "file attributes"):
                self._check_attrs(path, f, shard_id)
            if truncated:
                raise DataError(f"{path}: {size} bytes, index records {expect_bytes} (truncated or overwritten)")
        except BaseException:
            f.close()
            raise
        self._files[file] = f
        return f

    def _check_attrs(self, path: Path, f: h5py.File, shard_id: int) -> None:
        a = f.attrs

        def get(key: str) -> Any:
            v = a.get(key)
            return v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)

        if get("schema_version") is None and get("dataset") is None:
            raise DataError(f"{path}: not an hpcfed shard (no schema_version/dataset attributes)")
        if get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                f"{path}: shard schema version {get('schema_version')!r}, this hpcfed reads {SCHEMA_VERSION}; "
                "re-run prepare (--force)"
            )
        if get("dataset") != self.name:
            raise DataError(f"{path}: foreign shard: data set {get('dataset')!r}, index says {self.name!r}")
        if get("kind") != self.kind:
            raise DataError(f"{path}: foreign shard: kind {get('kind')!r}, index says {self.kind!r}")
        if get("shard_id") != shard_id:
            raise DataError(f"{path}: foreign shard: shard id {get('shard_id')!r}, index says {shard_id}")
        if get("prepare_id") != self.index["prepare_id"]:
            raise DataError(f"{path}: foreign shard: written by another prepare run than {INDEX_NAME}")

    def _read(self, path: Path, group: h5py.Group, where: str, entry: dict) -> ClientData:
        n = int(entry["num_samples"])
        names = ("x", "y", "lengths") if self.kind == "text" else ("x", "y")
        arrays: dict[str, np.ndarray] = {}
        for k in names:
            with _h5_errors(path, f"{where}: dataset '{k}'"):
                if k not in group:
                    raise DataError(f"{path}: {where}: dataset '{k}' missing (corrupt or foreign shard)")
                arrays[k] = np.asarray(group[k][()])
        x, y = arrays["x"], arrays["y"]
        want_dtype = np.int32 if self.kind == "text" else np.uint8
        if x.dtype != want_dtype or x.shape != (n,) + self.example_shape:
            raise DataError(f"{path}: {where}: x is {x.dtype}{x.shape}, index says {np.dtype(want_dtype)}"
                            f"{(n,) + self.example_shape} (corrupt shard)")
        if y.dtype != np.int64 or y.shape != (n,):
            raise DataError(f"{path}: {where}: y is {y.dtype}{y.shape}, expected int64({n},) (corrupt shard)")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise DataError(f"{path}: {where}: labels outside 0..{self.num_classes - 1} (corrupt shard)")
        if np.bincount(y, minlength=self.num_classes).tolist() != list(entry["label_histogram"]):
            raise DataError(f"{path}: {where}: label histogram differs from {INDEX_NAME} (corrupt or foreign shard)")
        lengths = None
        if self.kind == "text":
            lens = arrays["lengths"]
            if lens.dtype != np.int32 or lens.shape != (n,) or (n and (lens.min() < 0 or
                                                                       lens.max() > self.example_shape[0])):
                raise DataError(f"{path}: {where}: bad lengths array (corrupt shard)")
            lengths = torch.from_numpy(lens)
        return ClientData(torch.from_numpy(x), torch.from_numpy(y), lengths)

    # ------------------------------------------------------------------ loading

    def load_client(self, cid: int) -> ClientData:
        """All examples of client ``cid`` (opens its shard file on first use).

        Raises:
            DataError: unknown client; shard missing, not HDF5, truncated, foreign (other data set / prepare run),
                other schema version, client group missing, arrays inconsistent with the index.
        """
        entry = self._client(cid)
        shard = self.index["shards"][entry["shard"]]
        f = self._open(entry["file"], shard_id=int(entry["shard"]), expect_bytes=shard.get("bytes"))
        path = self.root / entry["file"]
        key = f"clients/{cid}"
        with _h5_errors(path, f"client group '{key}'"):
            if key not in f:
                raise DataError(f"{path}: client group '{key}' missing (corrupt or foreign shard)")
            group = f[key]
        return self._read(path, group, f"client {cid}", entry)

    def load_test(self) -> ClientData:
        """The global test split from test.h5.

        Raises:
            DataError: no test split was prepared; file problems as in :meth:`load_client`.
        """
        test = self.index.get("test")
        if test is None:
            raise DataError(f"{self.root / INDEX_NAME}: no test split was prepared (data.test_source is null?)")
        f = self._open(test["file"], shard_id=-1, expect_bytes=test.get("bytes"))
        path = self.root / test["file"]
        with _h5_errors(path, "group 'test'"):
            if "test" not in f:
                raise DataError(f"{path}: group 'test' missing (corrupt or foreign file)")
            group = f["test"]
        return self._read(path, group, "test split", test)

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken handle must not hide the real error
                pass
        self._files.clear()

    def __enter__(self) -> "ShardedDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedDataset({str(self.root)!r}, name={self.name!r}, kind={self.kind!r}, "
                f"clients={self.num_clients}, classes={self.num_classes})")
