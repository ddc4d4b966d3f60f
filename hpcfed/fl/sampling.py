"""Seeds and cohort sampling: functions of (seed, round[, client]) only, so every rank agrees without
communication and results do not depend on where a client is trained."""

from __future__ import annotations

import numpy as np

# Stream tags keep the RNG streams of different purposes apart.
_COHORT, _CLIENT = 1, 2


def cohort_for_round(seed: int, round_idx: int, num_clients: int, cohort_size: int) -> list[int]:
    """Client ids of round ``round_idx`` (1-based), sampled uniformly without replacement, ascending.

    Raises:
        ValueError: cohort_size > num_clients or < 1.
    """
    if not 1 <= cohort_size <= num_clients:
        raise ValueError(f"cohort_size={cohort_size} must be in [1, num_clients={num_clients}]")
    rng = np.random.default_rng([seed, _COHORT, round_idx])
    return sorted(int(c) for c in rng.choice(num_clients, size=cohort_size, replace=False))


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """63-bit seed of a client's local training in a round (data order, dropout)."""
    state = np.random.SeedSequence([seed, _CLIENT, round_idx, client_id]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
