"""ClientStateStore: versions by round, resume semantics, atomic writes, pruning that keeps checkpoints exact."""

import os
import threading

import pytest
import torch

from hpcfed.fl.state_store import ClientStateStore


def _t(v: float) -> dict:
    return {"A_C": torch.full((3,), v), "n": torch.tensor([int(v)], dtype=torch.int64)}


def test_get_returns_newest_version_before_round(tmp_path):
    s = ClientStateStore(tmp_path / "cs")
    assert s.get(4, before_round=10) is None
    s.put(4, 2, _t(2.0))
    s.put(4, 5, _t(5.0))
    s.put(7, 3, _t(3.0))
    assert s.get(4, before_round=2) is None          # nothing written before round 2
    assert torch.equal(s.get(4, before_round=3)["A_C"], torch.full((3,), 2.0))
    assert torch.equal(s.get(4, before_round=5)["A_C"], torch.full((3,), 2.0))  # r5 is not < 5
    assert torch.equal(s.get(4, before_round=6)["A_C"], torch.full((3,), 5.0))
    assert s.get(4, before_round=6)["n"].dtype == torch.int64
    assert s.versions(4) == [2, 5] and s.clients() == [4, 7]
    assert (tmp_path / "cs" / "4" / "r000005.safetensors").is_file()


def test_another_rank_reads_what_one_wrote(tmp_path):
    """Two store objects on the same folder (two ranks): a write by one is read by the other, also when
    the reader had an older version cached."""
    a, b = ClientStateStore(tmp_path), ClientStateStore(tmp_path)
    a.put(1, 1, _t(1.0))
    assert torch.equal(b.get(1, 2)["A_C"], torch.full((3,), 1.0))
    a.put(1, 3, _t(3.0))
    assert torch.equal(b.get(1, 4)["A_C"], torch.full((3,), 3.0))
    assert torch.equal(b.get(1, 3)["A_C"], torch.full((3,), 1.0))


def test_resume_ignores_and_purges_later_versions(tmp_path):
    s = ClientStateStore(tmp_path)
    for r in (1, 2, 4, 6):
        s.put(0, r, _t(float(r)))
    # resumed from a checkpoint of round 3: the first resumed round (4) reads the state of round 2
    assert torch.equal(s.get(0, before_round=4)["A_C"], torch.full((3,), 2.0))
    assert s.purge_from(4) == 2
    assert s.versions(0) == [1, 2]
    assert torch.equal(s.get(0, before_round=100)["A_C"], torch.full((3,), 2.0))


def test_put_replaces_version_and_leaves_no_temp_files(tmp_path):
    s = ClientStateStore(tmp_path, cache_size=0)
    s.put(2, 1, _t(1.0))
    s.put(2, 1, _t(9.0))
    assert torch.equal(s.get(2, 2)["A_C"], torch.full((3,), 9.0))
    assert os.listdir(tmp_path / "2") == ["r000001.safetensors"]
    with pytest.raises(ValueError):
        s.put(2, 0, _t(1.0))


def test_no_partial_file_is_ever_visible(tmp_path):
    """While a writer keeps replacing a large version, a reader only ever sees complete files."""
    big = 200_000
    w, r = ClientStateStore(tmp_path, cache_size=0), ClientStateStore(tmp_path, cache_size=0)
    w.put(0, 1, {"A_C": torch.zeros(big)})
    stop = threading.Event()
    errors = []

    def writer():
        k = 1.0
        while not stop.is_set():
            w.put(0, 1, {"A_C": torch.full((big,), k)})
            k += 1

    th = threading.Thread(target=writer)
    th.start()
    try:
        for _ in range(60):
            t = r.get(0, 2)["A_C"]  # safetensors raises on a truncated file
            if t.numel() != big or not torch.all(t == t[0]):
                errors.append("torn read")
    finally:
        stop.set()
        th.join()
    assert not errors
    assert [n for n in os.listdir(tmp_path / "0") if n.startswith(".")] == []


