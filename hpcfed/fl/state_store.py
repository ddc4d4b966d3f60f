"""Versioned per-client state on the shared filesystem, readable and writable by every rank.

Personalised algorithms (FedDAT's client adapter A_C, a local head) keep tensors per client across rounds. A
client may be trained by a different rank in each round (placement balances work, see
:func:`hpcfed.dist.place_clients`), so the state cannot live in one rank's memory: it lives under
``<run_dir>/client_state/`` (on a cluster the run folder is on shared storage)::

    client_state/<cid>/r<round:06d>.safetensors     one version per (client, round it was trained in)

* :meth:`ClientStateStore.put` writes a version atomically (temp file in the same folder, fsync,
  ``os.replace``): a reader sees the old set of versions or the new one, never a partial file.
* :meth:`ClientStateStore.get` ``(cid, before_round=r)`` returns the newest version written in a round < r.
  After resuming from a checkpoint of round R the loop asks with ``before_round = R + 1, R + 2, ...`` and
  the client's state is exactly what it was at the end of round R's newest participation, whatever a crashed
  run wrote later (and :meth:`purge_from` deletes those later versions before the resumed run writes anew).
* :meth:`ClientStateStore.prune` ``(keep_from_round=K)`` deletes the versions shadowed by a newer version
  ≤ K. Every ``get(cid, before_round=r)`` with ``r > K`` still returns what it returned before, so every
  checkpoint of a round ≥ K can be resumed exactly.

Within a run a (client, round) version is written once (the loop is deterministic), so a small per-rank LRU
cache of decoded versions is safe; :meth:`purge_from` empties it.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors.torch import load_file, save_file

from hpcfed.atomic import atomic_path

_VERSION = re.compile(r"^r(\d{6,})\.safetensors$")


class ClientStateStore:
    """Per-client tensors, versioned by round, in one folder shared by all ranks.

    Args:
        root: the store's folder (created on first write), normally ``<run_dir>/client_state``.
        cache_size: decoded versions kept in memory on this rank (LRU); 0 disables the cache.

    Tensors are stored on CPU, contiguous, with their dtype; :meth:`get` returns CPU tensors (treat them as
    read-only: they may be the cached objects).
    """

    def __init__(self, root: Path | str, cache_size: int = 64):
        self.root = Path(root)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], dict[str, torch.Tensor]] = OrderedDict()
        self._pruned_to: Optional[int] = None
        """The highest ``keep_from_round`` this object has pruned to (None: none yet); see :meth:`prune`."""

    # -- paths -----------------------------------------------------------------------------------------
    def path(self, cid: int, round_idx: int) -> Path:
        """File of client ``cid``'s version written in round ``round_idx``."""
        return self.root / str(int(cid)) / f"r{int(round_idx):06d}.safetensors"

    def versions(self, cid: int) -> list[int]:
        """Rounds of the stored versions of client ``cid``, ascending (temp files excluded)."""
        d = self.root / str(int(cid))
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _VERSION.match(n)))

    def clients(self) -> list[int]:
        """Client ids with at least one stored version, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and self.versions(int(p.name)))

    # -- read / write ----------------------------------------------------------------------------------
    def put(self, cid: int, round_idx: int, tensors: dict[str, torch.Tensor]) -> Path:
        """Write client ``cid``'s state after round ``round_idx`` (≥ 1) atomically; replaces that version.

        Raises:
            ValueError: ``round_idx`` < 1 or no tensors.
        """
        if round_idx < 1:
            raise ValueError(f"round_idx={round_idx} must be >= 1 (round 0 is the initial state)")
        if not tensors:
            raise ValueError("nothing to store")
        path = self.path(cid, round_idx)
        cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(cpu, str(tmp), metadata={"cid": str(cid), "round": str(round_idx)})
        self._remember((int(cid), int(round_idx)), cpu)
        return path

    def get(self, cid: int, before_round: int) -> dict[str, torch.Tensor] | None:
        """The newest version of client ``cid`` written in a round < ``before_round``; None if there is none."""
        older = [v for v in self.versions(cid) if v < before_round]
        if not older:
            return None
        key = (int(cid), older[-1])
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        tensors = load_file(str(self.path(cid, older[-1])))
        self._remember(key, tensors)
        return tensors

    def latest_round(self, cid: int, before_round: int) -> int | None:
        """Round of the version :meth:`get` would return (None: none)."""
        older = [v for v in self.versions(cid) if v < before_round]
        return older[-1] if older else None

    def _remember(self, key: tuple[int, int], tensors: dict[str, torch.Tensor]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = tensors
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- housekeeping ----------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        """Forget the in-memory copies (after another rank changed the files, e.g. a purge)."""
        self._cache.clear()

    def prune(self, keep_from_round: int, written: Optional[Callable[[int], Iterable[int]]] = None) -> int:
        """Delete every version shadowed by a newer version ≤ ``keep_from_round``; returns how many.

        Kept per client: its newest version ≤ ``keep_from_round`` and every version after it, so
        ``get(cid, before_round=r)`` is unchanged for every ``r > keep_from_round``.

        Args:
            written: optional; ``written(r)`` = the clients that may have stored a version in round r (a superset
                is fine, e.g. round r's cohort). After an earlier prune by this object to K0, every client holds
                at most one version ≤ K0, so only a client with a version in (K0, ``keep_from_round``] can have
                something to delete: with ``written`` only those clients are listed — O(cohort) directory
                listings a round instead of O(clients with state), which on a shared filesystem with thousands of
                clients is seconds a round (issue #16). The first prune of an object (after a start or a resume)
                and any prune without ``written`` examine every client. Same result either way, provided no
                version of a round ≤ K0 is written after the prune to K0 (the loop writes round r's versions
                during round r and prunes rounds < r).
        """
        last = self._pruned_to
        self._pruned_to = keep_from_round if last is None else max(last, keep_from_round)
        if written is None or last is None:
            cids: Iterable[int] = self._client_dirs()
        elif keep_from_round <= last:
            return 0  # every client already holds at most one version <= last
        else:
            cids = sorted({int(c) for r in range(max(last + 1, 1), keep_from_round + 1) for c in written(r)})
        removed = 0
        for cid in cids:
            old = [v for v in self.versions(cid) if v <= keep_from_round]
            for v in old[:-1]:
                self.path(cid, v).unlink(missing_ok=True)
                self._cache.pop((cid, v), None)
                removed += 1
        return removed

    def _client_dirs(self) -> list[int]:
        """Client ids with a folder in the store (one listing of the root; no per-client stat), ascending."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def purge_from(self, round_idx: int) -> int:
        """Delete every version written in a round ≥ ``round_idx`` (a crashed or earlier run's future) and
        empty the cache; returns how many files were deleted."""
        removed = 0
        for cid in self._client_dirs():
            for v in self.versions(cid):
                if v >= round_idx:
                    self.path(cid, v).unlink(missing_ok=True)
                    removed += 1
        self._cache.clear()
        return removed
