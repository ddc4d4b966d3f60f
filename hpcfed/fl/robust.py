"""Byzantine-robust aggregation: rules over the stacked updates of a round's cohort, and the gather that
brings every client's update to every rank.

FedAvg never needs an individual update: each rank sums w_c·Δ_c and ONE all-reduce finishes the round
(``hpcfed/fl/aggregate.py``). A robust rule is a non-linear function of all the updates, so when one is
configured the round additionally gathers them (:meth:`hpcfed.dist.Comm.all_gather`) and every rank applies
the same rule to the same matrix::

    U = [Δ_c1; Δ_c2; ...; Δ_cm]   (m, n) fp32, rows sorted by client id (canonical: independent of placement)
    Δ = rule(U, w)                (n,)  fp32, then the server step uses Δ in place of acc / cnt

Cost: every rank holds the whole cohort's updates, m × n × 4 bytes (m = cohort size, n = trainable elements:
e.g. 100 clients × 1 M LoRA elements = 400 MB), and receives (m − k_r) × n × 4 bytes (k_r = clients it
trained); the gather moves ``k_max`` padded rows per rank in column chunks of at most 256 MiB of receive
buffer. The rules themselves work in column chunks of at most ``chunk_bytes`` (default 64 MiB) of temporary
memory besides U.

Rules (pure functions; every one takes ``updates`` (m, n) float32 and ``weights`` (m,) or None and returns a
new (n,) float32 tensor on ``updates``' device; none modifies its input):

============== ===================================================================== ==============
name           rule                                                                   weights
============== ===================================================================== ==============
median         coordinate-wise median (Yin et al., ICML 2018)                         ignored
trimmed_mean   coordinate-wise mean after dropping the ⌊βm⌋ largest and smallest      ignored
krum           the update with the least sum of squared distances to its m−f−2        ignored
               nearest others (Blanchard et al., NeurIPS 2017)
multi_krum     the weighted mean of the m' best-scored updates (same paper)           of the chosen
centered_clip  v ← v + Σ_c w̃_c clip_τ(u_c − v), L times (Karimireddy et al., 2021)     used
norm_bound     Σ_c w̃_c u_c·min(1, M/‖u_c‖) (Sun et al., 2019)                          used
============== ===================================================================== ==============

Weights (w̃ = w / Σ w) are the clients' self-reported sizes in a real deployment, which an attacker controls;
median, trimmed mean and Krum therefore ignore them, as the papers and Flower's ``FedMedian``,
``FedTrimmedAvg`` and ``Krum`` strategies do. Every error is a one-line :class:`ValueError`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch

from hpcfed.config import ROBUST_AGGREGATORS
from hpcfed.dist import Comm
from hpcfed.dist.comm import GATHER_CHUNK_BYTES

DEFAULT_CHUNK_BYTES = 64 << 20
"""Temporary memory (bytes) one column chunk of a rule may use, besides the (m, n) updates themselves."""

AGGREGATORS = ROBUST_AGGREGATORS
"""Names of the robust rules (``fl.aggregator``; 'fedavg', the default, is the all-reduce path, not here)."""


# ------------------------------------------------------------------------------------------------ checks


def _check_updates(updates: torch.Tensor, weights: Optional[torch.Tensor] = None,
                   *, need_rows: int = 1) -> Optional[torch.Tensor]:
    """Validate ``updates`` (m, n) float32 and ``weights`` (m,); return the normalized weights w / Σ w as
    float64 on ``updates``' device (None when ``weights`` is None)."""
    if not isinstance(updates, torch.Tensor) or updates.dim() != 2:
        raise ValueError(f"updates must be a 2-D (clients, elements) tensor, got "
                         f"{tuple(updates.shape) if isinstance(updates, torch.Tensor) else type(updates).__name__}")
    if updates.dtype != torch.float32:
        raise ValueError(f"updates must be float32, got {updates.dtype}")
    m = updates.shape[0]
    if m < need_rows:
        raise ValueError(f"needs at least {need_rows} client update(s), got {m}")
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64, device=updates.device).reshape(-1)
    if w.numel() != m:
        raise ValueError(f"weights must have one entry per client ({m}), got {w.numel()}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    total = float(w.sum())
    if total <= 0:
        raise ValueError("weights must not all be 0")
    return w / total


def _uniform(m: int, device: torch.device) -> torch.Tensor:
    return torch.full((m,), 1.0 / m, dtype=torch.float64, device=device)


def _column_chunks(m: int, n: int, bytes_per_entry: int, chunk_bytes: int):
    """Column ranges [c0, c1) whose (m, c1 − c0) temporaries of ``bytes_per_entry`` bytes a cell fit in
    ``chunk_bytes`` (at least one column each)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    cols = max(1, chunk_bytes // max(1, m * bytes_per_entry))
    for c0 in range(0, n, cols):
        yield c0, min(n, c0 + cols)


def _weighted_sum(updates: torch.Tensor, coef: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    """Σ_c coef_c · updates[c] → (n,) float32, accumulated in float64 per column chunk."""
    m, n = updates.shape
    out = torch.empty(n, dtype=torch.float32, device=updates.device)
    for c0, c1 in _column_chunks(m, n, 8, chunk_bytes):
        out[c0:c1] = (coef @ updates[:, c0:c1].double()).float()  # (m,) @ (m, c) -> (c,)
    return out


def _row_sq_norms(updates: torch.Tensor, center: Optional[torch.Tensor], chunk_bytes: int) -> torch.Tensor:
    """‖updates[c] − center‖² for every row c → (m,) float64 (center (n,) or None for 0)."""
    m, n = updates.shape
    acc = torch.zeros(m, dtype=torch.float64, device=updates.device)
    for c0, c1 in _column_chunks(m, n, 8, chunk_bytes):
        x = updates[:, c0:c1].double()  # (m, c)
        if center is not None:
            x = x - center[c0:c1].double()
        acc += x.square().sum(dim=1)
    return acc


# ---------------------------------------------------------------------------- coordinate-wise rules


def coordinate_median(updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018, Sec. 3, ``med``):

        g_j = med{ u_1j, …, u_mj }    for every coordinate j; for even m the mean of the two middle values
                                       (numpy's convention; Flower's ``aggregate_median`` is ``np.median``)

    Args:
        updates: (m, n) float32, m ≥ 1 client updates (rows).
        weights: (m,) or None — ignored (the rule is unweighted); accepted so all rules share one signature.
        chunk_bytes: temporary memory of one column chunk (the sort of an (m, c) block: values and indices).

    Returns:
        (n,) float32.

    Raises:
        ValueError: ``updates`` not 2-D float32, no rows, bad weights.
    """
    _check_updates(updates, weights)
    m, n = updates.shape
    lo, hi = (m - 1) // 2, m // 2
    out = torch.empty(n, dtype=torch.float32, device=updates.device)
    for c0, c1 in _column_chunks(m, n, 16, chunk_bytes):
        s = torch.sort(updates[:, c0:c1], dim=0).values  # (m, c)
        out[c0:c1] = s[lo] if lo == hi else (s[lo].double() + s[hi].double()).mul_(0.5).float()
    return out


def trimmed_mean(updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *, trim_fraction: float = 0.1,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018, Sec. 3, ``trmean_β``): per coordinate, drop the
    b = ⌊β·m⌋ largest and the b smallest values and average the other m − 2b:

        g_j = 1/(m − 2b) · Σ_{i = b+1}^{m−b} u_(i)j        (u_(i)j: the i-th smallest of column j)

    ``b = int(β·m)`` as in scipy's ``trim_mean`` and Flower's ``aggregate_trimmed_avg`` (``fedtrimmedavg.py``).

    Args:
        updates: (m, n) float32, m ≥ 1.
        weights: (m,) or None — ignored (the rule is unweighted).
        trim_fraction: β in [0, 0.5); β = 0 is the plain mean.
        chunk_bytes: temporary memory of one column chunk.

    Returns:
        (n,) float32 (the mean is accumulated in float64).

    Raises:
        ValueError: β outside [0, 0.5), bad ``updates`` or weights.
    """
    _check_updates(updates, weights)
    if not 0.0 <= float(trim_fraction) < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    m, n = updates.shape
    b = int(float(trim_fraction) * m)
    out = torch.empty(n, dtype=torch.float32, device=updates.device)
    for c0, c1 in _column_chunks(m, n, 24, chunk_bytes):
        s = torch.sort(updates[:, c0:c1], dim=0).values  # (m, c)
        out[c0:c1] = s[b:m - b].double().mean(dim=0).float()
    return out


# ---------------------------------------------------------------------------------------- Krum


def _max_byzantine(m: int) -> int:
    """The largest f with m > 2f + 2 (−1 when there is none, m ≤ 2)."""
    return (m - 3) // 2


def pairwise_sq_distances(updates: torch.Tensor, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Squared Euclidean distances ‖u_i − u_j‖² between all rows → (m, m) float64, zero diagonal.

    Through the Gram matrix of the column-centred rows, accumulated in float64 per column chunk:
    D_ij = G_ii + G_jj − 2·G_ij with G = X·Xᵀ, X = U − mean_c U (centring leaves distances unchanged and
    avoids the cancellation of ‖u‖² ≫ ‖u_i − u_j‖² when updates share a large common part).
    """
    m, n = updates.shape
    gram = torch.zeros(m, m, dtype=torch.float64, device=updates.device)
    for c0, c1 in _column_chunks(m, n, 16, chunk_bytes):
        x = updates[:, c0:c1].double()  # (m, c)
        x = x - x.mean(dim=0, keepdim=True)
        gram += x @ x.T  # (m, m)
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_(min=0.0)
    dist.fill_diagonal_(0.0)
    return dist


def krum_scores(updates: torch.Tensor, num_byzantine: int, *,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Krum scores (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017, Sec. 4):

        s(i) = Σ_{j ∈ N_i} ‖u_i − u_j‖²,   N_i = the m − f − 2 nearest other updates of u_i

    Args:
        updates: (m, n) float32 with m > 2f + 2.
        num_byzantine: f ≥ 0, the number of Byzantine clients assumed.

    Returns:
        (m,) float64 scores (lower is more central).

    Raises:
        ValueError: m ≤ 2f + 2, f < 0, bad ``updates``.
    """
    _check_updates(updates)
    m = updates.shape[0]
    f = int(num_byzantine)
    if f < 0:
        raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine}")
    if m <= 2 * f + 2:
        raise ValueError(f"krum needs more than 2f+2 = {2 * f + 2} client updates (f = num_byzantine = {f}), "
                         f"got {m}")
    dist = pairwise_sq_distances(updates, chunk_bytes=chunk_bytes)
    dist.fill_diagonal_(math.inf)  # a client is not its own neighbour
    nearest = torch.topk(dist, m - f - 2, dim=1, largest=False).values  # (m, m−f−2)
    return nearest.sum(dim=1)


def _resolve_f(num_byzantine: Optional[int], m: int) -> int:
    return _max_byzantine(m) if num_byzantine is None else int(num_byzantine)


def krum_select(updates: torch.Tensor, num_byzantine: Optional[int] = None, num_selected: int = 1, *,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Indices (into the rows of ``updates``) of the ``num_selected`` best Krum scores, best first; ties go to
    the lower index (the lower client id in the canonical order). ``num_byzantine`` None = the largest f the
    cohort tolerates, ⌊(m − 3)/2⌋. Returns an int64 (num_selected,) tensor; raises as :func:`krum_scores` and
    when ``num_selected`` is outside [1, m]."""
    _check_updates(updates)
    m = updates.shape[0]
    if not 1 <= int(num_selected) <= m:
        raise ValueError(f"num_selected must be in [1, {m}] (the number of client updates), got {num_selected}")
    scores = krum_scores(updates, _resolve_f(num_byzantine, m), chunk_bytes=chunk_bytes)
    order = torch.sort(scores, stable=True).indices
    return order[:int(num_selected)]


def _krum_mean(updates: torch.Tensor, w: Optional[torch.Tensor], num_byzantine: Optional[int],
               num_selected: Optional[int], chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(multi-)Krum's result and the chosen row indices; ``w`` normalized weights or None (uniform);
    ``num_selected`` None = m − f."""
    m = updates.shape[0]
    f = _resolve_f(num_byzantine, m)
    k = m - f if num_selected is None else int(num_selected)
    chosen = krum_select(updates, f, k, chunk_bytes=chunk_bytes)
    if k == 1:
        return updates[int(chosen[0])].clone(), chosen
    coef = torch.zeros(m, dtype=torch.float64, device=updates.device)
    coef[chosen] = 1.0 if w is None else w[chosen]
    total = float(coef.sum())
    if total <= 0:
        raise ValueError("multi_krum: the selected client updates all have weight 0")
    return _weighted_sum(updates, coef / total, chunk_bytes), chosen


def krum(updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *, num_byzantine: Optional[int] = None,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Krum (Blanchard et al., NeurIPS 2017): the update u_i* with i* = argmin_i s(i) (see :func:`krum_scores`).

    Reference code: Flower's ``aggregate_krum`` (``flwr/server/strategy/aggregate.py``), which scores from the
    same squared distances.

    Args:
        updates: (m, n) float32, m > 2f + 2.
        weights: ignored (the choice is unweighted).
        num_byzantine: f; None = ⌊(m − 3)/2⌋, the most the cohort tolerates.

    Returns:
        (n,) float32, a copy of the chosen row.

    Raises:
        ValueError: m ≤ 2f + 2, f < 0, bad ``updates`` or weights.
    """
    _check_updates(updates, weights)
    return _krum_mean(updates, None, num_byzantine, 1, chunk_bytes)[0]


def multi_krum(updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *,
               num_byzantine: Optional[int] = None, num_selected: Optional[int] = None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Multi-Krum (Blanchard et al., NeurIPS 2017, Sec. 4): the mean of the m' updates with the best Krum
    scores, weighted by their (renormalized) weights as Flower's ``aggregate_krum`` with ``to_keep`` does:

        g = Σ_{i ∈ S} w_i u_i / Σ_{i ∈ S} w_i,   S = the m' lowest s(i)

    Args:
        updates: (m, n) float32, m > 2f + 2.
        weights: (m,) ≥ 0 or None (uniform).
        num_byzantine: f; None = ⌊(m − 3)/2⌋.
        num_selected: m' in [1, m]; None = m − f. m' = 1 is Krum.

    Returns:
        (n,) float32.

    Raises:
        ValueError: m ≤ 2f + 2, m' outside [1, m], the chosen updates' weights all 0, bad inputs.
    """
    w = _check_updates(updates, weights)
    return _krum_mean(updates, w, num_byzantine, num_selected, chunk_bytes)[0]


# --------------------------------------------------------------------------------- clipping rules


def centered_clip(updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *, tau: Optional[float] = None,
                  iterations: int = 1, reference: Optional[torch.Tensor] = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021, Eq. (CC)):

        v_0 = reference (the previous round's aggregate in the paper; 0 when None)
        v_{l+1} = v_l + Σ_c w̃_c · clip_τ(u_c − v_l),   l = 0 … L−1
        clip_τ(z) = z · min(1, τ / ‖z‖₂)

    The paper averages uniformly (w̃_c = 1/m, the default here); with ``weights`` the mean is weighted.
    Reference code: the authors' ``epfml/byzantine-robust-optimizer`` (``codes/aggregator/clipping.py``).

    Args:
        updates: (m, n) float32, m ≥ 1.
        weights: (m,) ≥ 0 or None (uniform).
        tau: clipping radius τ > 0 (in the units of ‖Δ‖₂); None = at each iteration the median of the
            distances ‖u_c − v_l‖ (hpcfed's scale-free default, not the paper's: set τ for a study).
        iterations: L ≥ 1 (the paper uses 1 with a momentum reference).
        reference: (n,) float32 starting point v_0, or None for 0.
        chunk_bytes: temporary memory of one column chunk.

    Returns:
        (n,) float32 v_L.

    Raises:
        ValueError: τ ≤ 0, L < 1, a reference of the wrong shape, bad inputs.
    """
    w = _check_updates(updates, weights)
    m, n = updates.shape
    if tau is not None and not float(tau) > 0:
        raise ValueError(f"tau must be > 0 (or None for the median distance), got {tau}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if reference is not None and tuple(reference.shape) != (n,):
        raise ValueError(f"reference must have shape ({n},), got {tuple(reference.shape)}")
    w = _uniform(m, updates.device) if w is None else w
    v = torch.zeros(n, dtype=torch.float32, device=updates.device) if reference is None else \
        reference.detach().to(device=updates.device, dtype=torch.float32).clone()
    for _ in range(int(iterations)):
        norms = _row_sq_norms(updates, v, chunk_bytes).sqrt()  # (m,)
        radius = _median(norms) if tau is None else float(tau)
        scale = _clip_scale(norms, radius)
        coef = w * scale  # (m,) float64
        for c0, c1 in _column_chunks(m, n, 8, chunk_bytes):
            vc = v[c0:c1].double()
            v[c0:c1] = (vc + coef @ (updates[:, c0:c1].double() - vc)).float()  # (m,) @ (m, c) -> (c,)
    return v


def _median(x: torch.Tensor) -> float:
    """The median of a 1-D tensor, the mean of the two middle values for an even count (numpy's convention;
    ``torch.median`` returns the lower one)."""
    s = torch.sort(x).values
    m = s.numel()
    return float(s[(m - 1) // 2] + s[m // 2]) / 2.0


def _clip_scale(norms: torch.Tensor, radius: float) -> torch.Tensor:
    """min(1, radius / norm) per entry (1 where norm is 0)."""
    return torch.where(norms > radius, radius / norms.clamp(min=1e-300), torch.ones_like(norms))


def norm_bound(updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *, max_norm: Optional[float] = None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Norm bounding (Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019,
    Sec. 4): scale each update to norm at most M, then average:

        g = Σ_c w̃_c · u_c · min(1, M / ‖u_c‖₂)

    Equals :func:`centered_clip` with τ = M, one iteration and reference 0. Unlike ``fl.max_update_norm``,
    which drops a client past the bound, this keeps it, shrunk.

    Args:
        updates: (m, n) float32, m ≥ 1.
        weights: (m,) ≥ 0 or None (uniform).
        max_norm: M > 0; None = the median of the update norms (hpcfed's scale-free default, not the paper's).

    Returns:
        (n,) float32.

    Raises:
        ValueError: M ≤ 0, bad inputs.
    """
    w = _check_updates(updates, weights)
    m, n = updates.shape
    if max_norm is not None and not float(max_norm) > 0:
        raise ValueError(f"max_norm must be > 0 (or None for the median norm), got {max_norm}")
    w = _uniform(m, updates.device) if w is None else w
    norms = _row_sq_norms(updates, None, chunk_bytes).sqrt()
    radius = _median(norms) if max_norm is None else float(max_norm)
    return _weighted_sum(updates, w * _clip_scale(norms, radius), chunk_bytes)


# ------------------------------------------------------------------------------------ dispatch


_PARAMS: dict[str, dict[str, Any]] = {
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.1},
    "krum": {"num_byzantine": None},
    "multi_krum": {"num_byzantine": None, "num_selected": None},
    "centered_clip": {"tau": None, "iterations": 1, "center": "previous"},
    "norm_bound": {"max_norm": None},
}
"""Each rule's parameters (``fl.aggregator_params.*``) and their defaults."""

_RULES = {"median": coordinate_median, "trimmed_mean": trimmed_mean, "krum": krum, "multi_krum": multi_krum,
          "centered_clip": centered_clip, "norm_bound": norm_bound}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def validate_params(name: str, params: Optional[Mapping[str, Any]] = None, *,
                    cohort_size: Optional[int] = None) -> dict[str, Any]:
    """Check a rule's name and parameters; return the parameters with defaults filled in.

    Args:
        name: one of :data:`AGGREGATORS`.
        params: ``fl.aggregator_params`` (unknown keys are errors).
        cohort_size: when given, also check what depends on the number of clients m (Krum's m > 2f + 2,
            multi-Krum's m' ≤ m). A round in which clients failed can still have fewer; :func:`robust_aggregate`
            checks again.

    Raises:
        ValueError: one line naming ``fl.aggregator`` or the ``fl.aggregator_params`` key.
    """
    if name not in _PARAMS:
        raise ValueError(f"fl.aggregator={name!r} is not a robust rule; choose one of: {', '.join(AGGREGATORS)}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(_PARAMS[name]))
    if unknown:
        allowed = ", ".join(_PARAMS[name]) or "none"
        raise ValueError(f"fl.aggregator_params.{unknown[0]} is not a parameter of {name} (its parameters: {allowed})")
    out = {**_PARAMS[name], **params}
    key = "fl.aggregator_params."
    if name == "trimmed_mean":
        b = out["trim_fraction"]
        if not _is_number(b) or not 0.0 <= float(b) < 0.5:
            raise ValueError(f"{key}trim_fraction={b!r} must be a number in [0, 0.5)")
    if name in ("krum", "multi_krum"):
        f = out["num_byzantine"]
        if f is not None and (not _is_int(f) or f < 0):
            raise ValueError(f"{key}num_byzantine={f!r} must be an int >= 0 (or null: the most the cohort "
                             "tolerates)")
    if name == "multi_krum":
        k = out["num_selected"]
        if k is not None and (not _is_int(k) or k < 1):
            raise ValueError(f"{key}num_selected={k!r} must be an int >= 1 (or null for m − num_byzantine)")
    if name == "centered_clip":
        if out["tau"] is not None and (not _is_number(out["tau"]) or float(out["tau"]) <= 0):
            raise ValueError(f"{key}tau={out['tau']!r} must be a number > 0 (or null for the median distance)")
        if not _is_int(out["iterations"]) or out["iterations"] < 1:
            raise ValueError(f"{key}iterations={out['iterations']!r} must be an int >= 1")
        if out["center"] not in ("previous", "zero"):
            raise ValueError(f"{key}center={out['center']!r} is not valid; choose one of: previous, zero")
    if name == "norm_bound":
        mn = out["max_norm"]
        if mn is not None and (not _is_number(mn) or float(mn) <= 0):
            raise ValueError(f"{key}max_norm={mn!r} must be a number > 0 (or null for the median norm)")
    if cohort_size is not None:
        _check_cohort(name, out, int(cohort_size))
    return out


class TooFewUpdates(ValueError):
    """A round has too few client updates for the rule (Krum / multi-Krum: m ≤ 2f + 2; multi-Krum: m <
    num_selected). The round loop skips
    that round's server step (same on every rank, since every rank sees the same m) instead of stopping."""


def _check_cohort(name: str, params: Mapping[str, Any], m: int) -> None:
    if name not in ("krum", "multi_krum"):
        return
    f = _resolve_f(params.get("num_byzantine"), m)
    if f < 0 or m <= 2 * f + 2:
        raise TooFewUpdates(f"{name} needs more than 2f+2 = {2 * max(f, 0) + 2} client updates "
                         f"(f = num_byzantine = {max(f, 0)}), got a cohort of {m}")
    k = params.get("num_selected")
    if k is not None and k > m:  # a small Poisson cohort or dropped clients: skip the round, as for m ≤ 2f + 2
        raise TooFewUpdates(f"{name} selects num_selected = {k} updates, got a cohort of {m}")


def robust_aggregate(name: str, updates: torch.Tensor, weights: Optional[torch.Tensor] = None, *,
                     reference: Optional[torch.Tensor] = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     **params: Any) -> torch.Tensor:
    """Apply the rule ``name`` to ``updates`` (m, n) float32 with ``weights`` (m,) or None → (n,) float32.

    ``params`` are the rule's parameters (:func:`validate_params`); ``reference`` is centered clipping's
    starting point v_0 (ignored by the other rules; the ``center`` parameter is for :class:`RobustAggregator`,
    which keeps the previous aggregate). Raises a one-line ValueError for an unknown rule or parameter, a bad
    value, or too few updates for the rule.
    """
    p = validate_params(name, params)
    _check_updates(updates, weights)
    _check_cohort(name, p, updates.shape[0])
    p.pop("center", None)
    if name == "centered_clip":
        p["reference"] = reference
    return _RULES[name](updates, weights, chunk_bytes=chunk_bytes, **p)


# ------------------------------------------------------------------------------------ the round


def _permute_rows_(x: torch.Tensor, order: Sequence[int]) -> None:
    """x ← x[order] in place (row i of the result is old row order[i]), one spare row of memory."""
    done = [False] * len(order)
    tmp = None
    for start in range(len(order)):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        tmp = x[start].clone() if tmp is None else tmp.copy_(x[start])
        i = start
        while True:
            done[i] = True
            j = order[i]
            if j == start:
                x[i].copy_(tmp)
                break
            x[i].copy_(x[j])
            i = j


def gather_updates(comm: Comm, updates: torch.Tensor, client_ids: Sequence[int], weights: Sequence[float], *,
                   chunk_bytes: int = GATHER_CHUNK_BYTES) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Every rank's client updates, on every rank, in the canonical order (sorted by client id).

    Two collectives: :meth:`Comm.all_gather` of the (k, 2) float64 [client id, weight] rows (tag
    ``robust_meta``) and of the (k, n) updates (tag ``robust_updates``).

    Args:
        comm: the communicator.
        updates: (k, n) float32, this rank's client updates Δ_c = θ_c − θ_global (k may be 0); on one rank
            it may be reordered in place (it is the result).
        client_ids: k distinct client ids, row by row.
        weights: k aggregation weights, row by row.

    Returns:
        (U, ids, w): U (m, n) float32 sorted by client id, the m sorted ids, w (m,) float64.

    Raises:
        ValueError: lengths that do not match ``updates``, a client id seen twice in the cohort.
    """
    k = updates.shape[0]
    if len(client_ids) != k or len(weights) != k:
        raise ValueError(f"gather_updates: {k} updates but {len(client_ids)} client ids and {len(weights)} weights")
    meta = torch.tensor([[float(c), float(w)] for c, w in zip(client_ids, weights)], dtype=torch.float64,
                        device=updates.device).reshape(k, 2)
    meta = comm.all_gather(meta, tag="robust_meta")  # (m, 2)
    gathered = comm.all_gather(updates, tag="robust_updates", chunk_bytes=chunk_bytes)  # (m, n)
    ids = [int(c) for c in meta[:, 0].tolist()]
    if len(set(ids)) != len(ids):
        raise ValueError("gather_updates: a client id appears twice in the round's updates")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    _permute_rows_(gathered, order)
    w = meta[order, 1].clone()
    return gathered, [ids[i] for i in order], w


class RobustAggregator:
    """One round's robust aggregation on this rank: collect the clients' updates, gather the cohort's, apply
    the rule. The counterpart of :class:`hpcfed.fl.aggregate.Aggregator`'s ``acc`` for ``fl.aggregator`` ≠
    'fedavg'.

    Use per round: ``reset(capacity)``; ``add(cid, θ_c, θ_global, w_c)`` for each client that trained;
    ``reduce(comm)`` → the aggregate Δ (n,) float32, identical on every rank and independent of the number of
    ranks (rows are sorted by client id before the rule runs). Feed it to the server step as ``acc = Δ``,
    ``cnt = 1``.

    Args:
        name: a rule of :data:`AGGREGATORS`.
        params: ``fl.aggregator_params`` (validated here).
        numel: n.
        device: where updates are stored and the rule runs.
        chunk_bytes: temporary memory of a rule's column chunk.
        gather_chunk_bytes: receive buffer bound of the gather.

    Attributes:
        params: the validated parameters, defaults filled in.
        last_clients: the sorted client ids of the last ``reduce``.
        last_selected: for krum / multi_krum, the client ids the last ``reduce`` chose (else None).
        previous: (n,) float32, the last aggregate — centered clipping's v_0 with ``center='previous'``;
            part of :meth:`state_tensors` so that a resumed run continues exactly.

    Memory: the (capacity, n) float32 buffer of this rank's updates, then the (m, n) gathered cohort.
    """

    def __init__(self, name: str, params: Optional[Mapping[str, Any]], numel: int, device: torch.device, *,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, gather_chunk_bytes: int = GATHER_CHUNK_BYTES):
        self.name = name
        self.params = validate_params(name, params)
        self.numel = int(numel)
        self.device = torch.device(device)
        self.chunk_bytes, self.gather_chunk_bytes = chunk_bytes, gather_chunk_bytes
        self.previous = torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        self._buf = torch.empty(0, self.numel, dtype=torch.float32, device=self.device)
        self._ids: list[int] = []
        self._weights: list[float] = []
        self.last_clients: list[int] = []
        self.last_selected: Optional[list[int]] = None

    def reset(self, capacity: int = 0) -> None:
        """Start a round; ``capacity`` = the most clients this rank will add (the buffer grows if exceeded)."""
        self._ids, self._weights = [], []
        if self._buf.shape[0] < capacity:
            self._buf = torch.empty(capacity, self.numel, dtype=torch.float32, device=self.device)

    def add(self, cid: int, theta_client: torch.Tensor, theta_global: torch.Tensor, weight: float) -> None:
        """Store Δ_c = θ_c − θ_global ((n,) float32 each) with weight w_c ≥ 0."""
        k = len(self._ids)
        if k == self._buf.shape[0]:
            grown = torch.empty(max(1, 2 * k), self.numel, dtype=torch.float32, device=self.device)
            grown[:k].copy_(self._buf[:k])
            self._buf = grown
        torch.sub(theta_client.detach().reshape(-1), theta_global.reshape(-1), out=self._buf[k])
        self._ids.append(int(cid))
        self._weights.append(float(weight))

    def reduce(self, comm: Comm) -> torch.Tensor:
        """Gather the cohort's updates and apply the rule → (n,) float32 (zeros when no client succeeded).

        Raises:
            TooFewUpdates: too few updates for the rule this round (e.g. Krum after failures: m ≤ 2f + 2);
                raised on every rank alike, since every rank sees the same m.
        """
        k = len(self._ids)
        updates, ids, w = gather_updates(comm, self._buf[:k], self._ids, self._weights,
                                         chunk_bytes=self.gather_chunk_bytes)
        self.last_clients, self.last_selected = ids, None
        if not ids:
            return torch.zeros(self.numel, dtype=torch.float32, device=self.device)
        params = dict(self.params)
        center = params.pop("center", None)
        if self.name in ("krum", "multi_krum"):
            _check_cohort(self.name, params, len(ids))
            w_norm = _check_updates(updates, w) if self.name == "multi_krum" else None
            sel = 1 if self.name == "krum" else params.get("num_selected")
            out, chosen = _krum_mean(updates, w_norm, params["num_byzantine"], sel, self.chunk_bytes)
            self.last_selected = sorted(ids[i] for i in chosen.tolist())
        else:
            ref = self.previous if center == "previous" else None
            out = robust_aggregate(self.name, updates, w, reference=ref, chunk_bytes=self.chunk_bytes, **params)
        self.previous.copy_(out)
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What a resume needs: the previous aggregate (centered clipping's reference)."""
        return {"robust.previous": self.previous.detach().cpu().clone()}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if "robust.previous" in tensors:
            self.previous.copy_(tensors["robust.previous"])
