"""Local training paths that must equal the plain path: length-bucketed micro-batches, packed sequences."""

import pytest
import torch

from hpcfed.config import load_config
from hpcfed.fl.client import LocalTrainer, length_buckets
from hpcfed.models import build_model
from hpcfed.peft import apply_peft
from tests.conftest import disable_dropout, tiny_model_args, toy_client_data


def _train(buckets, method="bias", packing=False):
    cfg = load_config(tiny_model_args("hf_text") + [f"peft.method={method}", "model.dropout=0.0",
                                                    "fl.local.steps=4", "fl.local.batch_size=16",
                                                    f"fl.local.length_buckets={buckets}",
                                                    f"fl.local.packing={str(packing).lower()}",
                                                    # SGD: Adam's m/sqrt(v) turns fp noise in near-zero
                                                    # gradients into lr-sized steps, hiding the comparison
                                                    "fl.local.optimizer=sgd", "fl.local.lr=0.5"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    disable_dropout(model)
    flat = apply_peft(model, cfg.peft)
    trainer = LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu"))
    assert trainer.pack == (packing and method != "prompt")
    res = trainer.train(toy_client_data("hf_text"), 3)
    return flat.data.clone(), res


def test_length_buckets_partition_batch():
    data = toy_client_data("hf_text", n=20)
    idx = torch.randperm(20)[:16]
    parts = length_buckets(data, idx, 4)
    assert len(parts) == 4 and sorted(torch.cat(parts).tolist()) == sorted(idx.tolist())
    maxes = [int(data.lengths[p].max()) for p in parts]
    assert maxes == sorted(maxes)
    (only,) = length_buckets(toy_client_data("timm_vit", n=8), idx[:4], 4)
    assert torch.equal(only, idx[:4])


def test_bucketed_training_equals_plain():
    for method in ("bias", "lora"):
        a, ra = _train(1, method)
        b, rb = _train(4, method)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert abs(ra.loss_sum - rb.loss_sum) < 1e-4 * abs(ra.loss_sum)


def test_packed_training_equals_plain():
    """fl.local.packing: padding-free rows with block-diagonal attention train exactly like padded batches
    (BitFit, LoRA, adapters, full); soft prompts fall back to length buckets (so they equal them exactly)."""
    for method in ("bias", "lora", "adapter", "full"):
        a, ra = _train(1, method)
        b, rb = _train(1, method, packing=True)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{method}: {m}")
        assert abs(ra.loss_sum - rb.loss_sum) < 1e-4 * abs(ra.loss_sum)
    a, _ = _train(4, "prompt")
    b, _ = _train(4, "prompt", packing=True)
    assert torch.equal(a, b)


def _train_on(data, tau):
    cfg = load_config(tiny_model_args("hf_text") + ["peft.method=bias", "model.dropout=0.0", "fl.local.steps=6",
                                                    "fl.local.batch_size=16", f"fl.local.logit_adjust_tau={tau}",
                                                    # SGD: Adam would normalise the shrinking gradient away
                                                    "fl.local.optimizer=sgd", "fl.local.lr=0.5"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    flat = apply_peft(model, cfg.peft)
    b0 = model.head.bias.detach().clone()
    LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(data, 5)
    return model, model.head.bias.detach() - b0


def test_logit_adjustment():
    """A uniform label prior only shifts all logits equally (softmax is shift-invariant): same training as
    plain CE. On a one-class client the adjusted loss moves the head's class bias far less."""
    data = toy_client_data("hf_text", n=64)
    data.y = torch.arange(64) % 2  # exactly balanced
    (a, _), (b, _) = _train_on(data, 0.0), _train_on(data, 1.0)
    torch.testing.assert_close(a.head.bias, b.head.bias, rtol=1e-5, atol=1e-6)
    data.y = torch.ones(64, dtype=torch.int64)  # a client that only has class 1
    (_, plain), (_, adjusted) = _train_on(data, 0.0), _train_on(data, 1.0)
    gap = lambda d: float(d[1] - d[0])  # noqa: E731 - growth of the class-1 bias over class 0
    assert gap(plain) > 0 and abs(gap(adjusted)) < 0.5 * gap(plain)


def test_cosine_local_lr_schedule():
    from hpcfed.fl.client import LocalTrainer as LT

    cfg = load_config(tiny_model_args("hf_text") + ["fl.local.lr=1.0", "fl.local.lr_schedule=cosine",
                                                    "fl.local.lr_min_ratio=0.1"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    t = LT(model, apply_peft(model, cfg.peft), cfg.fl.local, torch.device("cpu"))
    lrs = []
    for r in range(1, 6):
        t.set_round(r, 5)
        lrs.append(t.lr)
    assert lrs[0] == 1.0 and abs(lrs[-1] - 0.1) < 1e-12 and lrs == sorted(lrs, reverse=True)
    # the schedule's length is part of the config hash (a resumed run must keep it)
    assert load_config(["fl.local.lr_schedule=cosine", "fl.rounds=5"]).hash() != \
        load_config(["fl.local.lr_schedule=cosine", "fl.rounds=6"]).hash()
    assert load_config(["fl.rounds=5"]).hash() == load_config(["fl.rounds=6"]).hash()


def test_bf16_training_close_to_fp32():
    """fl.local.bf16 (autocast, fp32 master buffer): the local update points the same way as in fp32, packed
    or bucketed, and the master weights stay fp32."""
    def run(bf16, packing):
        cfg = load_config(tiny_model_args("hf_text") + ["peft.method=bias", "model.dropout=0.0", "fl.local.steps=4",
                                                        "fl.local.batch_size=16", f"fl.local.bf16={bf16}",
                                                        f"fl.local.packing={packing}", "fl.local.optimizer=sgd",
                                                        "fl.local.lr=0.5"])
        torch.manual_seed(0)
        model = build_model(cfg.model, 2)
        disable_dropout(model)
        flat = apply_peft(model, cfg.peft)
        theta0 = flat.data.clone()
        LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(toy_client_data("hf_text"), 3)
        assert flat.data.dtype == torch.float32
        return flat.data - theta0

    for packing in ("true", "false"):
        a, b = run("false", packing), run("true", packing)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
        assert cos > 0.99, (packing, float(cos))
        assert 0.9 < float(b.norm() / a.norm()) < 1.1


def _result(steps, lr, dropout=0.0):
    cfg = load_config(tiny_model_args("hf_text") + ["peft.method=bias", f"model.dropout={dropout}",
                                                    f"fl.local.steps={steps}", "fl.local.batch_size=8",
                                                    "fl.local.optimizer=sgd", f"fl.local.lr={lr}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    flat = apply_peft(model, cfg.peft)
    return LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(toy_client_data("hf_text"), 5)


def test_first_loss_is_the_received_model_on_the_first_batch():
    """``first_loss`` is the loss of the parameters the client received on its first batch: with one step it is
    the whole mean loss; neither the lr nor the number of steps changes it (the step-1 batch and dropout
    masks come from the client's seed), while the mean over the steps moves with the lr."""
    one = _result(1, 0.5, dropout=0.1)
    assert one.first_loss == one.final_loss == pytest.approx(one.loss_sum / one.samples_seen, rel=1e-6)
    for steps, lr in ((4, 0.5), (4, 5.0)):
        res = _result(steps, lr, dropout=0.1)
        assert res.first_loss == pytest.approx(one.first_loss, rel=1e-6)
    slow, fast = _result(4, 0.01), _result(4, 0.5)
    assert slow.first_loss == pytest.approx(fast.first_loss, rel=1e-6)
    assert abs(fast.loss_sum - slow.loss_sum) / fast.samples_seen > 1e-3  # the local steps enter the mean
