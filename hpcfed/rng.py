"""The table of random streams: every seeded draw in hpcfed is ``np.random.default_rng([seed, tag, *keys])`` (or
a ``SeedSequence`` of the same list) with a tag from this table, so no two purposes share a stream.

A stream is a function of the numbers it is keyed on only — never of a rank, a world size or the order in
which clients happen to be trained — which is what makes a run's global model the same on any number of ranks
(``../shared/DESIGN.md``, determinism). Tags live in *namespaces*, one per seed they are combined with; within a
namespace the tags are distinct (``tests/unit/test_rng.py`` checks it). The values are frozen: changing one
changes every result that used it.

Namespaces:
    :class:`TrainStream` — with the run's training seed ``seed`` (cohorts, clients, faults, holdouts, and
        FedYolo's per-task seeds drawn from a client's seed).
    :class:`DataStream` — with ``data.seed`` (subsampling the train / test split before partitioning; the
        partitioners themselves draw from ``np.random.default_rng(data.seed)``).
    :class:`MethodStream` — with a seed that is a method's own parameter (FedPFT's ``public_seed``, FedYolo's
        ``assign_seed``).
    :class:`FractalStream` — with the fractal pre-training seed (``pretrain.seed``).
"""

from __future__ import annotations

import enum
from typing import Sequence

import numpy as np


class TrainStream(enum.IntEnum):
    """Tags combined with the run's training seed ``seed``."""

    COHORT = 1
    """[seed, COHORT, round]: the cohort of a round."""
    CLIENT = 2
    """[seed, CLIENT, round, client]: a client's local-training seed in a round (data order, dropout)."""
    FAULT = 3
    """[seed, FAULT, round, client]: simulated client failures (``fl.client_failure_rate``)."""
    HOLDOUT = 4
    """[seed, HOLDOUT, client]: a client's personal holdout split (local-only baselines)."""
    DP_NOISE = 5
    """[seed, DP_NOISE, round]: the Gaussian noise of client-level DP (``fl.dp``), the same on every rank."""
    BYZANTINE = 6
    """[seed, BYZANTINE]: which clients are Byzantine (``fl.attack``)."""
    ATTACK = 7
    """[seed, ATTACK, round, client]: a Byzantine client's random attack (Gaussian-noise update)."""
    FEDYOLO_TASK = 13
    """[client seed, FEDYOLO_TASK, task]: one task's local training within a client's round."""


class DataStream(enum.IntEnum):
    """Tags combined with ``data.seed``."""

    TRAIN_SUBSAMPLE = 1
    """[data.seed, TRAIN_SUBSAMPLE]: ``data.max_train_samples`` of the train split."""
    TEST_SUBSAMPLE = 2
    """[data.seed, TEST_SUBSAMPLE]: ``data.max_test_samples`` of the test split."""
    RESERVED = 3
    """[data.seed, RESERVED]: ``data.reserve_train_samples`` rows of the train source no client receives."""
    QUANTITY_SKEW = 4
    """[data.seed, QUANTITY_SKEW]: log-normal client sizes and the shuffle of ``data.quantity_skew=lognormal``."""


class MethodStream(enum.IntEnum):
    """Tags combined with a seed a method takes as its own parameter (``fl.algo.*_seed``)."""

    FEDPFT_PUBLIC = 7
    """[fl.algo.public_seed, FEDPFT_PUBLIC]: the public sentences FedPFT distils on."""
    FEDYOLO_ASSIGN = 11
    """[fl.algo.assign_seed, FEDYOLO_ASSIGN]: which clients hold which FedYolo task."""
    FEDYOLO_WORDORDER = 12
    """[task seed, FEDYOLO_WORDORDER]: which sentences of FedYolo's word-order task are reversed."""


class FractalStream(enum.IntEnum):
    """Tags combined with the fractal pre-training seed."""

    CLASS_SYSTEM = 0
    """[seed, CLASS_SYSTEM, class]: the IFS candidates of a class."""
    COVERAGE = 1
    """[seed, COVERAGE, attempt, class]: the coverage check of a candidate."""
    DISTRACTORS = 2
    """[seed, DISTRACTORS]: the pool of distractor systems."""
    IMAGES = 3
    """[seed, IMAGES]: rendering (jitter, colours, placement) of the images."""


def generator(seed: int, stream: enum.IntEnum, *keys: int) -> np.random.Generator:
    """``np.random.default_rng([seed, stream, *keys])``: the generator of one stream.

    Args:
        seed: the namespace's seed (a non-negative int).
        stream: a tag of this module's tables.
        keys: further non-negative ints (round, client id, ...).
    """
    return np.random.default_rng([seed, int(stream), *keys])


def seed63(entropy: Sequence[int]) -> int:
    """A 63-bit int seed (for ``torch.Generator().manual_seed``) from a ``SeedSequence`` of ``entropy``."""
    state = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
