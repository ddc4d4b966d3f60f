"""Cohort sampling and placement depend only on (seed, round) and the world size."""

import pytest

from hpcfed.dist import place_clients
from hpcfed.fl.sampling import client_seed, cohort_for_round


def test_cohort_deterministic_and_valid():
    a = cohort_for_round(3, 5, 100, 16)
    assert a == cohort_for_round(3, 5, 100, 16)
    assert len(set(a)) == 16 and all(0 <= c < 100 for c in a) and a == sorted(a)
    assert a != cohort_for_round(3, 6, 100, 16)
    assert a != cohort_for_round(4, 5, 100, 16)
    with pytest.raises(ValueError):
        cohort_for_round(0, 1, 5, 6)


def test_client_seed_distinct():
    seeds = {client_seed(0, r, c) for r in range(1, 6) for c in range(50)}
    assert len(seeds) == 250
    assert client_seed(0, 1, 2) == client_seed(0, 1, 2)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_placement_partitions_cohort(world):
    cohort = [5, 1, 9, 3, 7, 2, 8]
    work = [10, 1, 5, 5, 2, 8, 3]
    p = place_clients(cohort, world, work)
    assert len(p) == world
    assert sorted(c for r in p for c in r) == sorted(cohort)
    assert p == place_clients(list(reversed(cohort)), world, list(reversed(work)))
    if world == 2:
        loads = [sum(w for c, w in zip(cohort, work) if c in r) for r in p]
        assert abs(loads[0] - loads[1]) <= max(work)
