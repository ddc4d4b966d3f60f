"""The round loop and local training go through the kernel dispatchers (issue 3), and the Triton path
(run in Triton's CPU interpreter) gives the same round as the torch reference path."""

import pytest
import torch

from hpcfed import kernels
from hpcfed.config import load_config
from hpcfed.dist import LocalComm
from hpcfed.fl.loop import FederatedLoop
from hpcfed.compose import build_loop


class _Rt:
    device = torch.device("cpu")


def _loop(words, backend=None) -> FederatedLoop:
    cfg = load_config(list(words) + ["fl.rounds=1"])
    loop, _ = build_loop(cfg, _Rt(), LocalComm())
    if backend is not None:  # rebuild the parts that hold the backend choice
        loop = FederatedLoop(cfg, loop.model, loop.flat, loop.dataset, None, LocalComm(), _Rt.device,
                             kernel_backend=backend)
    return loop


def test_aggregation_and_local_steps_use_the_dispatchers(toy_text):
    loop = _loop(toy_text)
    before = kernels.dispatch_counts.copy()
    m = loop.run_round(1)
    calls = kernels.dispatch_counts - before
    assert calls["masked_accumulate"] == m["clients"] == 4
    assert calls["server_update"] == 1
    assert calls["masked_adamw_step"] == m["local_steps"] == 4 * 3


def test_triton_path_matches_torch_path(toy_text, monkeypatch):
    if not kernels.HAS_TRITON:
        pytest.skip("triton not installed")
    # The loop's tensors are on CPU (_Rt.device), also on a GPU machine: forced Triton runs them in Triton's CPU
    # interpreter, switched on for this test only (hpcfed.kernels reads the variable at every launch, see
    # tests/kernels/conftest.py), so the test runs alone or in any order instead of depending on another conftest.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    words = list(toy_text) + ["fl.server_opt.name=adam", "fl.server_opt.lr=0.01"]
    a = _loop(words, "torch")
    b = _loop(words, "triton")
    before = kernels.backend_counts.copy()
    a.run_round(1)
    b.run_round(1)
    used = kernels.backend_counts - before
    assert used[("masked_accumulate", "triton")] == 4 and used[("server_update", "triton")] == 1
    # local AdamW turns last-bit differences of near-zero gradients into ~lr-sized noise on a few entries
    torch.testing.assert_close(a.theta_global, b.theta_global, rtol=1e-4, atol=1e-5)
