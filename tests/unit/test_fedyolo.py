"""FedYolo (Zhang et al., arXiv:2307.04905, 2023): per-task modules and heads, masked per-task aggregation,
modules-only bytes, task isolation, the derived word-order task and the client → tasks assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcfed.config import ConfigError, load_config
from hpcfed.dist import LocalComm
from hpcfed.fl.algorithm import parse_params
from hpcfed.fl.client import LocalResult
from hpcfed.algorithms.fedyolo import FedYolo, FedYoloParams, build_multitask
from hpcfed.peft.multitask import task_masks
from hpcfed.algorithms.fedyolo_tasks import assign_tasks, wordorder_rows
from hpcfed.compose import build_loop, load_run_config
from tests.conftest import tiny_model_args


class _Rt:
    device = torch.device("cpu")


def _loop(words, *extra):
    cfg = load_config(list(words) + ["fl.algorithm=fedyolo", "eval.every_rounds=100", *extra])
    loop, _ = build_loop(cfg, _Rt(), LocalComm())
    return loop


# -- parameters -----------------------------------------------------------------------------------------
def test_params_defaults_and_errors():
    p = parse_params(FedYoloParams, {}, "fedyolo")
    assert p.task_kinds == ["label", "wordorder"] and p.task_share == 1.0 and p.schedule == "joint"
    assert parse_params(FedYoloParams, {"tasks": " wordorder , label "}, "fedyolo").task_kinds == ["wordorder", "label"]
    for bad, key in [({"tasks": "label,nope"}, "fl.algo.tasks"), ({"tasks": "label,label"}, "fl.algo.tasks"),
                     ({"task_share": 0.0}, "fl.algo.task_share"), ({"task_share": 1.5}, "fl.algo.task_share"),
                     ({"schedule": "random"}, "fl.algo.schedule"), ({"phase_rounds": -1}, "fl.algo.phase_rounds"),
                     ({"task_shar": 0.5}, "task_shar")]:
        with pytest.raises(ConfigError, match=key):
            parse_params(FedYoloParams, bad, "fedyolo")


def test_config_rejects_wordorder_on_images_and_centralized():
    with pytest.raises(ConfigError, match="wordorder"):
        load_run_config(["fl.algorithm=fedyolo", "data.kind=image"] + tiny_model_args("timm_vit"))
    with pytest.raises(ConfigError, match="fl.mode"):
        load_run_config(["fl.algorithm=fedyolo", "fl.mode=centralized"])


# -- data ---------------------------------------------------------------------------------------------------
def test_wordorder_rows_hand_case():
    sents = ["a b c", "a b c d", "x y y x", "one two three four five", "p q r s"]
    rows = wordorder_rows(sents, seed=0)
    # "a b c" is too short, "x y y x" reads the same reversed: 3 kept, in input order, floor(3/2) = 1 reversed
    originals = ["a b c d", "one two three four five", "p q r s"]
    assert len(rows) == 3 and sum(y for _, y in rows) == 1
    for (text, y), orig in zip(rows, originals):
        assert text == (" ".join(orig.split()[::-1]) if y else orig)
    assert rows == wordorder_rows(sents, seed=0)  # deterministic
    big = wordorder_rows([f"w{i} a b c" for i in range(101)], seed=3)
    assert sum(y for _, y in big) == 50


def test_assign_tasks_hand_cases():
    # permutation of default_rng([0, 11]) over 4 clients is [0, 2, 1, 3]; k = ceil(0.75 * 4) = 3;
    # task 0 takes positions 0..2 -> clients {0, 2, 1}; task 1 starts at position 2 -> {1, 3, 0}
    assert list(np.random.default_rng([0, 11]).permutation(4)) == [0, 2, 1, 3]
    assert assign_tasks(4, 2, 0.75, seed=0) == [[0, 1], [0, 1], [0], [1]]
    assert assign_tasks(5, 2, 1.0, seed=4) == [[0, 1]] * 5
    half = assign_tasks(6, 2, 0.5, seed=0)
    assert all(len(h) == 1 for h in half) and sum(h == [0] for h in half) == 3


# -- the model ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "adapter", "prompt", "full"])
def test_layout_and_task_isolation(method):
    """Layout [shared | M_0 h_0 | M_1 h_1]; changing task 1's elements leaves task 0's outputs unchanged
    (per-task modules), except under the shared full update, where the backbone is both tasks'."""
    cfg = load_config(tiny_model_args("hf_text") + [f"peft.method={method}"])
    model, flat, switch, seg_task = build_multitask(cfg, [2, 3])
    m0, m1 = task_masks(flat, seg_task, 2)
    shared = m0 & m1
    assert int(m0.sum()) + int(m1.sum()) - int(shared.sum()) == flat.numel
    assert (shared.any().item()) == (method == "full")
    own = [i for i, t in enumerate(seg_task) if t is not None]
    assert seg_task[own[0]:] == sorted(seg_task[own[0]:]), "task segments must be contiguous, in task order"
    x = torch.randint(1, 99, (4, 9))
    model.eval()
    switch.set(1)
    assert model(x).shape == (4, 3)
    switch.set(0)
    before = model(x)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        flat.data[m1 & ~m0] += torch.randn(int((m1 & ~m0).sum()), generator=g)
        if method == "full":
            flat.data[shared] += 0.1 * torch.randn(int(shared.sum()), generator=g)
    after = model(x)
    assert torch.equal(before, after) == (method != "full")


