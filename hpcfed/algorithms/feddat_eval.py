"""FedDAT's evaluation (Chen et al., AAAI 2024; reference code ``task_trainer.py:eval``): DAT, A_C-only and
A_S-only, each with the client's own parameters, on each client's own held-out data, beside the global
test-split numbers. Used by :meth:`hpcfed.algorithms.feddat.FedDAT.evaluate`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hpcfed.fl.baselines import split_holdout
from hpcfed.fl.client import evaluate
from hpcfed.fl.sampling import cohort_for_round
from hpcfed.peft.dual_adapter import Mode

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.algorithms.feddat import FedDAT
    from hpcfed.fl.loop import FederatedLoop


def eval_clients(loop: "FederatedLoop", round_idx: int, max_clients: int) -> list[int]:
    """The clients of the personalised evaluation: the lowest ids among those in a cohort of rounds
    1..``round_idx`` (the same list in every process), at most ``max_clients``."""
    seen: set[int] = set()
    for r in range(1, round_idx + 1):
        seen.update(cohort_for_round(loop.cfg.seed, r, loop.dataset.num_clients, loop.cfg.fl.cohort_size,
                                      loop.cfg.fl.sampling))
    return sorted(seen)[:max_clients]


def evaluate_feddat(algo: "FedDAT", loop: "FederatedLoop") -> dict[str, Any]:
    """Global and personalised metrics (identical in every process).

    * ``{dat,ac,as}_local_acc`` / ``_loss``: DAT, A_C-only and A_S-only, each with the client's own head
      (``head=personal``), on each evaluated client's held-out split, mean over clients
      (``*_local_acc_pooled``: over examples) — the reference code's per-client evaluation;
      ``variant=single`` reports ``as_*`` only; ``personal_local_*`` is the method's personalised model (the
      DAT, or A_S with the client's head under ``single``), the number to compare the two variants on;
    * ``test_acc`` / ``test_loss``: A_S on the global test split — with ``head=shared`` the global model
      θ_global; with ``head=personal`` (no global head exists) the mean over the first
      max(1, ``eval_test_clients``) evaluated clients of A_S with each one's head (before any client
      has trained: the initial head);
    * with ``eval_test_clients`` > 0 and the DAT: ``dat_test_acc`` / ``ac_test_acc``, mean over those
      clients of their personalised models on the global test split.
    """
    cids = algo.eval_clients(loop)
    loop.flat.data.copy_(loop.theta_global)
    personal = algo.head_flat is not None
    if personal and not cids:
        algo.head_flat.data.copy_(algo.head_init)
    if not cids or not personal:
        out = dict(loop.evaluate_test())
        if not cids:
            return out
    else:
        out = {}
    modes = [Mode.DAT, Mode.CLIENT, Mode.STUDENT] if algo.dat else [Mode.STUDENT]
    test_modes = ([Mode.DAT, Mode.CLIENT] if algo.dat else []) + ([Mode.STUDENT] if personal else [])
    k_test = min(max(algo.params.eval_test_clients, 1 if personal else 0), len(cids)) if test_modes else 0
    test_modes = test_modes if k_test else []
    bs, bf16 = loop.cfg.eval.batch_size, loop.cfg.fl.local.bf16
    comm, dev = loop.comm, loop.device
    algo.load_global_copy(loop.theta_global)
    local = torch.zeros(len(cids), len(modes), 3, dtype=torch.float64, device=dev)  # [loss, correct, n]
    test = torch.zeros(max(k_test, 1), max(len(test_modes), 1), 3, dtype=torch.float64, device=dev)
    own = [f for f in (algo.client_flat, algo.head_flat) if f is not None]  # the client's state, restored after
    saved = [f.data.clone() for f in own]
    try:
        my_share = set(comm.share(range(len(cids))))  # this process evaluates these clients
        for i, cid in enumerate(cids):
            mine = i in my_share
            if mine or i < k_test:
                algo.load_client(cid, algo.round_idx + 1)
            if mine:
                _, hold = split_holdout(loop.clients.get(cid), algo.fl.local_only_holdout, algo.holdout_seed,
                                        cid)
                if len(hold):
                    for j, m in enumerate(modes):
                        with algo.mode(m):
                            local[i, j] = evaluate(loop.model, hold, dev, batch_size=bs, bf16=bf16)
            if i < k_test and loop.test_data is not None:  # the test split is split over processes
                for j, m in enumerate(test_modes):
                    with algo.mode(m):
                        test[i, j] = evaluate(loop.model, loop.test_data, dev, batch_size=bs, bf16=bf16,
                                              shard=comm.shard)
    finally:
        for f, d in zip(own, saved):
            f.data.copy_(d)
    comm.all_reduce_sum(local, tag="eval")
    if k_test:
        comm.all_reduce_sum(test, tag="eval")
    names = {Mode.DAT: "dat", Mode.CLIENT: "ac", Mode.STUDENT: "as"}
    has = local[:, 0, 2] > 0
    for j, m in enumerate(modes):
        s = local[has, j]
        if not len(s):
            continue
        out[f"{names[m]}_local_acc"] = float((s[:, 1] / s[:, 2]).mean())
        out[f"{names[m]}_local_loss"] = float((s[:, 0] / s[:, 2]).mean())
        out[f"{names[m]}_local_acc_pooled"] = float(s[:, 1].sum() / s[:, 2].sum())
    out["eval_clients"] = int(has.sum())
    # the method's personalised model, comparable across variants: the DAT, or A_S with its head (single)
    pm = "dat" if algo.dat else "as"
    for suffix in ("acc", "loss", "acc_pooled"):
        if f"{pm}_local_{suffix}" in out:
            out[f"personal_local_{suffix}"] = out[f"{pm}_local_{suffix}"]
    for j, m in enumerate(test_modes):
        s = test[:k_test, j]
        n = s[:, 2].clamp_min(1)
        key = "test" if m == Mode.STUDENT else f"{names[m]}_test"
        out[f"{key}_acc"] = float((s[:, 1] / n).mean())
        if m == Mode.STUDENT:
            out["test_loss"] = float((s[:, 0] / n).mean())
    return out
