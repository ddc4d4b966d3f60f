"""Client partitioners: split example indices among clients. Pure numpy, seeded by ``np.random.default_rng(seed)``.

Every partitioner takes the training labels (int array, shape (N,)) or N, and returns ``list[np.ndarray]``:
one int64 array of example indices per client, sorted ascending, pairwise disjoint, none empty. iid and
Dirichlet use every example; pathological and few-shot may leave some unused (see each docstring).
Impossible requests raise :class:`ValueError` with a one-line message; the prepare pipeline re-raises it as a
``DataError`` naming the source file. :func:`natural` groups by a client-id column instead (no randomness);
:func:`lognormal_sizes` draws the client sizes of iid with quantity skew from the
``[data.seed, DataStream.QUANTITY_SKEW]`` stream of :mod:`hpcfed.rng`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from hpcfed.rng import DataStream, generator

__all__ = ["iid", "dirichlet", "pathological", "fewshot", "natural", "lognormal_sizes", "partition", "PARTITIONERS"]


def _check_clients(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be >= 1")
    if n < num_clients:
        raise ValueError(f"{num_clients} clients need at least {num_clients} examples, have {n}")


def _labels(labels: Sequence[int] | np.ndarray, num_classes: Optional[int]) -> tuple[np.ndarray, int]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    k = int(y.max()) + 1 if y.size else 0
    if num_classes is None:
        num_classes = k
    elif num_classes < k:
        raise ValueError(f"label {k - 1} is out of range for num_classes={num_classes}")
    return y, int(num_classes)


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(num_samples: int, num_clients: int, seed: int, *, quantity_sigma: Optional[float] = None
        ) -> list[np.ndarray]:
    """Uniform random split: a seeded permutation cut into ``num_clients`` parts whose sizes differ by <= 1, or,
    with ``quantity_sigma``, into parts of log-normal sizes (:func:`lognormal_sizes`; quantity skew).

    Raises:
        ValueError: fewer examples than clients.
    """
    _check_clients(num_samples, num_clients)
    if quantity_sigma is None:
        rng = np.random.default_rng(seed)
        return _finish(np.array_split(rng.permutation(num_samples), num_clients))
    rng = generator(seed, DataStream.QUANTITY_SKEW)
    sizes = lognormal_sizes(num_samples, num_clients, quantity_sigma, rng)
    return _finish(np.split(rng.permutation(num_samples), np.cumsum(sizes)[:-1]))


def lognormal_sizes(num_samples: int, num_clients: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Client sizes with quantity skew (FedLab's ``lognormal_unbalance_split``; flwr-datasets' size partitioners):
    weights w_k ~ LogNormal(0, sigma), sizes proportional to w (largest remainder), each >= 1, summing to
    ``num_samples``. int64 (num_clients,). sigma=0 gives equal sizes; larger sigma, more unequal ones.

    Raises:
        ValueError: sigma < 0, fewer examples than clients.
    """
    if not sigma >= 0:
        raise ValueError(f"quantity_sigma={sigma} must be >= 0")
    _check_clients(num_samples, num_clients)
    w = rng.lognormal(0.0, sigma, size=num_clients)
    spare = num_samples - num_clients  # everyone gets 1; the rest in proportion to w
    quota = spare * w / w.sum()
    sizes = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - sizes), kind="stable")
    sizes[order[:spare - int(sizes.sum())]] += 1
    return sizes + 1


def natural(client_ids: Sequence[str]) -> tuple[list[np.ndarray], list[str]]:
    """Natural partition (LEAF's FEMNIST / Shakespeare writers, FLAIR users; flwr-datasets'
    ``NaturalIdPartitioner``): one client per distinct value of ``client_ids`` (length N, one per example).

    Returns:
        The index arrays (int64, sorted) and the client names, clients ordered by id (numerically when every id
        is an integer, else as strings).

    Raises:
        ValueError: an empty id, or no examples.
    """
    ids = [str(c).strip() for c in client_ids]
    if not ids:
        raise ValueError("no examples")
    if "" in ids:
        raise ValueError(f"example {ids.index('')} has an empty client id")
    uniq = set(ids)
    numeric = all(u.lstrip("-").isdigit() for u in uniq)
    names = sorted(uniq, key=(lambda u: (int(u), u)) if numeric else None)
    lookup = {n: i for i, n in enumerate(names)}
    codes = np.fromiter((lookup[c] for c in ids), dtype=np.int64, count=len(ids))  # (N,)
    order = np.argsort(codes, kind="stable")
    cuts = np.flatnonzero(np.diff(codes[order])) + 1
    return _finish(np.split(order, cuts)), names


def dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    *,
    num_classes: Optional[int] = None,
    min_size: int = 1,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Label skew by per-class Dirichlet allocation (Hsu et al. 2019; FedML's
    ``partition_class_samples_with_dirichlet_distribution``, after Yurochkin et al. 2019).

    For each class c: shuffle its examples, draw p ~ Dir(α·1_C) over the C clients, zero the share of clients
    already holding more than N/C examples (FedML's balancing term), renormalize, and cut the class at the
    cumulative proportions. Smaller α gives each client fewer classes; large α approaches iid.

    Every example is used. If some client has fewer than ``min_size`` examples the whole draw is repeated
    (the same generator continues, so the result stays deterministic); after ``max_attempts`` draws, clients
    still short receive single examples taken from the currently largest client.

    Raises:
        ValueError: alpha <= 0, fewer examples than ``num_clients * min_size``, bad labels.
    """
    if not alpha > 0:  # also rejects NaN
        raise ValueError(f"alpha={alpha} must be > 0")
    if min_size < 1:
        raise ValueError(f"min_size={min_size} must be >= 1")
    y, k = _labels(labels, num_classes)
    n = y.size
    _check_clients(n, num_clients)
    if n < num_clients * min_size:
        raise ValueError(
            f"{num_clients} clients x min_size {min_size} need {num_clients * min_size} examples, have {n}"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(k)]
    parts: list[np.ndarray] = []
    for attempt in range(max_attempts):
        # One draw: per class its shuffled examples and the cut points; only the client sizes are needed to
        # accept or reject it, so the per-client arrays are built once, for the accepted (or last) draw —
        # O(num_classes) numpy calls per attempt instead of O(num_clients * num_classes) slices.
        sizes = np.zeros(num_clients, dtype=np.int64)
        draws: list[tuple[np.ndarray, np.ndarray]] = []  # (shuffled class examples (n_c,), piece sizes (K,))
        for idx_c in by_class:
            if idx_c.size == 0:
                continue
            idx_c = rng.permutation(idx_c)
            p = rng.dirichlet(np.full(num_clients, alpha))
            balanced = p * (sizes < n / num_clients)
            if balanced.sum() > 0:  # all-zero only when tiny alpha underflows; then keep the raw draw
                p = balanced
            p = p / p.sum()
            cuts = (np.cumsum(p) * idx_c.size).astype(np.int64)[:-1]
            pieces = np.diff(cuts, prepend=0, append=idx_c.size)  # (K,) = sizes of np.split(idx_c, cuts)
            sizes += pieces
            draws.append((idx_c, pieces))
        if sizes.min() >= min_size or attempt == max_attempts - 1:
            parts = _client_pieces(draws, sizes)
            if sizes.min() >= min_size:
                return _finish(parts)
    # Enforce the minimum: move single examples from the largest client to each short one (deterministic).
    held = np.array([q.size for q in parts], dtype=np.int64)  # (K,) kept equal to the parts' sizes
    for j in range(num_clients):
        while parts[j].size < min_size:
            big = int(np.argmax(held))
            take = int(rng.integers(parts[big].size))
            parts[j] = np.append(parts[j], parts[big][take])
            parts[big] = np.delete(parts[big], take)
            held[j] += 1
            held[big] -= 1
    return _finish(parts)


def _client_pieces(draws: list[tuple[np.ndarray, np.ndarray]], sizes: np.ndarray) -> list[np.ndarray]:
    """The clients' example arrays of one Dirichlet draw: client j gets, class after class, its piece of each
    class's shuffled examples (``np.split(idx_c, cuts)[j]``), concatenated in that order (which the minimum-size
    repair depends on). ``draws``: per non-empty class (shuffled examples (n_c,), piece sizes (K,));
    ``sizes``: (K,) their sums. One stable sort instead of K·C slices and K concatenations."""
    num_clients = sizes.size
    if not draws:
        return [np.empty(0, np.int64) for _ in range(num_clients)]
    elems = np.concatenate([idx_c for idx_c, _ in draws])  # (N,) class-major, each class in shuffled order
    owner = np.concatenate([np.repeat(np.arange(num_clients), pieces) for _, pieces in draws])  # (N,)
    ordered = elems[np.argsort(owner, kind="stable")]  # grouped by client; class order, then draw order
    return np.split(ordered, np.cumsum(sizes)[:-1])


def _allocate_shards(total: int, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shards per class, proportional to class size (largest remainder, random tie-break), each <= its count,
    and >= 1 for every non-empty class when there are at least as many shards as such classes."""
    n = int(counts.sum())
    quota = total * counts / n
    s = np.floor(quota).astype(np.int64)
    frac = quota - s
    rem = total - int(s.sum())
    # Largest remainder first, ties at random, empty classes never.
    order = np.lexsort((rng.random(counts.size), -frac, counts == 0))
    s[order[:rem]] += 1
    present = np.flatnonzero(counts > 0)
    if total >= present.size:
        for c in present:
            if s[c] == 0:
                donor = int(np.argmax(s))  # has >= 2 since sum(s) >= number of present classes
                s[donor] -= 1
                s[c] = 1
    assert s.sum() == total and np.all(s <= counts)
    return s