# -- aggregation through the loop's seam -------------------------------------------------------------------
def test_masked_per_task_average_hand_case(toy_text):
    """Tasks 0 and 1 with per-task heads only (66 elements each). Clients 0, 1, 2 hold {0}, {0, 1}, {1}; the
    others none. With uniform weights, task 0 becomes the mean of clients 0 and 1 only, task 1 of 1 and 2 only;
    what a client changed outside its mask is ignored; bytes up count only masked elements."""
    loop = _loop(toy_text, "peft.method=head", "fl.cohort_size=6", "fl.weighting=uniform")
    alg = loop.algorithm
    alg.held[:] = [[0], [0, 1], [1], [], [], []]
    m0, m1 = alg.masks
    n = loop.flat.numel
    assert n == 132 and int(m0.sum()) == 66 and int(m1.sum()) == 66 and not (m0 & m1).any()
    theta0 = loop.theta_global.clone()
    delta = {0: 1.0, 1: 3.0, 2: 9.0}

    def fake_update(trainer, theta, data, seed, cid):
        trainer.flat.data.copy_(theta + delta.get(cid, 100.0))  # every element moves, masked or not
        return LocalResult(0.0, 1, 1, 0.0)

    alg.local_update = fake_update
    m = loop.run_round(1)
    d = loop.theta_global - theta0
    assert torch.allclose(d[m0], torch.full((66,), 2.0))  # (1 + 3) / 2
    assert torch.allclose(d[m1], torch.full((66,), 6.0))  # (3 + 9) / 2
    assert m["bytes_up"] == (66 + 132 + 66) * 4
    assert m["bytes_down_modules"] == (66 + 132 + 66) * 4
    assert m["bytes_full_model_fl"] == 2 * 3 * alg.full_model_params * 4  # 3 clients train, up + down
    assert alg.full_model_params == sum(p.numel() for p in loop.model.parameters())  # no module: all of it


def test_task_nobody_holds_stays_bitwise(toy_text):
    loop = _loop(toy_text, "peft.method=head", "fl.cohort_size=6", "fl.weighting=samples")
    alg = loop.algorithm
    alg.held[:] = [[0]] * 6
    theta0 = loop.theta_global.clone()
    loop.run_round(1)
    m0, m1 = alg.masks
    assert torch.equal(loop.theta_global[m1], theta0[m1])
    assert not torch.equal(loop.theta_global[m0], theta0[m0])


