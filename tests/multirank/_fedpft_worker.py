"""Run a FedPFT job on this rank with a counting communicator; every rank saves its sub-model tensors, rank 0
also the global model and the collective counts.

Usage (under mpirun or plainly): python tests/multirank/_fedpft_worker.py OUT_PREFIX key=value ...
Writes OUT_PREFIX.rank<r>.pt.
"""

import json
import sys

import torch

from _worker import start  # the script's folder is on sys.path
from hpcfed.algorithms import fedpft_submodel as sm


def main() -> None:
    prefix = sys.argv[1]
    rt, comm, loop, ds = start(sys.argv[2:])
    alg = loop.algorithm
    sub0 = sm.pack_params(sm.distilled_params(loop.model.backbone, alg.layers)).clone()  # after stage 1
    state = loop.run()
    torch.save({
        "theta": loop.theta_global.clone(),
        "sub_stage1": sub0,
        "sub_final": sm.pack_params(sm.distilled_params(loop.model.backbone, alg.layers)).clone(),
        "numel": loop.flat.numel,
        "calls": dict(comm.calls),
        "bytes": dict(comm.bytes),
        "history": json.dumps(state.history),
        "world": rt.world_size,
    }, f"{prefix}.rank{rt.rank}.pt")
    ds.close()
    rt.shutdown()


if __name__ == "__main__":
    main()
