"""Run a federated job on this rank with a counting communicator; rank 0 saves what the tests compare.

Usage (under mpirun or plainly): python tests/multirank/_worker.py OUT.pt key=value ...

Besides OUT.pt (rank 0), every rank writes OUT.rank<r>.json with what it actually did, counted by spies at
the points where data moves: the clients it trained per round, the elements each handed-down client was
given (its mask, or the whole buffer), and the elements the fused accumulate kernel folded in (sent up).
"""

import json
import sys
from collections import defaultdict

import torch

import hpcfed.kernels as kernels
from hpcfed.config import load_config
from hpcfed.dist import CountingComm, init_runtime, make_comm
from hpcfed.compose import build_loop, quiet_libraries


def start(words):
    """The job of config words ``words`` on this rank (gloo, 1 thread) behind a counting communicator:
    (runtime, comm, loop, dataset). Shared by the worker scripts of tests/multirank."""
    quiet_libraries()
    cfg = load_config(list(words))
    rt = init_runtime(device="cpu", backend="gloo", timeout_s=120, num_threads=1)
    comm = CountingComm(make_comm())
    loop, ds = build_loop(cfg, rt, comm)
    return rt, comm, loop, ds


def _elements(mask, n: int) -> int:
    return n if mask is None else int(mask.count_nonzero())


def main() -> None:
    out = sys.argv[1]
    rt, comm, loop, ds = start(sys.argv[2:])
    theta0 = loop.theta_global.clone()

    n = loop.flat.numel
    current = {"round": 0}
    trained: dict[int, list[int]] = defaultdict(list)
    up: dict[int, int] = defaultdict(int)
    down: dict[int, int] = defaultdict(int)
    run_round, local_update, accumulate = loop.run_round, loop.algorithm.local_update, kernels.masked_accumulate

    def spy_round(r):
        current["round"] = r
        return run_round(r)

    def spy_update(trainer, theta, data, seed, cid):
        trained[current["round"]].append(cid)
        down[current["round"]] += _elements(loop.algorithm.client_mask(cid), n)
        return local_update(trainer, theta, data, seed, cid)

    def spy_accumulate(acc, cnt, theta_c, theta_g, w, mask=None, **kw):
        up[current["round"]] += _elements(mask, n)
        return accumulate(acc, cnt, theta_c, theta_g, w, mask, **kw)

    loop.run_round, loop.algorithm.local_update, kernels.masked_accumulate = spy_round, spy_update, spy_accumulate
    state = loop.run()
    with open(f"{out}.rank{rt.rank}.json", "w") as fh:
        json.dump({"trained": trained, "elems_up": up, "elems_down": down}, fh)
    if rt.is_main:
        torch.save({
            "theta": loop.theta_global.clone(),
            "theta0": theta0,
            "numel": n,
            "stats_len": loop.aggregator.buffer.numel() - 2 * n,
            "calls": dict(comm.calls),
            "bytes": dict(comm.bytes),
            "history": json.dumps(state.history),
            "world": rt.world_size,
        }, out)
    ds.close()
    rt.shutdown()


if __name__ == "__main__":
    main()
