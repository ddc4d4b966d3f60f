"""benchmarks/client_scale.py (issue #16, scale in clients): its pure parts — cells, config words, the row
schema, the summary of the ranks' probe records, the table, the estimate — and the probes around the engine."""

from __future__ import annotations

import fcntl
import os

import pytest

from benchmarks import client_scale as cs


def test_parse_cells():
    assert cs.parse_cells(cs.DEFAULT_CELLS) == [(100, 100), (5000, 100), (5000, 500), (500, 500)]
    assert cs.parse_cells(" 8:4 ,8:8") == [(8, 4), (8, 8)]
    for bad in ("100:500", "0:0", "100", "a:b", "", "100:100,"):
        with pytest.raises(ValueError):
            cs.parse_cells(bad)


def test_cell_words_make_a_valid_config_with_the_stated_job(tmp_path):
    from hpcfed.config import load_config

    words = cs.cell_words(cs.TINY, 5000, 500, rounds_timed=3, batch=13, work=tmp_path, extra=["seed=3"])
    cfg = load_config(words)
    assert (cfg.data.partition, cfg.data.num_clients, cfg.data.max_test_samples) == ("iid", 5000, cs.TEST_SAMPLES)
    assert cfg.data.shard_dir == str(tmp_path / "shards-5000")
    assert (cfg.fl.cohort_size, cfg.fl.rounds, cfg.fl.local.steps, cfg.fl.local.batch_size) == (500, 4, 1, 13)
    assert cfg.fl.local.bf16 is False and cfg.fl.algorithm == "fedavg" and cfg.dist.num_threads == 1
    assert cfg.checkpoint.every_rounds == 0 and cfg.eval.every_rounds > 4 and cfg.seed == 3
    assert cfg.run_dir == tmp_path / "runs" / "k5000-c500"
    # the data words are shared by the preparation and every run of the same client count
    assert words[:len(cs.data_words(cs.TINY, 5000, tmp_path))] == cs.data_words(cs.TINY, 5000, tmp_path)


def test_workload_base_is_minilm_bitfit():
    from benchmarks.workloads import WORKLOADS

    words = WORKLOADS["text-bitfit"].words
    assert "peft.method=bias" in words and "model.path=${minilm_path:}" in words and "model.pretrained=true" in words


def test_parse_prepare_seconds():
    log = "INFO wrote shard 1/4\nprepared sst2 in 12.3 s: /x/shards-100\n"
    assert cs.parse_prepare_seconds(log) == 12.3
    assert cs.parse_prepare_seconds("up to date") is None


def test_estimate():
    est = cs.estimate_s([(100, 100), (5000, 100), (5000, 500)], rounds_timed=3, ranks=2, client_s=0.1,
                        startup_s=20.0, prepare_base_s=10.0, prepare_per_client_s=0.001)
    assert est["prepare_s"] == pytest.approx(10.1 + 15.0)  # 100 and 5000 clients, once each
    assert est["100:100"] == pytest.approx(20 + 4 * 50 * 0.1)
    assert est["5000:500"] == pytest.approx(20 + 4 * 250 * 0.1)
    assert est["total_s"] == pytest.approx(est["prepare_s"] + est["100:100"] + est["5000:100"] + est["5000:500"])
    default = cs.estimate_s(cs.parse_cells(cs.DEFAULT_CELLS), rounds_timed=3, ranks=2)
    assert default["total_s"] < 20 * 60  # the budget on 2 cores


def _probe(rank: int, walls: list[float], rss: list[float], cache: list[tuple[int, int, int]], idx: float = 0.05):
    keys = ("hits", "misses", "evictions")
    return {"rank": rank, "index_load_s": idx, "peak_rss_mib": 900.0 + rank, "cache_max_clients": 256,
            "rounds": [{"round": i + 1, "wall_s": w, "rss_mib": m, "cache": dict(zip(keys, c))}
                       for i, (w, m, c) in enumerate(zip(walls, rss, cache))]}


