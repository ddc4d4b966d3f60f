"""Attack injection (hpcfed/fl/attacks.py): the Byzantine set (size, stability, seeding), each model attack's
transform, the Gaussian draw's seeding, label flipping, and the spec's validation."""

from __future__ import annotations

import pytest
import torch

from hpcfed.data import ClientData
from hpcfed.fl.attacks import (AttackSpec, apply_model_attack, byzantine_clients, flip_labels,
                               poison_client_data)


@pytest.mark.parametrize("num_clients,fraction,size", [(10, 0.2, 2), (100, 0.1, 10), (7, 0.5, 4), (10, 0.25, 2),
                                                       (3, 0.0, 0), (5, 1.0, 5), (0, 0.3, 0), (1000, 0.013, 13)])
def test_byzantine_set_size_and_stability(num_clients, fraction, size):
    a = byzantine_clients(7, num_clients, fraction)
    assert isinstance(a, frozenset) and len(a) == size == round(fraction * num_clients)
    assert all(0 <= c < num_clients for c in a)
    assert byzantine_clients(7, num_clients, fraction) == a  # a function of (seed, BYZANTINE) only


def test_byzantine_set_depends_on_seed_only():
    sets = {byzantine_clients(s, 200, 0.1) for s in range(5)}
    assert len(sets) == 5
    with pytest.raises(ValueError, match="fraction"):
        byzantine_clients(0, 10, 1.5)


def _thetas(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta_g = torch.randn(n, generator=g)
    return theta_g + 0.1 * torch.randn(n, generator=g), theta_g


@pytest.mark.parametrize("kind,scale,factor", [("sign_flip", None, -1.0), ("sign_flip", 3.0, -3.0),
                                               ("scale", None, 10.0), ("scale", 0.5, 0.5)])
def test_sign_flip_and_scale_transform_the_update(kind, scale, factor):
    theta_c, theta_g = _thetas()
    delta = theta_c - theta_g
    g_before = theta_g.clone()
    apply_model_attack(AttackSpec(kind, 0.1, scale=scale), theta_c, theta_g, seed=0, round_idx=1, cid=3)
    torch.testing.assert_close(theta_c - theta_g, factor * delta, rtol=1e-5, atol=1e-5)
    assert torch.equal(theta_g, g_before)


def test_gaussian_attack_is_seeded_and_replaces_the_update():
    spec = AttackSpec("gaussian", 0.1, noise_std=2.0)

    def attacked(round_idx, cid, seed=0, theta_seed=0):
        theta_c, theta_g = _thetas(20000, theta_seed)
        apply_model_attack(spec, theta_c, theta_g, seed=seed, round_idx=round_idx, cid=cid)
        return theta_c - theta_g

    a = attacked(1, 4)
    assert torch.equal(a, attacked(1, 4))
    torch.testing.assert_close(a, attacked(1, 4, theta_seed=9), rtol=1e-5, atol=1e-5)  # not a function of Δ
    for other in (attacked(2, 4), attacked(1, 5), attacked(1, 4, seed=1)):
        assert not torch.allclose(a, other)
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 2.0) < 0.05


def test_none_and_label_flip_leave_parameters_alone():
    for kind in ("none", "label_flip"):
        theta_c, theta_g = _thetas()
        before = theta_c.clone()
        apply_model_attack(AttackSpec(kind, 0.2), theta_c, theta_g, seed=0, round_idx=1, cid=0)
        assert torch.equal(theta_c, before)


def test_label_flip_reverse_and_random():
    y = torch.arange(10, dtype=torch.int64) % 5
    data = ClientData(x=torch.zeros(10, 4, dtype=torch.int32), y=y.clone(),
                      lengths=torch.full((10,), 4, dtype=torch.int32))
    rev = flip_labels(data, 5)
    assert torch.equal(rev.y, 4 - y) and rev.x is data.x and rev.lengths is data.lengths
    assert torch.equal(data.y, y)  # the original is untouched
    rnd = flip_labels(data, 5, mode="random", seed=3, cid=8)
    assert rnd.y.dtype == torch.int64 and bool((rnd.y != y).all()) and bool(((rnd.y >= 0) & (rnd.y < 5)).all())
    assert torch.equal(rnd.y, flip_labels(data, 5, mode="random", seed=3, cid=8).y)
    big = ClientData(x=torch.zeros(6000, 1), y=torch.zeros(6000, dtype=torch.int64))
    counts = torch.bincount(flip_labels(big, 4, mode="random", seed=0, cid=1).y, minlength=4)
    assert counts[0] == 0 and all(1800 < int(c) < 2200 for c in counts[1:])  # uniform over the other labels
    spec = AttackSpec("label_flip", 0.1)
    assert torch.equal(poison_client_data(spec, data, 5, seed=0, cid=1).y, 4 - y)
    assert poison_client_data(AttackSpec("sign_flip", 0.1), data, 5, seed=0, cid=1) is data
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        flip_labels(data, 3)


@pytest.mark.parametrize("kwargs,key", [
    ({"kind": "flip"}, "fl.attack.kind"), ({"fraction": 1.5}, "fl.attack.fraction"),
    ({"scale": 0.0}, "fl.attack.scale"), ({"noise_std": -1.0}, "fl.attack.noise_std"),
    ({"label_mode": "swap"}, "fl.attack.label_mode")])
def test_spec_validation(kwargs, key):
    with pytest.raises(ValueError) as e:
        AttackSpec(**kwargs)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_spec_defaults():
    assert not AttackSpec().active and AttackSpec("scale", 0.1).active and not AttackSpec("scale", 0.0).active
    assert AttackSpec("sign_flip").effective_scale == 1.0 and AttackSpec("scale").effective_scale == 10.0
    assert AttackSpec("scale", scale=4).effective_scale == 4.0
