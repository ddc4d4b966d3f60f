"""Single-process checks of what the round loop sends through its communicator (DESIGN.md invariants 3, 5):
one aggregate collective per round, of exactly [acc | cnt | stats]; bytes up/down counted from the masks the
clients actually used."""

import json

import torch

import hpcfed.kernels as kernels
from hpcfed.config import load_config
from hpcfed.dist import CountingComm, LocalComm
from hpcfed.fl.aggregate import STATS
from hpcfed.compose import build_loop
from tests.conftest import fail_client


class _Rt:
    device = torch.device("cpu")


def test_counting_comm_one_aggregate_per_round(toy_text):
    comm = CountingComm(LocalComm())
    cfg = load_config(toy_text + ["fl.rounds=3", "eval.every_rounds=2"])
    loop, ds = build_loop(cfg, _Rt(), comm)
    comm.calls.clear(), comm.bytes.clear()  # data preparation's broadcast is not a round's
    loop.run()
    n = loop.flat.numel
    assert comm.calls["aggregate"] == 3
    assert comm.bytes["aggregate"] == 3 * (2 * n + len(STATS)) * 4
    assert comm.calls["eval"] == 2  # rounds 2 and 3 (the last round is always evaluated)
    assert set(comm.calls) == {"aggregate", "eval"}, comm.calls
    ds.close()


def test_bytes_follow_the_client_masks(toy_text, monkeypatch):
    """An algorithm whose clients each train a different random subset of the flat buffer: bytes_down is
    Σ_c |m_c| over the clients handed the model, bytes_up Σ_c |m_c| over the updates the accumulate kernel
    folded in (a failing client downloads but sends nothing), times 4 bytes."""
    cfg = load_config(toy_text + ["fl.rounds=1"])
    loop, ds = build_loop(cfg, _Rt(), LocalComm())
    n = loop.flat.numel
    masks = {c: torch.rand(n, generator=torch.Generator().manual_seed(c)) < 0.1 * (c + 1)
             for c in range(ds.num_clients)}
    loop.algorithm.client_mask = lambda cid: masks[cid]
    cohort = loop.my_clients(1)
    bad = cohort[0]
    fail_client(loop, bad, "client lost")
    folded = []
    accumulate = kernels.masked_accumulate
    monkeypatch.setattr(kernels, "masked_accumulate", lambda acc, cnt, tc, tg, w, mask=None, **kw: (
        folded.append(int(mask.count_nonzero())), accumulate(acc, cnt, tc, tg, w, mask, **kw))[1])
    m = loop.run_round(1)
    sizes = {c: int(masks[c].sum()) for c in cohort}
    assert len(set(sizes.values())) == len(cohort), "masks of distinct sizes make the sums telling"
    assert m["bytes_down"] == 4 * sum(sizes.values())
    assert m["bytes_up"] == 4 * sum(folded) == 4 * sum(v for c, v in sizes.items() if c != bad)
    assert m["clients"] == len(cohort) - 1 and m["clients_failed"] == 1
    assert json.dumps(m)  # metrics stay JSON-serializable
    ds.close()


def test_round_reports_client_loads_and_cache_hits(toy_text):
    """client_loads = this round's clients not in the rank's client cache (read from the shards), hits = the
    rest; past the cache's capacity every load evicts the least recently used client."""
    cfg = load_config(toy_text + ["fl.rounds=3", "fl.cohort_size=4"])
    loop, ds = build_loop(cfg, _Rt(), LocalComm())
    seen: set[int] = set()
    for r in (1, 2):
        cohort = set(loop.my_clients(r))
        m = loop.run_round(r)
        assert (m["client_loads"], m["client_cache_hits"]) == (len(cohort - seen), len(cohort & seen)), r
        seen |= cohort
    assert loop.clients.misses == len(seen) and loop.clients.evictions == 0
    loop.clients.max_clients = 1
    loop.clients._cache.clear()
    m = loop.run_round(3)  # every client is loaded; each load after the first evicts the one before
    assert (m["client_loads"], m["client_cache_hits"]) == (4, 0)
    assert loop.clients.evictions == 3 and loop.clients.misses == len(seen) + 4
    ds.close()