def _cell(k=5000, c=100, walls0=(9.0, 2.0, 3.0, 4.0), walls1=(8.0, 2.5, 2.0, 5.0), tokens=(1000, 2000, 4000)):
    p0 = _probe(0, list(walls0), [800, 810, 812, 811], [(0, 50, 0), (1, 99, 0), (3, 147, 0), (3, 197, 0)])
    p1 = _probe(1, list(walls1), [790, 800, 801, 803], [(0, 50, 0), (0, 100, 0), (0, 150, 0), (10, 190, 4)], 0.07)
    return cs.summarize_cell(k, c, [p1, p0], ranks=2, rounds_timed=3, batch=13, tokens=list(tokens))


def test_summarize_cell():
    row = _cell()
    assert row["round_s"] == [2.5, 3.0, 5.0]  # max over ranks, rounds 2..4
    assert (row["round_s_median"], row["round_s_min"], row["round_s_max"]) == (3.0, 2.5, 5.0)
    assert row["s_per_1k_tokens_median"] == pytest.approx(sorted([2.5, 1.5, 1.25])[1])
    assert row["index_load_s"] == [0.05, 0.07] and row["peak_rss_mib"] == [900.0, 901.0]
    assert row["steady_rss_mib"] == [811, 801]
    c0, c1 = row["cache"]
    assert (c0["hits"], c0["misses"], c0["evictions"]) == (3, 147, 0) and c0["warmup"]["misses"] == 50
    assert (c1["hits"], c1["misses"], c1["evictions"]) == (10, 140, 4) and c1["max_clients"] == 256
    with pytest.raises(ValueError, match="rounds"):
        cs.summarize_cell(1, 1, [_probe(0, [1.0, 2.0], [1, 1], [(0, 0, 0)] * 2)], ranks=1, rounds_timed=3, batch=1)
    with pytest.raises(ValueError, match="no probe"):
        cs.summarize_cell(1, 1, [], ranks=1, rounds_timed=3, batch=1)


def _full_row(**kw) -> dict:
    row = _cell(**kw)
    row.update({"wall_s": 60.0, "loadavg_before": [0.1] * 3, "loadavg_after": [1.0] * 3, "cmd": "x"})
    return row


def test_row_schema():
    row = _full_row()
    cs.check_row(row)
    cs.check_row({"kind": "prepare", "num_clients": 100, "prepare_s": 1.0, "prepare_wall_s": 2.0, "index_bytes": 1,
                  "shard_bytes": 2, "num_shards": 4, "loadavg_before": [], "loadavg_after": [], "cmd": "x"})
    cs.check_row({"kind": "hardware", "env": {}, "date": "d"})
    del row["cache"][0]["evictions"]
    with pytest.raises(ValueError, match="cache"):
        cs.check_row(row)
    with pytest.raises(ValueError, match="lacks round_s"):
        cs.check_row({k: v for k, v in _full_row().items() if k != "round_s"})
    with pytest.raises(ValueError, match="kind"):
        cs.check_row({"kind": "other"})


def test_build_table_baselines_per_cohort_and_memory_vs_fewest_clients():
    rows = [
        {"kind": "prepare", "num_clients": 100, "prepare_s": 10.0, "prepare_wall_s": 14.0, "index_bytes": 12 * 1024},
        {"kind": "prepare", "num_clients": 5000, "prepare_s": 17.0, "prepare_wall_s": 21.0, "index_bytes": 490 * 1024},
        _full_row(k=5000, c=100, walls0=(9, 6.3, 6.3, 6.3), walls1=(9, 6.0, 6.0, 6.0)),
        _full_row(k=100, c=100, walls0=(9, 6.0, 6.0, 6.0), walls1=(9, 6.0, 6.0, 6.0)),
        _full_row(k=5000, c=500, walls0=(30, 30, 31, 32), walls1=(30, 30, 30, 30)),
    ]
    for r in rows[2:]:
        cs.check_row(r)
    rows[3]["steady_rss_mib"] = [700.0, 700.0]
    table = cs.build_table(rows)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| clients | cohort |") and "vs 100 clients" in lines[0]
    assert len(lines) == 2 + 3 and all(ln.count("|") == 13 for ln in lines)
    by = {tuple(ln.split("|")[1:3]): ln for ln in lines[2:]}
    base, big, c500 = by[(" 100 ", " 100 ")], by[(" 5000 ", " 100 ")], by[(" 5000 ", " 500 ")]
    assert "| baseline |" in base and "10.0 (14.0)" in base and "| 12 |" in base
    assert "6.30 (6.30–6.30) | +5.0% |" in big and "17.0 (21.0)" in big and "| 490 |" in big
    assert "| baseline |" in c500  # the only cohort-500 row is its own baseline
    assert "+106 MiB (+15.1%)" in big  # mean(811, 801) - 700
    assert "| 0.050 |" not in base and "| 0.070 |" in base  # index load: max over ranks
    assert "13 / 287 / 4 |" in big  # cache over the timed rounds, summed over ranks


