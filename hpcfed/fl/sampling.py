"""Seeds and cohort sampling: functions of (seed, round[, client]) only, so every rank agrees without
communication and results do not depend on where a client is trained."""

from __future__ import annotations

from hpcfed.rng import TrainStream, generator, seed63


def cohort_for_round(seed: int, round_idx: int, num_clients: int, cohort_size: int,
                     sampling: str = "fixed") -> list[int]:
    """Client ids of round ``round_idx`` (1-based), ascending, drawn from the stream [seed, COHORT, round].

    Args:
        sampling: 'fixed' — ``cohort_size`` clients uniformly without replacement; 'poisson' — each client
            independently with probability q = cohort_size / num_clients (one uniform draw per client, in id
            order), so the cohort has cohort_size clients in expectation and may be empty. Poisson sampling is
            what the privacy amplification of ``fl.dp`` with ``fl.sampling=poisson`` assumes.

    Raises:
        ValueError: cohort_size > num_clients or < 1, or an unknown ``sampling``.
    """
    if not 1 <= cohort_size <= num_clients:
        raise ValueError(f"cohort_size={cohort_size} must be in [1, num_clients={num_clients}]")
    rng = generator(seed, TrainStream.COHORT, round_idx)
    if sampling == "fixed":
        return sorted(int(c) for c in rng.choice(num_clients, size=cohort_size, replace=False))
    if sampling == "poisson":
        q = cohort_size / num_clients
        return [int(c) for c in (rng.random(num_clients) < q).nonzero()[0]]
    raise ValueError(f"sampling={sampling!r} is not 'fixed' or 'poisson'")


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """63-bit seed of a client's local training in a round (data order, dropout)."""
    return seed63([seed, TrainStream.CLIENT, round_idx, client_id])
