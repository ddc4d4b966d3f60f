"""Attack injection for testing and studying robust aggregation: which clients are Byzantine, and what they do.

Seeded like the fault injection of the round loop (``fl.inject_failure_rate``), from the table of
:mod:`hpcfed.rng`, so an attacked run is the same on any number of ranks:

* the Byzantine set: ``[seed, BYZANTINE]``, chosen once for the run, exactly round(fraction · num_clients)
  clients (Python's ``round``: halves to even);
* model poisoning, applied to a Byzantine client's flat parameters θ_c after local training, in place, with
  Δ = θ_c − θ_global:

  ============ ============================== ===========================================================
  kind         new update                     used in, e.g.
  ============ ============================== ===========================================================
  sign_flip    −s · Δ   (s = ``scale``, 1)    "bit-flipping", Karimireddy, He, Jaggi, ICML 2021
  scale        s · Δ    (s = ``scale``, 10)   "boosting", Bhagoji et al., "Analyzing Federated Learning
                                              through an Adversarial Lens", ICML 2019
  gaussian     N(0, σ² I) (σ = ``noise_std``) "Gaussian Byzantine workers", Blanchard et al., NeurIPS 2017
  ============ ============================== ===========================================================

  the Gaussian draw from ``[seed, ATTACK, round, client]``;
* data poisoning ``label_flip``, applied to a Byzantine client's labels when its data is loaded (the same for
  every round): y → K − 1 − y (``label_mode='reverse'``; for odd K the middle class keeps its label), or a
  uniformly drawn other label (``label_mode='random'``, from ``[seed, ATTACK, 0, client]``: round 0 is
  never a training round, rounds count from 1).

Config keys (``fl.attack.*``): :class:`hpcfed.config.AttackConfig` (``AttackSpec`` here is the same class).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hpcfed.config import ATTACKS, LABEL_MODES, AttackConfig  # noqa: F401 - ATTACKS re-exported
from hpcfed.data import ClientData
from hpcfed.rng import TrainStream, generator

MODEL_ATTACKS = ("sign_flip", "scale", "gaussian")
"""Attacks on the update (applied after local training); ``label_flip`` poisons the data instead."""

LOAD_TIME_ROUND = 0
"""The round key of the load-time draws (``label_mode='random'``): rounds are numbered from 1."""


AttackSpec = AttackConfig
"""Who attacks and how: the config section ``fl.attack`` itself (:class:`hpcfed.config.AttackConfig`; validated on
construction with one-line errors naming the key; ``.active``, ``.effective_scale``)."""


def byzantine_clients(seed: int, num_clients: int, fraction: float) -> frozenset[int]:
    """The Byzantine clients of a run: round(fraction · num_clients) distinct ids in [0, num_clients), drawn
    without replacement from ``[seed, BYZANTINE]`` (fixed for the whole run, the same on every rank).

    Raises:
        ValueError: ``num_clients`` < 0, ``fraction`` outside [0, 1].
    """
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    count = min(num_clients, round(float(fraction) * num_clients))
    if count == 0:
        return frozenset()
    chosen = generator(seed, TrainStream.BYZANTINE).choice(num_clients, size=count, replace=False)
    return frozenset(int(c) for c in chosen)


def attack_noise(seed: int, round_idx: int, cid: int, numel: int, std: float) -> torch.Tensor:
    """N(0, std²) of shape (numel,) float32 on the CPU from ``[seed, ATTACK, round, client]``."""
    g = generator(seed, TrainStream.ATTACK, round_idx, cid)
    return torch.from_numpy(g.standard_normal(numel, dtype=np.float32)).mul_(float(std))


def apply_model_attack(spec: AttackSpec, theta_client: torch.Tensor, theta_global: torch.Tensor, *, seed: int,
                       round_idx: int, cid: int) -> None:
    """Replace a Byzantine client's update in place: θ_c ← θ_global + attack(θ_c − θ_global).

    Args:
        spec: the attack; a kind outside :data:`MODEL_ATTACKS` (none, label_flip) leaves θ_c unchanged.
        theta_client: (n,) float32 flat parameters after local training (modified in place).
        theta_global: (n,) float32 the round's global parameters (not modified).
        seed, round_idx, cid: the keys of the Gaussian draw.

    The caller decides who is Byzantine (``cid in byzantine_clients(...)``).
    """
    if spec.kind not in MODEL_ATTACKS:
        return
    if theta_client.shape != theta_global.shape:
        raise ValueError(f"theta_client {tuple(theta_client.shape)} and theta_global {tuple(theta_global.shape)} "
                         "differ in shape")
    if spec.kind == "gaussian":
        noise = attack_noise(seed, round_idx, cid, theta_client.numel(), spec.noise_std)
        theta_client.copy_(theta_global + noise.to(theta_client.device).view_as(theta_client))
        return
    s = spec.effective_scale if spec.kind == "scale" else -spec.effective_scale
    # θ_c ← θ_g + s·(θ_c − θ_g)
    theta_client.sub_(theta_global).mul_(s).add_(theta_global)


def flip_labels(data: ClientData, num_classes: int, *, mode: str = "reverse", seed: int = 0,
                cid: int = 0) -> ClientData:
    """A new :class:`ClientData` with poisoned labels (``x`` and ``lengths`` shared, not copied).

    Args:
        data: the client's examples; ``y`` int64 (N,) in [0, K).
        num_classes: K ≥ 2.
        mode: 'reverse' (y → K − 1 − y) or 'random' (y → (y + r) mod K, r uniform in 1..K−1 per example, from
            ``[seed, ATTACK, 0, cid]``: every label changes, to any other class with equal probability).

    Raises:
        ValueError: K < 2, an unknown mode, a label outside [0, K).
    """
    if num_classes < 2:
        raise ValueError(f"label flipping needs num_classes >= 2, got {num_classes}")
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode {mode!r} is not valid; choose one of: {', '.join(LABEL_MODES)}")
    y = data.y
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    if mode == "reverse":
        new_y = (num_classes - 1) - y
    else:
        g = generator(seed, TrainStream.ATTACK, LOAD_TIME_ROUND, cid)
        shift = torch.from_numpy(g.integers(1, num_classes, size=y.shape[0], dtype=np.int64))
        new_y = (y + shift.to(y.device)) % num_classes
    return dataclasses.replace(data, y=new_y.to(y.dtype))


def poison_client_data(spec: AttackSpec, data: ClientData, num_classes: int, *, seed: int, cid: int) -> ClientData:
    """``data`` with the spec's data poisoning applied (label_flip), else ``data`` itself. The caller decides who
    is Byzantine."""
    if spec.kind != "label_flip":
        return data
    return flip_labels(data, num_classes, mode=spec.label_mode, seed=seed, cid=cid)
