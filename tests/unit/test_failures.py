"""Failure isolation in the round loop: a failing client is dropped, the round goes on, past the cap the
run stops after its callbacks (checkpoint) ran."""

import numpy as np
import pytest
import torch

from hpcfed.config import load_config
from hpcfed.dist import LocalComm
from hpcfed.fl.loop import RunStopped
from hpcfed.compose import build_loop
from tests.conftest import fail_client


class _Rt:
    device = torch.device("cpu")


def _loop(words, *extra):
    cfg = load_config(list(words) + ["fl.rounds=1", *extra])
    loop, ds = build_loop(cfg, _Rt(), LocalComm())
    return loop


def test_failed_client_is_dropped_exactly(toy_text):
    """Dropping a client that raised gives bitwise the aggregate of the healthy clients alone (which is
    what weight 0 for that client computes)."""
    a = _loop(toy_text)
    cohort = a.my_clients(1)
    bad = cohort[1]
    fail_client(a, bad, "disk on fire")
    ma = a.run_round(1)
    assert ma["clients_failed"] == 1 and ma["clients"] == len(cohort) - 1
    assert a.failures == [(1, bad, "RuntimeError: disk on fire")]
    assert ma["bytes_up"] == (len(cohort) - 1) * a.flat.numel * 4

    b = _loop(toy_text)
    w = b.algorithm.client_weight
    b.algorithm.client_weight = lambda n, _w=w: 0.0 if n == len(b.clients.get(bad)) else _w(n)
    sizes = [len(b.clients.get(c)) for c in cohort]
    assert sizes.count(len(b.clients.get(bad))) == 1, "toy partition must have distinct client sizes"
    b.run_round(1)
    assert torch.equal(a.theta_global, b.theta_global)


@pytest.mark.parametrize("how", ["nan", "norm"])
def test_unhealthy_updates_dropped(toy_text, how):
    extra = ["fl.inject_failure_rate=0.5"] if how == "nan" else ["fl.max_update_norm=1e-12"]
    loop = _loop(toy_text, *extra, "fl.max_failed_clients_per_round=100")
    theta0 = loop.theta_global.clone()
    cohort = loop.my_clients(1)
    m = loop.run_round(1)
    assert torch.isfinite(loop.theta_global).all()
    if how == "nan":
        # the injection rule: client c of round r is poisoned iff its (seed, 3, r, c) draw is below the rate
        poisoned = [c for c in cohort if np.random.default_rng([loop.cfg.seed, 3, 1, c]).random() < 0.5]
        assert 1 <= len(poisoned) < len(cohort), "seed must poison some but not all clients"
        assert loop.failures == [(1, c, "non-finite update") for c in poisoned]
        assert not torch.equal(loop.theta_global, theta0)  # the healthy clients still moved the model
    else:
        assert [c for _, c, _ in loop.failures] == cohort
        assert all(r.startswith("update norm ") and r.endswith("> fl.max_update_norm=1e-12")
                   for _, _, r in loop.failures), loop.failures
        assert torch.equal(loop.theta_global, theta0)  # everyone dropped: nothing changes
    assert m["clients_failed"] == len(loop.failures) and m["clients"] + m["clients_failed"] == 4


def test_too_many_failures_stop_after_callbacks(toy_text):
    loop = _loop(toy_text, "fl.max_update_norm=1e-12", "fl.max_failed_clients_per_round=1")
    seen = []

    class Spy:
        def on_round_end(self, lp, m):
            seen.append(("round", m["round"]))

        def on_stop(self, lp, reason):
            seen.append(("stop", reason))

    loop.callbacks = [Spy()]
    with pytest.raises(RunStopped, match="4 clients failed in round 1"):
        loop.run()
    assert seen[0] == ("round", 1) and seen[1][0] == "stop"