def pathological(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    classes_per_client: int,
    seed: int,
    *,
    num_classes: Optional[int] = None,
) -> list[np.ndarray]:
    """Pathological non-iid split (McMahan et al., AISTATS 2017): sort examples by label, cut them into
    ``num_clients * classes_per_client`` shards and give each client ``classes_per_client`` shards at random.

    Shards never straddle a class boundary (each class is cut into a number of shards proportional to its size,
    at least one per class when there are enough shards), so a client holds at most ``classes_per_client``
    classes (fewer when it draws two shards of one class). Every example is used, except when there are fewer
    shards than non-empty classes: then the classes that get no shard are left out.

    Raises:
        ValueError: classes_per_client < 1 or > num_classes, fewer examples than shards.
    """
    y, k = _labels(labels, num_classes)
    n = y.size
    _check_clients(n, num_clients)
    if classes_per_client < 1:
        raise ValueError(f"classes_per_client={classes_per_client} must be >= 1")
    if classes_per_client > k:
        raise ValueError(f"classes_per_client={classes_per_client} is more than the {k} classes")
    total = num_clients * classes_per_client
    if total > n:
        raise ValueError(
            f"{num_clients} clients x {classes_per_client} shards need at least {total} examples, have {n}"
        )
    rng = np.random.default_rng(seed)
    counts = np.bincount(y, minlength=k)
    per_class = _allocate_shards(total, counts, rng)
    shards: list[np.ndarray] = []
    for c in range(k):
        if per_class[c]:
            shards.extend(np.array_split(rng.permutation(np.flatnonzero(y == c)), per_class[c]))
    order = rng.permutation(total)
    return _finish(
        [np.concatenate([shards[j] for j in order[i * classes_per_client:(i + 1) * classes_per_client]])
         for i in range(num_clients)]
    )


def fewshot(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    shots_per_class: int,
    seed: int,
    *,
    num_classes: Optional[int] = None,
) -> list[np.ndarray]:
    """Few-shot split: every client gets exactly ``shots_per_class`` examples of every class, drawn without
    replacement (clients are disjoint). Examples beyond ``num_clients * shots_per_class`` per class are unused.

    Raises:
        ValueError: shots_per_class < 1, or a class with fewer than ``num_clients * shots_per_class`` examples.
    """
    y, k = _labels(labels, num_classes)
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be >= 1")
    if shots_per_class < 1:
        raise ValueError(f"shots_per_class={shots_per_class} must be >= 1")
    if k == 0:
        raise ValueError("no examples")
    need = num_clients * shots_per_class
    counts = np.bincount(y, minlength=k)
    short = np.flatnonzero(counts < need)
    if short.size:
        c = int(short[0])
        raise ValueError(
            f"class {c} has {counts[c]} examples; {num_clients} clients x {shots_per_class} shots need {need}"
            + (f" ({short.size} classes short)" if short.size > 1 else "")
        )
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:need].reshape(num_clients, shots_per_class)  # (C, n)
             for c in range(k)]
    return _finish([np.concatenate([p[i] for p in picks]) for i in range(num_clients)])


PARTITIONERS = ("iid", "dirichlet", "pathological", "fewshot")


def partition(
    method: str,
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    seed: int,
    *,
    num_classes: Optional[int] = None,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    shots_per_class: int = 16,
    quantity_sigma: Optional[float] = None,
) -> list[np.ndarray]:
    """Dispatch by name ('iid', 'dirichlet', 'pathological', 'fewshot'); the unused parameters are ignored.
    ('natural' needs client ids, not labels: call :func:`natural`.)"""
    if method == "iid":
        return iid(len(labels), num_clients, seed, quantity_sigma=quantity_sigma)
    if method == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed, num_classes=num_classes)
    if method == "pathological":
        return pathological(labels, num_clients, classes_per_client, seed, num_classes=num_classes)
    if method == "fewshot":
        return fewshot(labels, num_clients, shots_per_class, seed, num_classes=num_classes)
    raise ValueError(f"unknown partition {method!r}; choose one of: {', '.join(PARTITIONERS)}")
