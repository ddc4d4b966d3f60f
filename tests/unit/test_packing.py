"""Sequence packing (hpcfed.models.packing): layout, and encoder outputs equal to the padded batch's."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfed.config import load_config
from hpcfed.models import build_model
from hpcfed.models.packing import pack_rows, pack_sequences
from tests.conftest import tiny_model_args


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=40), st.integers(0, 20))
def test_pack_rows_is_a_partition_within_capacity(lengths, extra):
    cap = max(lengths) + extra
    rows = pack_rows(lengths, cap)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= cap for r in rows)
    # first-fit decreasing never leaves two rows that would fit into one
    loads = sorted(sum(lengths[i] for i in r) for r in rows)
    assert len(loads) < 2 or loads[0] + loads[1] > cap or len(rows) == 1
    assert rows == pack_rows(lengths, cap)  # deterministic


def test_pack_sequences_layout():
    x = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 0, 0]])
    pb = pack_sequences(x, torch.tensor([3, 1, 2]), position_offset=2)
    assert pb.input_ids.shape == (2, 3)  # capacity 3: [seq0], [seq2, seq1]
    assert pb.input_ids.tolist() == [[5, 6, 7], [9, 10, 8]]
    assert pb.position_ids.tolist() == [[2, 3, 4], [2, 3, 2]]
    assert pb.segment.tolist() == [[0, 0, 0], [2, 2, 1]]
    assert pb.row.tolist() == [0, 1, 1] and pb.start.tolist() == [0, 2, 0]
    m = pb.attention_mask()[1, 0]
    assert m.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    h = torch.arange(18, dtype=torch.float32).view(2, 3, 3)
    torch.testing.assert_close(pb.pool_mean(h)[2], (h[1, 0] + h[1, 1]) / 2)
    torch.testing.assert_close(pb.pool_first(h)[1], h[1, 2])
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        pack_sequences(x, torch.tensor([3, 0, 2]))


def _tiny(arch="bert", pooling="mean", extra=()):
    words = tiny_model_args("hf_text") + [f"model.arch={arch}", f"model.pooling={pooling}", *extra]
    torch.manual_seed(0)
    return build_model(load_config(words).model, 3).eval()


@pytest.mark.parametrize("arch,pooling", [("bert", "mean"), ("bert", "cls"), ("roberta", "mean")])
def test_packed_features_equal_padded(arch, pooling):
    """Outputs and input gradients of a packed batch equal the padded batch's (RoBERTa: positions start at
    padding_idx + 1)."""
    model = _tiny(arch, pooling)
    assert model.packing_unsupported() is None
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 12, (9,), generator=g)
    x = torch.randint(4, 90, (9, 12), generator=g)
    x[torch.arange(12)[None, :] >= lengths[:, None]] = 1 if arch == "roberta" else 0
    ref = model(x, lengths)
    out = model(x, lengths, pack=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and per sequence alone, with no padding at all
    for i in (0, 4):
        alone = model(x[i:i + 1, : int(lengths[i])], lengths[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    w = model.head.weight
    (ga,) = torch.autograd.grad(ref.square().sum(), w)
    (gb,) = torch.autograd.grad(model(x, lengths, pack=True).square().sum(), w)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_packing_unsupported_reasons():
    from hpcfed.peft import apply_peft

    cfg = load_config(tiny_model_args("hf_text") + ["peft.method=prompt"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    apply_peft(model, cfg.peft)
    assert "soft prompts" in model.packing_unsupported()
    model = _tiny()
    model.backbone.config.position_embedding_type = "relative_key"
    assert "absolute" in model.packing_unsupported()
