"""Run a federated job on this rank with a counting communicator; rank 0 saves what the tests compare.

Usage (under mpirun or plainly): python tests/dist/_worker.py OUT.pt key=value ...
"""

import json
import sys

import torch

from hpcfed.config import load_config
from hpcfed.dist import CountingComm, init_runtime, make_comm
from hpcfed.main import _quiet_libraries, build_loop


def main() -> None:
    out = sys.argv[1]
    _quiet_libraries()
    cfg = load_config(sys.argv[2:])
    rt = init_runtime(device="cpu", backend="gloo", timeout_s=120, num_threads=1)
    comm = CountingComm(make_comm())
    loop, ds = build_loop(cfg, rt, comm)
    theta0 = loop.theta_global.clone()
    state = loop.run()
    if rt.is_main:
        torch.save({
            "theta": loop.theta_global.clone(),
            "theta0": theta0,
            "numel": loop.flat.numel,
            "calls": dict(comm.calls),
            "bytes": dict(comm.bytes),
            "history": json.dumps(state.history),
            "world": rt.world_size,
        }, out)
    ds.close()
    rt.shutdown()


if __name__ == "__main__":
    main()
