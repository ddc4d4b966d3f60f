"""Multi-task client data for FedYolo: derived tasks, the assignment of tasks to clients, and the per-client
view the round loop trains on.

Only two real data sets exist on this machine (SST-2 text, CIFAR-10 images) and one real pre-trained backbone
(all-MiniLM-L6-v2, text), so the second, *unrelated* text task is derived from the first one's sentences:

* ``label`` — the data set's own labels (SST-2: sentiment), read from ``data.*`` as any run does;
* ``wordorder`` — word-order detection: a sentence of at least 4 words whose word order differs when
  reversed; label 1 if its words were reversed, 0 if left as written; half of the kept sentences (a seeded
  permutation) are reversed, so the task is balanced. Derived from ``data.source`` / ``data.test_source``
  into TSV files (``sentence<TAB>label``) and then sharded by the ordinary pipeline with the same
  ``data.*`` partition settings, so both tasks have the same number of clients.

Sentiment does not depend on word order much, and word order does not depend on sentiment: the two tasks
share inputs but not labels, which is what "unrelated tasks on one backbone" needs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from hpcfed.atomic import atomic_write_text
from hpcfed.data import ClientData
from hpcfed.data.sources import read_text_table
from hpcfed.rng import MethodStream, generator

TASK_KINDS = ("label", "wordorder")
"""Task kinds a FedYolo run can hold (``fl.algo.tasks``)."""

WORDORDER_MIN_WORDS = 4


def wordorder_rows(sentences: list[str], seed: int) -> list[tuple[str, int]]:
    """The word-order task of ``sentences``: (sentence, label) rows in the input order.

    Kept: sentences of at least :data:`WORDORDER_MIN_WORDS` whitespace-separated words whose reversal differs
    from them (palindromic word sequences are dropped: their label would be undefined). Of the m kept, the
    first ⌊m/2⌋ of a permutation seeded by ``seed`` are written with their words reversed (label 1), the others
    as they are (label 0).

    Returns:
        list of (text, label) with label in {0, 1}; exactly ⌊m/2⌋ labels are 1.
    """
    kept = []
    for s in sentences:
        w = s.split()
        if len(w) >= WORDORDER_MIN_WORDS and w != w[::-1]:
            kept.append(w)
    m = len(kept)
    flip = np.zeros(m, dtype=bool)
    flip[generator(seed, MethodStream.FEDYOLO_WORDORDER).permutation(m)[: m // 2]] = True
    return [(" ".join(w[::-1] if f else w), int(f)) for w, f in zip(kept, flip)]


def _write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """Header ``sentence<TAB>label`` then one raw row per example (read back with ``csv.QUOTE_NONE``)."""
    lines = ["sentence\tlabel"] + [f"{text.replace(chr(9), ' ')}\t{y}" for text, y in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def derive_wordorder(source: str, test_source: str, text_column: str, label_column: str, seed: int,
                     root: Path) -> tuple[Path, Path]:
    """Write the word-order task of ``source`` / ``test_source`` as ``train.tsv`` / ``test.tsv`` under
    ``root/wordorder-<digest>/`` (digest of both files' bytes and the seed); reused when present.

    Raises:
        DataError: a source is missing or unreadable (from :func:`read_text_table`).
    """
    h = hashlib.sha256()
    for p in (source, test_source):
        h.update(Path(p).read_bytes() if Path(p).is_file() else str(p).encode())
    h.update(f"seed={seed}".encode())
    out = Path(root) / f"wordorder-{h.hexdigest()[:12]}"
    train, test = out / "train.tsv", out / "test.tsv"
    if train.is_file() and test.is_file():
        return train, test
    out.mkdir(parents=True, exist_ok=True)
    for src, dst, s in ((source, train, seed), (test_source, test, seed + 1)):
        table = read_text_table(src, text_column, label_column)
        _write_tsv(dst, wordorder_rows(list(table.texts), s))
    return train, test


def assign_tasks(num_clients: int, num_tasks: int, share: float, seed: int) -> list[list[int]]:
    """Which tasks each client holds.

    Clients are put in a random order π (seeded by ``seed``); task t is held by the k = ⌈share · N⌉ clients of
    the cyclic window of π that starts at position ⌊t · N / T⌋. With ``share`` = 1 every client holds every
    task; with T · share ≥ 1 every client holds at least one; windows overlap when T · share > 1, so some
    clients hold several tasks (T = 2, share = 0.75: half of the clients hold both).

    Returns:
        per client (N lists), its task ids ascending.
    """
    n, t_count = num_clients, num_tasks
    k = min(n, max(1, int(np.ceil(share * n - 1e-9))))
    perm = generator(seed, MethodStream.FEDYOLO_ASSIGN).permutation(n)
    held: list[list[int]] = [[] for _ in range(n)]
    for t in range(t_count):
        start = (t * n) // t_count
        for j in range(k):
            held[int(perm[(start + j) % n])].append(t)
    return [sorted(h) for h in held]


@dataclass
class MultiTaskClientData:
    """What ``local_update`` receives for one client: its examples of each task it trains this round.

    ``len()`` is the total number of examples over those tasks (the loop's ``client_weight`` reads it).
    """

    parts: dict[int, ClientData] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(d) for d in self.parts.values())


class MultiTaskDataset:
    """The loop's view of T task datasets with the same N clients (``loop.dataset`` / ``loop.clients``).

    Keeps the ``max_entries`` (client, task) datasets it used last and evicts the least recently used beyond that,
    as :class:`hpcfed.fl.loop.ClientCache` does with clients (same default, 256), so memory stays bounded at
    thousands of clients. ``hits``, ``misses`` (= shard loads) and ``evictions`` count like ClientCache's, per
    (client, task), so a round's ``client_loads`` / ``client_cache_hits`` count task datasets, not clients.

    Args:
        datasets: one ``ShardedDataset`` per task, all with ``num_clients`` = N.
        held: per client, the task ids it holds (see :func:`assign_tasks`).
        active: callable returning the set of task ids trained in the current round.
        max_entries: (client, task) datasets kept in memory (≥ 1).

    Raises:
        ValueError: the datasets disagree on N, ``held`` has another length, or ``max_entries`` < 1.
    """

    def __init__(self, datasets: list, held: list[list[int]], active, max_entries: int = 256):
        ns = {d.num_clients for d in datasets}
        if len(ns) != 1 or len(held) != datasets[0].num_clients:
            raise ValueError(f"tasks have client counts {sorted(ns)}, assignment has {len(held)} clients")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.datasets, self.held, self.active = datasets, held, active
        self.num_clients = datasets[0].num_clients
        self.num_classes = datasets[0].num_classes
        self.class_names = datasets[0].class_names
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[int, int], ClientData] = OrderedDict()
        self.hits = self.misses = self.evictions = 0  # per (client, task), as ClientCache

    def tasks_of(self, cid: int) -> list[int]:
        """Tasks client ``cid`` trains this round (held ∩ active)."""
        act = self.active()
        return [t for t in self.held[cid] if t in act]

    def client_num_samples(self, cid: int) -> int:
        return sum(self.datasets[t].client_num_samples(cid) for t in self.tasks_of(cid))

    def task_data(self, cid: int, t: int) -> ClientData:
        """Client ``cid``'s examples of task ``t`` (from memory, else loaded from the task's shards)."""
        key = (cid, t)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.hits += 1
            return self._cache[key]
        self.misses += 1
        data = self._cache[key] = self.datasets[t].load_client(cid)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.evictions += 1
        return data

    def load_client(self, cid: int) -> MultiTaskClientData:
        return MultiTaskClientData({t: self.task_data(cid, t) for t in self.tasks_of(cid)})

    # ClientCache interface (loop.clients.get)
    def get(self, cid: int) -> MultiTaskClientData:
        return self.load_client(cid)


def open_tasks(kinds: list[str], cfg, dataset, comm, root: Optional[Path] = None):
    """Open one ``ShardedDataset`` per task kind (one process derives and shards, the others wait for its
    verdict).

    Args:
        kinds: task kinds, e.g. ``["label", "wordorder"]``.
        cfg: the run config (``data.*`` is the ``label`` task and the source of derived ones).
        dataset: the already opened shards of ``cfg.data`` (reused for ``label``).
        comm: communicator (``on_main``).
        root: where derived sources are written (default ``<out_dir>/_fedyolo_tasks``).

    Returns:
        (datasets, test splits) — lists of length T.

    Raises:
        DataError: derivation or sharding failed (on every process, with the deriving process's message).
    """
    from dataclasses import replace

    from hpcfed.config import ConfigError
    from hpcfed.data import DataError, ShardedDataset, ensure_prepared

    root = Path(root) if root is not None else Path(cfg.out_dir) / "_fedyolo_tasks"
    datasets, tests = [], []
    for kind in kinds:
        if kind == "label":
            datasets.append(dataset)
            tests.append(dataset.load_test())
            continue
        d = cfg.data
        tcfg = replace(d, name=f"{d.name}-{kind}",
                       shard_dir=f"{d.shard_dir}-{kind}" if d.shard_dir else None)

        def derive(kind=kind, tcfg=tcfg, d=d) -> tuple[str, str]:
            try:
                train, test = derive_wordorder(d.source, d.test_source, d.text_column, d.label_column, d.seed,
                                               root)
                tcfg = replace(tcfg, source=str(train), test_source=str(test), text_column="sentence",
                               label_column="label")
                return "ok", str(ensure_prepared(tcfg, cfg.data.tokenizer or cfg.model.path))
            except (DataError, ConfigError, OSError) as e:
                return "error", f"fl.algo.tasks: deriving task {kind!r}: {e}"

        result = comm.on_main(derive)  # one process derives and shards; all get its verdict
        if result[0] != "ok":
            raise DataError(result[1])
        ds = ShardedDataset(result[1], expect_name=tcfg.name)
        datasets.append(ds)
        tests.append(ds.load_test())
    return datasets, tests
