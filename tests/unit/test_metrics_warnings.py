"""Metrics that do not fail silently: balanced accuracy and macro-F1 from a confusion matrix summed over
shards, the test split's majority-class rate, and the ``single_class`` / ``train_loss_rising`` warnings."""

import logging

import pytest
import torch
from torch import nn

from hpcfed.compose import build_loop
from hpcfed.config import ConfigError, load_config
from hpcfed.data import ClientData
from hpcfed.dist import LocalComm
from hpcfed.fl.client import confusion_metrics, evaluate
from hpcfed.fl.loop import RoundState


class _Rt:
    device = torch.device("cpu")


@pytest.mark.parametrize("cm, bal, f1, pred_classes", [
    # recalls 3/4, 4/6; F1 = 2·TP / (row + column): 6/9, 8/11
    ([[3, 1], [2, 4]], (3 / 4 + 4 / 6) / 2, (6 / 9 + 8 / 11) / 2, 2),
    # the collapse: 13% positives, everything predicted negative (accuracy 0.87)
    ([[87, 0], [13, 0]], 0.5, (2 * 87 / (87 + 100) + 0.0) / 2, 1),
    # class 1 absent everywhere (left out); class 2 predicted but never true (recall not averaged, F1 = 0)
    ([[2, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 3]], (2 / 4 + 3 / 4) / 2,
     (4 / 6 + 0.0 + 6 / 8) / 3, 3),
])
def test_confusion_metrics_hand_computed(cm, bal, f1, pred_classes):
    m = confusion_metrics(torch.tensor(cm, dtype=torch.float64))
    assert m["balanced_acc"] == pytest.approx(bal, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert m["pred_classes"] == pred_classes


class _Fixed(nn.Module):
    """Predicts class x[:, 0] (logit 4 there, 0 elsewhere) over ``k`` outputs."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, lengths=None):
        return 4.0 * nn.functional.one_hot(x[:, 0].long(), self.k).float()


def test_evaluate_confusion_summed_over_shards_equals_whole():
    y = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0, 2])
    pred = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0, 1])
    data = ClientData(x=pred[:, None].clone(), y=y, lengths=None)
    model, dev = _Fixed(3), torch.device("cpu")
    whole = evaluate(model, data, dev, batch_size=2, num_classes=3)
    parts = sum(evaluate(model, data, dev, batch_size=2, shard=(r, 3), num_classes=3) for r in range(3))
    assert whole.shape == (3 + 9,) and torch.equal(whole[1:], parts[1:])  # counts: exact
    torch.testing.assert_close(whole[0], parts[0])  # loss sum: up to summation order
    assert torch.equal(whole[:3], evaluate(model, data, dev, batch_size=2))  # loss, correct, count unchanged
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for t, p in zip(y.tolist(), pred.tolist()):
        expected[t, p] += 1
    assert torch.equal(whole[3:].view(3, 3), expected)
    assert whole[1] == 6 and whole[2] == 9
    with pytest.raises(ValueError, match="num_classes=2"):
        evaluate(model, data, dev, num_classes=2)


CHEAP = ("fl.cohort_size=1", "fl.local.steps=1")


def _loop(words, *extra):
    cfg = load_config(list(words) + list(extra))
    loop, _ = build_loop(cfg, _Rt(), LocalComm())
    return loop


def test_collapsed_model_flagged_and_logged(toy_text, caplog):
    """A head that always says class 0 (bias margin 20, lr too small to move it): accuracy equals the
    majority (or minority) rate, balanced accuracy is 0.5, the round carries ``single_class`` and one warning
    line is logged."""
    loop = _loop(toy_text, "fl.rounds=2", "fl.local.lr=1e-12", *CHEAP)
    with torch.no_grad():  # the head is a view of the flat buffer
        loop.model.head.weight.zero_()
        loop.model.head.bias.copy_(torch.tensor([20.0, 0.0]))
        loop.theta_global.copy_(loop.flat.data)
    y = loop.test_data.y
    share0 = float((y == 0).float().mean())
    assert loop.test_majority_rate() == pytest.approx(max(share0, 1 - share0))
    with caplog.at_level(logging.INFO, logger="hpcfed.fl"):
        state = loop.run()
    for m in state.history:
        assert m["test_acc"] == pytest.approx(share0)
        assert m["test_balanced_acc"] == pytest.approx(0.5)
        assert m["test_macro_f1"] == pytest.approx(share0 / (1 + share0))  # F1_0 = 2n0/(n0+n), F1_1 = 0
        assert m["test_pred_classes"] == 1 and m["warnings"] == ["single_class"]
    assert loop.health_warnings({"round": 3, "test_pred_classes": 2}) == []  # two classes predicted: no flag
    lines = [r.getMessage() for r in caplog.records]
    assert sum("predicts a single class" in s for s in lines) == 1  # once per streak, not every round
    assert sum(s.startswith("test split: 120 examples, majority-class rate") for s in lines) == 1


@pytest.fixture(scope="module")
def stub_loop(toy_text):
    """One loop for the loss-rise cases (each resets its state; training and evaluation are stubbed)."""
    return _loop(toy_text, *CHEAP)


@pytest.mark.parametrize("k, losses, flagged", [
    (3, [0.39, 0.43, 0.81, 1.48, 2.28, 2.68], [4, 5, 6]),  # the run
    (3, [0.5, 0.6, 0.7, 0.65, 0.8, 0.9, 1.0], [7]),        # a dip resets the count
    (2, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], []),
    (0, [0.39, 0.43, 0.81, 1.48, 2.28, 2.68], []),          # 0 disables
])
def test_rising_loss_flagged(stub_loop, caplog, k, losses, flagged):
    loop = stub_loop
    loop.state = RoundState()
    loop.cfg.fl.rounds, loop.cfg.eval.warn_loss_rise_rounds = len(losses), k
    loop.run_round = lambda r: {"round": r, "train_loss": losses[r - 1], "clients_failed": 0}
    loop.evaluate_global = lambda: {}
    with caplog.at_level(logging.WARNING, logger="hpcfed.fl"):
        state = loop.run()
    assert [m["round"] for m in state.history if "train_loss_rising" in m.get("warnings", [])] == flagged
    warned = [r.getMessage() for r in caplog.records if "training loss rose" in r.getMessage()]
    assert len(warned) == (1 if flagged else 0)
    if flagged:
        assert warned[0].startswith(f"round {flagged[0]}:")


# the main job's rounds 8-20 (make demo, session 15; docs/results/demo_loss_rise/): the mean over the local steps
# rises as the cosine local lr decays while the global model's test loss stays at 0.43-0.44
DEMO_TRAIN_LOSS = [0.2454, 0.2609, 0.2434, 0.2589, 0.2629, 0.2604, 0.2644, 0.2848, 0.2865, 0.3155, 0.3089, 0.3307,
                   0.3282]


@pytest.mark.parametrize("start, ratio, flagged", [
    (None, 1.1, [9, 10]),                                       # train_loss alone: the old false alarm
    ([0.40 - 0.005 * i for i in range(13)], 1.1, []),          # the global model's loss falls: no flag
    ([0.30, 0.31, 0.30, 0.302, 0.304, 0.306, 0.309, 0.30, 0.31, 0.30, 0.31, 0.30, 0.305], 1.1, []),  # plateau
    ([0.30, 0.31, 0.30, 0.302, 0.304, 0.306, 0.309, 0.30, 0.31, 0.30, 0.31, 0.30, 0.305], 1.0, [6, 7]),
    ([0.30, 0.29, 0.28, 0.35, 0.50, 0.90, 1.40, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5], 1.1, list(range(6, 14))),
    ([-0.90, -0.91, -0.92, -0.915, -0.91, -0.905, -0.90, -0.91, -0.92, -0.93, -0.94, -0.95, -0.96], 1.1, []),
    ([-0.90, -0.91, -0.92, -0.80, -0.60, -0.40, -0.20, -0.91, -0.92, -0.93, -0.94, -0.95, -0.96], 1.1, [6, 7]),
])
def test_rise_check_follows_the_start_loss(stub_loop, caplog, start, ratio, flagged):
    """With ``train_loss_start`` in the rounds the check follows it, not ``train_loss``; the min ratio keeps a
    noisy plateau (3 small rises in a row) quiet, also for a negative loss (SimSiam's lies in [-1, 1])."""
    loop = stub_loop
    loop.state = RoundState()
    loop.cfg.fl.rounds, loop.cfg.eval.warn_loss_rise_rounds = len(DEMO_TRAIN_LOSS), 3
    loop.cfg.eval.warn_loss_rise_min_ratio = ratio
    loop.run_round = lambda r: {"round": r, "train_loss": DEMO_TRAIN_LOSS[r - 1], "clients_failed": 0,
                                **({"train_loss_start": start[r - 1]} if start else {})}
    loop.evaluate_global = lambda: {}
    try:
        with caplog.at_level(logging.WARNING, logger="hpcfed.fl"):
            state = loop.run()
    finally:
        loop.cfg.eval.warn_loss_rise_min_ratio = 1.1
    assert [m["round"] for m in state.history if "train_loss_rising" in m.get("warnings", [])] == flagged
    warned = [r.getMessage() for r in caplog.records if "training loss rose 3 rounds" in r.getMessage()]
    assert len(warned) == (1 if flagged else 0)
    if flagged:
        assert warned[0].startswith(f"round {flagged[0]}:")
        assert ("(train_loss_start, on the clients' first local batches: " in warned[0]) == (start is not None)


def test_non_finite_loss_flagged(stub_loop, caplog):
    losses = [0.6, 0.5, float("nan"), float("inf")]
    loop = stub_loop
    loop.state = RoundState()
    loop.cfg.fl.rounds, loop.cfg.eval.warn_loss_rise_rounds = len(losses), 3
    loop.run_round = lambda r: {"round": r, "train_loss": losses[r - 1], "clients_failed": 0}
    loop.evaluate_global = lambda: {}
    with caplog.at_level(logging.WARNING, logger="hpcfed.fl"):
        state = loop.run()
    assert [m["round"] for m in state.history if "non_finite_loss" in m.get("warnings", [])] == [3, 4]
    assert sum("has diverged" in r.getMessage() for r in caplog.records) == 1


def test_warn_rounds_must_not_be_negative():
    with pytest.raises(ConfigError, match="eval.warn_loss_rise_rounds"):
        load_config(["eval.warn_loss_rise_rounds=-1"])
    with pytest.raises(ConfigError, match="eval.warn_loss_rise_min_ratio must be >= 1.0"):
        load_config(["eval.warn_loss_rise_min_ratio=0.9"])