def test_prune_keeps_every_resumable_round(tmp_path):
    s = ClientStateStore(tmp_path)
    rounds = {0: [1, 2, 5, 8, 9], 1: [3], 2: [4, 7]}
    for cid, rs in rounds.items():
        for r in rs:
            s.put(cid, r, _t(float(r)))
    before = {(cid, r): s.latest_round(cid, r) for cid in rounds for r in range(7, 12)}
    assert s.prune(keep_from_round=6) == 2          # client 0: r1, r2 shadowed by r5 ≤ 6
    assert s.versions(0) == [5, 8, 9] and s.versions(1) == [3] and s.versions(2) == [4, 7]
    after = {(cid, r): s.latest_round(cid, r) for cid in rounds for r in range(7, 12)}
    assert before == after                           # every get with before_round > 6 unchanged
    assert s.prune(keep_from_round=9) == 3          # 0: r5, r8 (r9 kept); 2: r4 (r7 kept)
    assert s.versions(0) == [9] and s.versions(2) == [7]


# --- scale in clients (issue #16): pruning lists only the clients written since the last prune ----------------


def _files(root) -> set[str]:
    return {f"{d}/{n}" for d in os.listdir(root) for n in os.listdir(root / d)} if root.exists() else set()


@pytest.mark.parametrize("keep_last, every", [(0, 1), (1, 1), (2, 3)])
def test_prune_with_written_equals_full_prune(tmp_path, monkeypatch, keep_last, every):
    """A FedDAT-like run: each round a random cohort writes its versions (a few clients fail and write
    nothing), then the main process prunes to round − every·(keep_last + 1) — one store pruning with
    ``written=cohort``, one scanning every client. Same files and counts after every round; the incremental one
    lists only the cohorts' folders after its first prune."""
    import random

    rng = random.Random(0)
    cohorts = {r: rng.sample(range(60), 8) for r in range(1, 31)}
    full, inc = ClientStateStore(tmp_path / "full", cache_size=4), ClientStateStore(tmp_path / "inc", cache_size=4)
    listed = []
    orig_versions = ClientStateStore.versions

    def spy(self, cid):
        if self is inc:
            listed.append(cid)
        return orig_versions(self, cid)

    monkeypatch.setattr(ClientStateStore, "versions", spy)
    for r in range(1, 31):
        for cid in cohorts[r]:
            if rng.random() < 0.9:  # a failed client writes nothing
                for s in (full, inc):
                    s.put(cid, r, _t(float(r)))
        keep_from = r - every * (keep_last + 1)
        listed.clear()
        assert inc.prune(keep_from, written=lambda q: cohorts[q]) == full.prune(keep_from)
        assert _files(tmp_path / "inc") == _files(tmp_path / "full")
        if r > 1 and keep_from >= 1:
            assert set(listed) <= set(cohorts[keep_from])  # O(cohort), not every client with state
    for cid in range(60):
        for r in range(27, 33):
            assert inc.latest_round(cid, r) == full.latest_round(cid, r)


def test_prune_first_call_or_without_written_scans_everything(tmp_path):
    s = ClientStateStore(tmp_path)
    for cid, r in [(0, 1), (0, 2), (1, 1), (1, 3), (2, 2)]:
        s.put(cid, r, _t(float(r)))
    # first prune of this object: `written` cannot be trusted for rounds before it, so every client is examined
    assert s.prune(3, written=lambda r: []) == 2 and s.versions(0) == [2] and s.versions(1) == [3]
    assert s.prune(2, written=lambda r: [0, 1, 2]) == 0  # not past the previous prune: nothing can be shadowed
    s.put(2, 5, _t(5.0))
    assert s.prune(5, written=lambda r: [2] if r == 5 else []) == 1 and s.versions(2) == [5]
    s2 = ClientStateStore(tmp_path)  # a fresh object (a resumed run): full scan again
    assert s2.prune(6, written=lambda r: []) == 0
    assert ClientStateStore(tmp_path / "absent").prune(3, written=lambda r: [1]) == 0
