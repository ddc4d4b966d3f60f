"""The flat buffer: parameters are views of one tensor; switching state is one copy."""

import pytest
import torch
from torch import nn

from hpcfed.peft import FlatParams, LayoutError


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_params_are_views_of_one_buffer():
    m = _mlp()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    flat = FlatParams(m, ["0.weight", "2.bias"])
    assert flat.numel == 12 + 2
    assert [s.offset for s in flat.layout] == [0, 12]
    # values were preserved
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n])
    # parameters are views: writing the buffer changes the model
    flat.data.fill_(0.5)
    assert torch.all(m[0].weight == 0.5) and torch.all(m[2].bias == 0.5)
    assert m[0].weight.data_ptr() == flat.data.data_ptr()
    assert not m[0].bias.requires_grad and m[0].weight.requires_grad


def test_switching_client_state_is_one_copy():
    m = _mlp()
    flat = FlatParams(m, ["0.weight", "0.bias", "2.weight", "2.bias"])
    x = torch.randn(5, 4)
    a = flat.data.clone()
    out_a = m(x)
    b = torch.randn_like(a)
    flat.data.copy_(b)
    out_b = m(x)
    assert not torch.allclose(out_a, out_b)
    flat.data.copy_(a)
    assert torch.equal(m(x), out_a)


def test_grads_accumulate_into_flat_grad():
    m = _mlp()
    flat = FlatParams(m, ["0.weight", "2.bias"])
    m(torch.randn(5, 4)).sum().backward()
    g1 = flat.grad.clone()
    assert g1.abs().sum() > 0
    assert torch.equal(m[2].bias.grad, flat.grad[12:14])
    flat.zero_grad()
    assert flat.grad.abs().sum() == 0
    m(torch.randn(5, 4)).sum().backward()
    assert m[0].weight.grad.data_ptr() == flat.grad.data_ptr()


def test_state_dict_round_trip_and_errors():
    m = _mlp()
    flat = FlatParams(m, ["0.weight", "2.bias"])
    sd = flat.state_dict()
    assert set(sd) == {"0.weight", "2.bias"} and sd["0.weight"].shape == (3, 4)
    v = flat.flat_from_state_dict(sd)
    assert torch.equal(v, flat.data)
    assert flat.layout == FlatParams.layout_from_json(flat.layout_json())
    with pytest.raises(LayoutError, match="shape"):
        flat.flat_from_state_dict({"0.weight": torch.zeros(4, 3), "2.bias": torch.zeros(2)})
    with pytest.raises(LayoutError, match="missing"):
        flat.flat_from_state_dict({"0.weight": torch.zeros(3, 4)})
    with pytest.raises(LayoutError):
        FlatParams(_mlp(), ["nope.weight"])


def test_tied_parameter_appears_once():
    m = _mlp()
    m[2].weight = nn.Parameter(torch.randn(2, 3))
    m.add_module("tied", nn.Linear(3, 2))
    m.tied.weight = m[2].weight
    flat = FlatParams(m, ["2.weight", "tied.weight"])
    assert flat.numel == 6
    assert m.tied.weight is m[2].weight