def test_client_masks_and_weights(toy_text):
    """A client's mask is the union of its tasks' masks; its weight is its example count over those tasks."""
    loop = _loop(toy_text, "peft.method=lora", "fl.algo.task_share=0.75", "fl.algo.assign_seed=1")
    alg = loop.algorithm
    m0 = alg.masks[0]
    for cid, held in enumerate(alg.held):
        want = torch.zeros_like(m0)
        for t in held:
            want |= alg.masks[t]
        assert torch.equal(alg.client_mask(cid), want)
        data = loop.clients.get(cid)
        assert sorted(data.parts) == held
        assert len(data) == sum(alg._datasets[t].client_num_samples(cid) for t in held)
        assert loop.dataset.client_num_samples(cid) == len(data)
    assert sum(len(h) == 2 for h in alg.held) >= 1 and all(alg.held)


def test_local_update_touches_only_held_tasks(toy_text):
    loop = _loop(toy_text, "peft.method=lora")
    alg = loop.algorithm
    alg.held[:] = [[1]] + [[0, 1]] * 5
    m0, m1 = alg.masks
    theta = loop.theta_global
    res = alg.local_update(loop.trainer, theta, loop.clients.get(0), seed=5, client_id=0)
    assert res.steps == 3 and res.samples_seen == 3 * 8  # fl.local.steps=3, batch 8: one task trained
    assert torch.equal(loop.flat.data[m0], theta[m0])
    assert not torch.equal(loop.flat.data[m1], theta[m1])
    res2 = alg.local_update(loop.trainer, theta, loop.clients.get(1), seed=5, client_id=1)
    assert res2.steps == 6  # both tasks, 3 steps each
    assert not torch.equal(loop.flat.data[m0], theta[m0]) and not torch.equal(loop.flat.data[m1], theta[m1])
    a = loop.flat.data.clone()  # the same client and seed again: bitwise the same update
    alg.local_update(loop.trainer, theta, loop.clients.get(1), seed=5, client_id=1)
    assert torch.equal(a, loop.flat.data)


def test_sequential_schedule_module_untouched_vs_full_forgets(toy_text):
    """Phase 1 trains task 0, phase 2 task 1. FedYolo's task-0 module and head stay bitwise and task 0's
    accuracy is the same at the end as after phase 1; the shared full update moves task 0's backbone."""
    words = ["fl.rounds=2", "fl.algo.schedule=sequential", "fl.algo.phase_rounds=1"]
    for method in ("lora", "full"):
        loop = _loop(toy_text, f"peft.method={method}", *words,
                     *(["fl.local.lr=1e-2"] if method == "full" else []))
        alg = loop.algorithm
        m0, m1 = alg.masks
        theta0 = loop.theta_global.clone()
        r1 = loop.run_round(1)
        assert alg.active == {0}
        assert torch.equal(loop.theta_global[m1 & ~m0], theta0[m1 & ~m0])  # task 1 untouched in phase 1
        assert "phase1_test_acc_task0" in r1
        after1 = loop.theta_global.clone()
        r2 = loop.run_round(2)
        assert alg.active == {1}
        own0 = m0 & ~m1
        assert torch.equal(loop.theta_global[own0], after1[own0])  # task 0's own segments never change
        assert "forgetting_task0" not in alg.evaluate(loop)  # phase 1's metrics are not in the history yet
        loop.state.history += [r1, r2]  # what FederatedLoop.run records
        final = alg.evaluate(loop)
        assert final["forgetting_task0"] == r1["phase1_test_acc_task0"] - final["test_acc_task0"]
        assert "forgetting_task1" not in final  # the last phase has no later phase to forget in
        if method == "lora":
            assert final["test_acc_task0"] == r1["phase1_test_acc_task0"] and final["forgetting_task0"] == 0.0
            assert final["test_loss_task0"] == r1["phase1_test_loss_task0"]
        else:
            assert final["test_loss_task0"] != r1["phase1_test_loss_task0"]
        assert r2["bytes_up"] == r2["clients"] * int(m1.sum()) * 4


