"""Client data: sources (CSV/TSV text, ImageFolder dir/zip; parquet, JSONL, Arrow, save_to_disk folders through
``datasets``), partitioners (iid with optional quantity skew, label skew, natural client ids), the HDF5 shard
schema, loaders. User-facing keys: ``docs/data.md``.

Typical use::

    root = ensure_prepared(cfg.data, tokenizer=cfg.model.path)   # once (one rank), then a barrier
    with ShardedDataset(root, expect_identity=cfg.data.identity()) as ds:
        batch = ds.load_client(cid)                              # opens only that client's shard

This package knows nothing of ranks: it is told which clients to open.
"""

from hpcfed.data import partition  # the module: partition.iid / dirichlet / pathological / fewshot / partition
from hpcfed.data.errors import DataError
from hpcfed.data.pipeline import ensure_prepared, reserved_rows, summarize
from hpcfed.data.pipeline import prepare as prepare_shards
from hpcfed.data.shards import SCHEMA_VERSION, ClientData, ShardedDataset

__all__ = [
    "SCHEMA_VERSION", "DataError", "ClientData", "ShardedDataset", "prepare_shards", "ensure_prepared", "summarize",
    "reserved_rows",
    "partition",
]
