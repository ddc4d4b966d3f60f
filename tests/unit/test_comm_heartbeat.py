"""A one-process step longer than the process group's timeout: the main process's heartbeat keeps the others'
waits short (hpcfed.dist.comm.main_then_share), so they get the result instead of gloo's raw timeout."""

import datetime
import json
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hpcfed.compose  # imported here, not in the forked ranks: an import there could outlast the 2.5 s timeout
import hpcfed.data
from hpcfed.dist import CountingComm, LocalComm, MainFailed, TorchDistComm
from hpcfed.dist.comm import main_then_share

TIMEOUT_S = 2.5  # the process group's collective timeout
STEP_S = 4.0  # the main process's one-process step: longer than the timeout


def _worker(rank: int, store: str, out: str, heartbeat_s: float, cases: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    res = {}
    try:
        comm = CountingComm(TorchDistComm(heartbeat_s=heartbeat_s))

        def slow(value):
            def fn():
                time.sleep(STEP_S)
                return value
            return fn

        def slow_failure():
            time.sleep(STEP_S)
            raise ValueError("shards broken\nsecond line")

        for case in cases:
            before = comm.calls["broadcast_object"]
            try:
                if case == "shared":
                    got = comm.on_main(slow({"verdict": 7}))
                elif case == "not_shared":  # a short step: one broadcast
                    got = comm.on_main(lambda: "main only", share_result=False)
                elif case == "failed":
                    got = comm.on_main(slow_failure)
                elif case == "prepare":  # the shards, prepared on rank 0 for longer than the timeout
                    hpcfed.data.ensure_prepared = lambda data, tokenizer: slow(f"/shards/{tokenizer}")()
                    cfg = SimpleNamespace(data=SimpleNamespace(tokenizer=None), model=SimpleNamespace(path="tok"))
                    got = str(hpcfed.compose.prepare_data_collectively(cfg, comm))
                elif case == "nested":  # a collective inside the step: refused on the main process
                    got = comm.on_main(lambda: comm.on_main(lambda: 1))
                res[case] = {"got": got}
            except Exception as e:  # noqa: BLE001 - reported to the test
                if isinstance(e, (MainFailed, ValueError)) or "inside another one" in str(e):
                    res[case] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
                else:  # the backend's timeout: this process group is done
                    res[case] = {"error": f"{type(e).__name__}: {str(e)[:200]}", "timeout": True}
                    break
            res[case]["broadcasts"] = comm.calls["broadcast_object"] - before
    finally:
        with open(f"{out}.{rank}", "w") as fh:
            json.dump(res, fh)
        if "timeout" not in json.dumps(res):
            dist.destroy_process_group()


def _run(tmp_path, heartbeat_s, cases):
    out = str(tmp_path / "res")
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "store"), out, heartbeat_s, cases), nprocs=2,
                             start_method="fork", join=False)
    deadline = time.time() + 90
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("two-rank heartbeat test hung")
    return [json.load(open(f"{out}.{r}")) for r in (0, 1)]


def test_a_step_longer_than_the_timeout_reaches_every_process(tmp_path):
    cases = ["shared", "failed", "prepare", "not_shared", "nested"]
    r0, r1 = _run(tmp_path, heartbeat_s=0.3, cases=cases)
    assert r0["shared"]["got"] == r1["shared"]["got"] == {"verdict": 7}
    assert r0["not_shared"]["got"] == "main only" and r1["not_shared"]["got"] is None
    assert r0["failed"]["error"] == "ValueError: shards broken"  # the main process re-raises its own error
    assert r1["failed"]["error"] == "MainFailed: ValueError: shards broken"  # the others: its one-line message
    assert r0["prepare"]["got"] == r1["prepare"]["got"] == "/shards/tok"  # data preparation waits the same way
    # the inner on_main raised RuntimeError on the main process, which the outer one shared as its failure
    assert r0["nested"]["error"] == "RuntimeError: main_then_share/on_main called inside another one: its " \
        "function must issue no collective (the heartbeat thread is the only one that may while it runs)"
    assert r1["nested"]["error"].startswith("MainFailed: RuntimeError: main_then_share/on_main called inside")
    assert r0["not_shared"]["broadcasts"] == r1["not_shared"]["broadcasts"] == 1
    for case in cases[:3]:
        # heartbeats (~STEP_S / heartbeat_s of them; fewer on a loaded machine), then the result; both ranks
        # took part in every broadcast
        assert r0[case]["broadcasts"] == r1[case]["broadcasts"] >= 3, case


def test_without_a_heartbeat_the_others_time_out(tmp_path):
    """The control: a heartbeat slower than the step is no heartbeat, and the waiting process dies of gloo's
    timeout, as hpcfed did before main_then_share (FedPFT's distillation on MPNet, 2026-12-02). Shows that the
    first test's timeout and step lengths are sensitive."""
    _, r1 = _run(tmp_path, heartbeat_s=100.0, cases=["shared"])
    assert r1["shared"].get("timeout") and "Timed out waiting 2500ms" in r1["shared"]["error"], r1


def test_one_process_and_a_short_step_cost_one_broadcast():
    comm = CountingComm(LocalComm())
    assert comm.on_main(lambda: 3) == 3
    assert main_then_share(comm, lambda: ("ok", 1)) == ("ok", 1)
    assert comm.calls["broadcast_object"] == 2  # no heartbeat for a step shorter than HEARTBEAT_S


class _DeadPeerComm:
    """Rank 0 of a world whose peer has died: every broadcast fails, as gloo's does."""

    rank, world_size, heartbeat_s = 0, 2, 0.05

    def broadcast_object(self, obj, src=0):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:1234\ndetails")


def test_a_failed_heartbeat_is_raised_on_the_main_process_after_the_step():
    done = []
    step = lambda: (time.sleep(0.3), done.append(1), ("ok", 1))[-1]  # noqa: E731
    with pytest.raises(RuntimeError) as info:
        main_then_share(_DeadPeerComm(), step)
    assert str(info.value) == ("a heartbeat broadcast of the main process failed (a peer died?): RuntimeError: "
                               "Connection closed by peer [127.0.0.1]:1234")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert done == [1]  # the step itself ran to its end