def test_evaluate_reports_each_task(toy_text):
    loop = _loop(toy_text, "peft.method=lora")
    m = loop.evaluate_global()
    assert set(m) >= {"test_acc_task0", "test_acc_task1", "test_loss_task0", "test_loss_task1", "test_acc"}
    assert m["test_acc"] == pytest.approx((m["test_acc_task0"] + m["test_acc_task1"]) / 2)
    assert len(loop.algorithm.tests[1]) > 0 and set(loop.algorithm.tests[1].y.tolist()) == {0, 1}


def test_is_registered():
    from hpcfed.algorithms import get_algorithm

    assert get_algorithm("fedyolo") is FedYolo


def test_demo_summary_hand_case():
    from hpcfed.fedyolo_demo import summarize_demo

    hist = [{"round": 1, "bytes_up": 40, "bytes_down_modules": 60, "bytes_full_model_fl": 10_000,
             "phase1_test_acc_task0": 0.75},
            {"round": 2, "bytes_up": 40, "bytes_down_modules": 60, "bytes_full_model_fl": 10_000,
             "test_acc_task0": 0.5, "test_acc_task1": 0.9}]
    s, table = summarize_demo({"seq": hist})
    assert s["seq"]["bytes_total"] == 200 and s["seq"]["ratio_full_over_run"] == 100.0
    assert s["seq"]["acc_task0_after_phase1"] == 0.75 and s["seq"]["acc_task0_end"] == 0.5
    assert "| seq | 75.0 | 50.0 | 90.0 |" in table and "100×" in table


def test_round_counts_task_loads_and_hits(toy_text):
    """The multi-task view counts like the loop's ClientCache, per (client, task): round 1 loads every held task
    of every cohort client from the shards, round 2 serves the same ones from memory."""
    loop = _loop(toy_text, "peft.method=lora", "fl.rounds=2", "fl.cohort_size=6", "fl.algo.task_share=0.75",
                 "fl.algo.assign_seed=1")
    held = loop.algorithm.held
    r1 = loop.run_round(1)
    assert r1["clients"] == len(held) == 6  # every client every round
    assert (r1["client_loads"], r1["client_cache_hits"]) == (sum(len(h) for h in held), 0)
    r2 = loop.run_round(2)
    assert (r2["client_loads"], r2["client_cache_hits"]) == (0, sum(len(h) for h in held))


def test_multitask_view_evicts_least_recently_used_task_data():
    """Memory is bounded: past max_entries the (client, task) used longest ago is dropped and loaded again."""
    from hpcfed.algorithms.fedyolo_tasks import MultiTaskDataset

    class Shards:  # a task's shards: counts loads, returns a distinct object per load
        def __init__(self, t):
            self.t, self.num_clients, self.num_classes, self.class_names, self.loads = t, 3, 2, ["a", "b"], []

        def load_client(self, cid):
            self.loads.append(cid)
            return [(self.t, cid)] * (cid + 1)

    tasks = [Shards(0), Shards(1)]
    view = MultiTaskDataset(tasks, [[0, 1], [0], [1]], lambda: {0, 1}, max_entries=2)
    assert set(view.get(0).parts) == {0, 1} and (view.misses, view.evictions) == (2, 0)
    view.task_data(0, 0)  # (0, 0) is now the most recently used
    view.get(1)  # loads (1, 0): evicts (0, 1), not (0, 0)
    assert (view.hits, view.misses, view.evictions) == (1, 3, 1)
    view.task_data(0, 0)
    view.task_data(0, 1)  # evicted: loaded again
    assert tasks[1].loads == [0, 0] and tasks[0].loads == [0, 1]
    assert len(view._cache) == 2
    with pytest.raises(ValueError, match="max_entries"):
        MultiTaskDataset(tasks, [[0], [0], [1]], lambda: {0}, max_entries=0)
