"""Deterministic placement of a round's cohort on ranks.

Every rank computes the same placement from the same inputs, so no communication is needed. Placement
balances work: clients are taken largest first and each goes to the rank with the least work so far
(longest-processing-time greedy), ties broken by rank index; the result depends only on the cohort, the
per-client work and the world size.
"""

from __future__ import annotations

from typing import Sequence


def place_clients(cohort: Sequence[int], world_size: int, work: Sequence[float] | None = None) -> list[list[int]]:
    """Split ``cohort`` (client ids) into ``world_size`` lists, one per rank.

    Args:
        cohort: client ids of the round (any order; the result does not depend on it).
        world_size: number of ranks (>= 1).
        work: cost of each client in ``cohort`` order (e.g. local steps x batch); None counts 1 each.

    Returns:
        ``placement[rank]`` = that rank's clients in ascending id order.

    Raises:
        ValueError: world_size < 1 or len(work) != len(cohort).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if work is None:
        work = [1.0] * len(cohort)
    if len(work) != len(cohort):
        raise ValueError("work must have one entry per cohort client")
    order = sorted(zip(cohort, work), key=lambda cw: (-cw[1], cw[0]))
    load = [0.0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for cid, w in order:
        r = min(range(world_size), key=lambda i: (load[i], i))
        out[r].append(int(cid))
        load[r] += w
    return [sorted(x) for x in out]
