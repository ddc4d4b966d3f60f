"""Partitioners: validity (disjoint, non-empty, in range), skew behaviour, determinism, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcfed.data import partition as P


def labels_of(n: int, k: int, seed: int = 0, *, skew: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if skew:  # unequal class sizes
        p = np.arange(1, k + 1, dtype=float)
        return rng.choice(k, size=n, p=p / p.sum())
    return rng.integers(0, k, size=n)


def check_valid(parts: list[np.ndarray], n: int, num_clients: int, *, all_used: bool) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert p.size > 0, "empty client"
        assert np.all(np.diff(p) > 0), "not sorted/unique"
        assert p.min() >= 0 and p.max() < n
    allidx = np.concatenate(parts)
    assert np.unique(allidx).size == allidx.size, "clients overlap"
    if all_used:
        assert allidx.size == n


def entropy(hist: np.ndarray) -> float:
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())


CASES = {
    "iid": dict(),
    "dirichlet": dict(alpha=0.5),
    "pathological": dict(classes_per_client=2),
    "fewshot": dict(shots_per_class=1),
}


@pytest.mark.parametrize("method", list(CASES))
def test_valid_and_deterministic(method):
    y = labels_of(1000, 10, skew=True)
    parts = P.partition(method, y, 20, seed=3, num_classes=10, **CASES[method])
    check_valid(parts, y.size, 20, all_used=method in ("iid", "dirichlet"))
    again = P.partition(method, y, 20, seed=3, num_classes=10, **CASES[method])
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = P.partition(method, y, 20, seed=4, num_classes=10, **CASES[method])
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes_balanced():
    parts = P.iid(103, 10, seed=0)
    check_valid(parts, 103, 10, all_used=True)
    assert {p.size for p in parts} == {10, 11}


def test_dirichlet_smaller_alpha_more_skew():
    y = labels_of(5000, 10)
    mean_entropy = {}
    for alpha in (0.1, 100.0):
        parts = P.dirichlet(y, 20, alpha, seed=0, num_classes=10)
        check_valid(parts, y.size, 20, all_used=True)
        mean_entropy[alpha] = np.mean([entropy(np.bincount(y[p], minlength=10)) for p in parts])
    assert mean_entropy[0.1] < mean_entropy[100.0] - 0.5
    assert mean_entropy[100.0] > 0.95 * np.log(10)  # near uniform labels


def test_dirichlet_tiny_alpha_no_empty_client():
    y = labels_of(60, 3)
    parts = P.dirichlet(y, 50, 1e-3, seed=1)
    check_valid(parts, y.size, 50, all_used=True)


def test_dirichlet_min_size():
    y = labels_of(400, 4)
    parts = P.dirichlet(y, 10, 0.05, seed=0, min_size=20)
    check_valid(parts, y.size, 10, all_used=True)
    assert min(p.size for p in parts) >= 20


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_at_most_k_classes(k):
    y = labels_of(997, 10, skew=True)
    parts = P.pathological(y, 30, k, seed=0, num_classes=10)
    check_valid(parts, y.size, 30, all_used=True)  # 30 * k >= 10 classes: every example used
    assert all(np.unique(y[p]).size <= k for p in parts)
    assert sum(np.unique(y[p]).size == k for p in parts) > 15  # most clients really get k classes


def test_pathological_fewer_shards_than_classes_leaves_classes_out():
    y = labels_of(500, 10)
    parts = P.pathological(y, 2, 2, seed=0, num_classes=10)
    check_valid(parts, y.size, 2, all_used=False)
    assert all(np.unique(y[p]).size <= 2 for p in parts)


def test_fewshot_exactly_n_per_class():
    y = labels_of(2000, 10)
    parts = P.fewshot(y, 12, 7, seed=0, num_classes=10)
    check_valid(parts, y.size, 12, all_used=False)
    for p in parts:
        assert np.bincount(y[p], minlength=10).tolist() == [7] * 10


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda y: P.iid(5, 6, 0), "6 clients need at least 6 examples, have 5"),
        (lambda y: P.dirichlet(y, 3, 0.0, 0), "alpha=0.0 must be > 0"),
        (lambda y: P.dirichlet(y, 3, -1.0, 0), "alpha=-1.0 must be > 0"),
        (lambda y: P.dirichlet(y[:4], 5, 1.0, 0), "5 clients need at least 5 examples, have 4"),
        (lambda y: P.pathological(y, 3, 4, 0), "classes_per_client=4 is more than the 3 classes"),
        (lambda y: P.pathological(y, 10, 3, 0), "10 clients x 3 shards need at least 30 examples, have 12"),
        (lambda y: P.fewshot(y, 3, 2, 0), "class 0 has 4 examples; 3 clients x 2 shots need 6"),
        (lambda y: P.partition("nope", y, 2, 0), "unknown partition 'nope'"),
        (lambda y: P.dirichlet(y, 2, 1.0, 0, num_classes=2), "label 2 is out of range"),
    ],
)
def test_impossible_inputs_raise_clear_errors(call, match):
    y = np.repeat(np.arange(3), 4)  # 12 examples, 3 classes x 4
    with pytest.raises(ValueError, match=match):
        call(y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 150),
    num_clients=st.integers(1, 25),
    num_classes=st.integers(1, 8),
    alpha=st.floats(1e-3, 1e3),
    k=st.integers(1, 9),
    shots=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    method=st.sampled_from(["iid", "dirichlet", "pathological", "fewshot"]),
)
def test_property_valid_partition_or_clear_error(n, num_clients, num_classes, alpha, k, shots, seed, method):
    y = np.random.default_rng(seed).integers(0, num_classes, size=n)
    try:
        parts = P.partition(method, y, num_clients, seed, num_classes=num_classes, alpha=alpha,
                            classes_per_client=k, shots_per_class=shots)
    except ValueError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        counts = np.bincount(y, minlength=num_classes)
        # The error is raised only when the request is really impossible.
        impossible = n < num_clients or (
            method == "pathological" and (k > num_classes or n < num_clients * k)
        ) or (method == "fewshot" and counts.min() < num_clients * shots)
        assert impossible, msg
        return
    check_valid(parts, n, num_clients, all_used=method in ("iid", "dirichlet"))
    if method == "pathological":
        assert all(np.unique(y[p]).size <= k for p in parts)
    if method == "fewshot":
        assert all(np.bincount(y[p], minlength=num_classes).tolist() == [shots] * num_classes for p in parts)


# --- scale in clients (issue #16): the Dirichlet draw no longer slices every client on every attempt -----------


def _dirichlet_before_scaling_fix(y, num_clients, alpha, seed, *, num_classes=None, min_size=1, max_attempts=100):
    """The Dirichlet partitioner as it was before the client-scale fix (per-client pieces built on every
    attempt, argmax over a Python list in the repair), kept as the reference the fast one must equal."""
    y, k = P._labels(y, num_classes)
    n = y.size
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(k)]
    parts = []
    for _ in range(max_attempts):
        sizes = np.zeros(num_clients, dtype=np.int64)
        buckets = [[] for _ in range(num_clients)]
        for idx_c in by_class:
            if idx_c.size == 0:
                continue
            idx_c = rng.permutation(idx_c)
            p = rng.dirichlet(np.full(num_clients, alpha))
            balanced = p * (sizes < n / num_clients)
            if balanced.sum() > 0:
                p = balanced
            p = p / p.sum()
            cuts = (np.cumsum(p) * idx_c.size).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(idx_c, cuts)):
                buckets[j].append(piece)
                sizes[j] += piece.size
        parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
        if sizes.min() >= min_size:
            return P._finish(parts)
    for j in range(num_clients):
        while parts[j].size < min_size:
            big = int(np.argmax([p.size for p in parts]))
            take = int(rng.integers(parts[big].size))
            parts[j] = np.append(parts[j], parts[big][take])
            parts[big] = np.delete(parts[big], take)
    return P._finish(parts)


@pytest.mark.parametrize("n, k, num_clients, alpha, seed, min_size, max_attempts", [
    (5000, 10, 20, 0.5, 0, 1, 100),      # accepted on an early attempt
    (997, 3, 200, 0.5, 1, 1, 100),       # many clients: every attempt leaves someone empty -> the repair
    (400, 4, 10, 0.05, 0, 20, 100),      # min_size > 1
    (60, 3, 50, 1e-3, 1, 1, 100),        # tiny alpha (underflow branch), repair
    (300, 2, 40, 0.3, 7, 2, 3),          # few attempts, then the repair
    (50, 1, 1, 0.5, 3, 1, 100),          # one client, one class
    (2000, 5, 1000, 0.5, 2, 1, 5),       # more clients than examples per class
    (20_000, 2, 1500, 0.5, 0, 1, 100),   # SST-2-like (2 classes, ~13 examples a client): all attempts + repair
])
def test_dirichlet_equals_the_pre_scaling_implementation(n, k, num_clients, alpha, seed, min_size, max_attempts):
    y = labels_of(n, k, seed, skew=True)
    want = _dirichlet_before_scaling_fix(y, num_clients, alpha, seed, min_size=min_size, max_attempts=max_attempts)
    got = P.dirichlet(y, num_clients, alpha, seed, min_size=min_size, max_attempts=max_attempts)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_dirichlet_with_empty_classes_equals_reference():
    y = np.array([0, 2, 2, 4, 4, 4, 0, 2] * 30)  # classes 1 and 3 empty
    want = _dirichlet_before_scaling_fix(y, 12, 0.5, 3, num_classes=6)
    got = P.dirichlet(y, 12, 0.5, 3, num_classes=6)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == 12