def test_probes_count_cache_hits_misses_evictions_and_restore(monkeypatch):
    from hpcfed.data.shards import ShardedDataset
    from hpcfed.fl.loop import ClientCache, FederatedLoop

    class FakeData:
        loads = 0

        def load_client(self, cid):
            FakeData.loads += 1
            return ("data", cid)

    class FakeComm:
        rank, world_size = 1, 2

    class FakeLoop:
        comm = FakeComm()

    def fake_round(self, r):
        for cid in ([1, 2, 3] if r == 1 else [3, 4, 1]):
            self.clients.get(cid)
        return {"round_s": 0.5}

    monkeypatch.setattr(FederatedLoop, "run_round", fake_round)
    originals = (ShardedDataset.__init__, ClientCache.get, FederatedLoop.run_round)
    record: dict = {}
    restore = cs.install_probes(record)
    try:
        loop = FakeLoop()
        loop.clients = ClientCache(FakeData(), max_clients=3)
        assert FederatedLoop.run_round(loop, 1) == {"round_s": 0.5}
        FederatedLoop.run_round(loop, 2)
    finally:
        restore()
    assert (ShardedDataset.__init__, ClientCache.get, FederatedLoop.run_round) == originals
    assert record["rank"] == 1 and record["world_size"] == 2 and record["cache_max_clients"] == 3
    r1, r2 = record["rounds"]
    assert r1["round"] == 1 and r1["metrics_round_s"] == 0.5 and r1["rss_mib"] > 0 and r1["wall_s"] >= 0
    assert r1["cache"] == {"hits": 0, "misses": 3, "evictions": 0, "size": 3}
    # round 2: 3 hits; 4 misses and evicts 1 (the least recently used); 1 misses again and evicts 2
    assert r2["cache"] == {"hits": 1, "misses": 5, "evictions": 2, "size": 3}
    assert FakeData.loads == 5


def test_probe_times_the_index_load(tmp_path):
    from hpcfed.config import DataConfig
    from hpcfed.data import ShardedDataset, prepare_shards
    from hpcfed.data.synthetic import write_image_folder

    write_image_folder(tmp_path / "img", classes=("a", "b"), train_per_class=4, size=8)
    root = prepare_shards(DataConfig(name="img", kind="image", source=str(tmp_path / "img"), test_source=None,
                                     partition="iid",
                                     num_clients=3, num_shards=1, shard_dir=str(tmp_path / "s")))
    record: dict = {}
    restore = cs.install_probes(record)
    try:
        ShardedDataset(root).close()
        ShardedDataset(root).close()
    finally:
        restore()
    assert 0 <= record["index_load_s"] < 60 and record["index_clients"] == 3


def test_mpirun_prefix():
    pre = cs.mpirun_prefix(2)
    assert pre[-2:] == ["-n", "2"] and "--bind-to" in pre and pre[pre.index("--bind-to") + 1] == "none"
    assert ("--allow-run-as-root" in pre) == (os.geteuid() == 0)


def test_cpu_lock(tmp_path):
    path = str(tmp_path / "lock")
    with cs.CpuLock(path):
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(fd)
    with cs.CpuLock(None):
        pass


def test_dry_run_prints_plan_and_estimate(capsys):
    assert cs.main(["--dry-run", "--tiny", "--cells", "8:4", "--rounds", "3", "--work", "runs/x"]) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "fl.cohort_size=4" in out and "mpirun -n 2" in out
    assert "plan:" in out
