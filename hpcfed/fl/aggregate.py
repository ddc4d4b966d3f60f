"""Aggregation: accumulate clients' weighted deltas on the rank, then ONE all-reduce per round.

The accumulator, the per-element weight counts and the round's statistics share one flat buffer, so the
cross-rank reduction of everything a round produces is a single collective:

    buffer = [ acc (n) | cnt (n) | stats (len(STATS)) ]        fp32
    acc += w_c · m_c ⊙ (θ_c − θ_global)        cnt += w_c · m_c        (fused kernel, per client)
"""

from __future__ import annotations

from typing import Optional

import torch

from hpcfed import kernels
from hpcfed.dist import Comm

STATS = ("loss_sum", "samples_seen", "clients_ok", "clients_failed", "steps", "elems_up_hi", "elems_up_lo",
         "elems_down_hi", "elems_down_lo", "stop_requested", "dp_unclipped", "client_loads", "client_cache_hits",
         "start_loss_sum", "start_loss_clients")
"""Per-round sums that ride in the aggregate buffer (so a round stays ONE collective): training loss and samples,
client counts, element counts (split, see ``_SPLIT``), a stop request, under ``fl.dp`` the clients whose update
norm was within the clip norm (adaptive clipping), the client data loads from the shards and client-cache hits
(:class:`hpcfed.fl.loop.ClientCache`), and the clients' first-batch losses
(:attr:`hpcfed.fl.client.LocalResult.first_loss`, summed, and the clients that reported one)."""
_SPLIT = 1 << 12
"""Element counts are carried as hi·2^12 + lo so that their sums stay exact in fp32."""


class Aggregator:
    """Rank-local accumulator of one round.

    Args:
        numel: n, the flat buffer size.
        device: where the buffer lives (the collective runs there).
        kernel_backend: forwarded to ``masked_accumulate`` (None = auto).

    Attributes:
        buffer: (2n + len(STATS),) fp32 — the one tensor that is all-reduced.
        acc, cnt: (n,) views of ``buffer``.
    """

    def __init__(self, numel: int, device: torch.device, kernel_backend: Optional[str] = None):
        self.numel = numel
        self.buffer = torch.zeros(2 * numel + len(STATS), device=device)
        self.acc = self.buffer[:numel]
        self.cnt = self.buffer[numel:2 * numel]
        self._stats = self.buffer[2 * numel:]
        self._host_stats = dict.fromkeys(STATS, 0.0)
        self.kernel_backend = kernel_backend

    def reset(self) -> None:
        self.buffer.zero_()
        self._host_stats = dict.fromkeys(STATS, 0.0)

    def elements(self, mask: Optional[torch.Tensor]) -> int:
        """Elements of the flat buffer that ``mask`` selects ((n,) bool/uint8, or None for all n)."""
        return self.numel if mask is None else int(mask.count_nonzero())

    def add(self, theta_client: torch.Tensor, theta_global: torch.Tensor, weight: float,
            mask: Optional[torch.Tensor] = None) -> int:
        """Accumulate one client's update; returns the number of elements the client sends up (the entries
        of ``mask``, which are exactly the ones the fused kernel folds into ``acc``)."""
        kernels.masked_accumulate(self.acc, self.cnt, theta_client, theta_global, float(weight), mask,
                                  backend=self.kernel_backend)
        return self.count_up(mask)

    def count_up(self, mask: Optional[torch.Tensor]) -> int:
        """Count one surviving client and the elements it sends up (its mask, or all n) without folding its
        update into ``acc`` (a robust rule aggregates the updates itself); returns that count."""
        elems = self.elements(mask)
        self._count("elems_up", elems)
        self._host_stats["clients_ok"] += 1
        return elems

    def count_down(self, mask: Optional[torch.Tensor]) -> int:
        """Count the global-model elements one client receives before it trains (its mask, or all n);
        returns that count. Called once per client that is handed the model, whether or not it then fails."""
        elems = self.elements(mask)
        self._count("elems_down", elems)
        return elems

    def _count(self, key: str, elems: int) -> None:
        self._host_stats[f"{key}_hi"] += elems // _SPLIT
        self._host_stats[f"{key}_lo"] += elems % _SPLIT

    def add_stats(self, **values: float) -> None:
        for k, v in values.items():
            self._host_stats[k] += float(v)

    def reduce(self, comm: Comm, *, stats_only: bool = False) -> dict[str, float]:
        """Sum the buffer over ranks (ONE collective) and return the reduced statistics; ``stats_only`` sums just
        the statistics (a robust rule, whose clients were only counted, never folded into ``acc``/``cnt``)."""
        self._stats.copy_(torch.tensor([self._host_stats[k] for k in STATS], dtype=torch.float32))
        comm.all_reduce_sum(self._stats if stats_only else self.buffer, tag="aggregate")
        vals = dict(zip(STATS, self._stats.tolist()))
        for key in ("elems_up", "elems_down"):
            vals[key] = int(round(vals.pop(f"{key}_hi"))) * _SPLIT + int(round(vals.pop(f"{key}_lo")))
        return vals
