"""Client-level differential privacy: DP-FedAvg with fixed or adaptive clipping, and its privacy accounting.

Papers:
    McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018
    (DP-FedAvg: per-client clipping, Gaussian noise on the sum, the fixed-denominator estimator).
    Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021
    (the clip norm follows a quantile of the update norms, estimated privately; geometric update).

Round r, clip norm C_r, cohort S_r of expected size m = ``fl.cohort_size``, noise multiplier z, n flat elements:

    Δ_c = θ_c − θ_global,   s_c = min(1, C_r / ‖Δ_c‖₂)         clip scale: folded into masked_accumulate's weight
    Σ   = Σ_{c∈S_r} s_c · Δ_c                                   (the round's ONE all-reduce, as without DP)
    Σ̃   = Σ + N(0, (z_Δ · C_r)² I_n)                            once per round, after the all-reduce
    Δ̄   = Σ̃ / m                                                 fixed denominator (McMahan et al., §2)
    θ_global ← server_opt(θ_global, Δ̄)

The noise comes from the stream [seed, DP_NOISE, round] (:mod:`hpcfed.rng`), drawn on the CPU in fp32 and moved
to the device: every rank adds the same noise to the same reduced sum, so the result does not depend on the
number of ranks. Weights are uniform (w_c = 1): ``fl.weighting`` is ignored under DP.

Adaptive clipping (``fl.dp.adaptive_clip``; Andrew et al., Alg. 1 with the geometric update, as TF Privacy's
``QuantileEstimatorQuery``, which TFF's ``DifferentiallyPrivateFactory.gaussian_adaptive`` uses):

    b̄       = clamp( (Σ_{c∈S_r} (1[‖Δ_c‖ ≤ C_r] − ½) + N(0, σ_b²)) / m + ½, 0, 1 )
    C_{r+1} = C_r · exp(−η_C · (b̄ − γ))
    z_Δ     = (z⁻² − (2σ_b)⁻²)^(−1/2)                               (Andrew et al., Theorem 1)

The count bits are centred (−½) so one client moves the noised count by at most ½, which is what Theorem 1's 2σ_b
assumes; the pair (update with z_Δ, count with σ_b) is then exactly as private as one Gaussian mechanism with
multiplier z, which is what the accountant is told. Without adaptive clipping z_Δ = z. The count noise is drawn
from the same DP stream, after the n update draws. The default σ_b = m/20 is Andrew et al.'s and TFF's.

Accounting (Google's ``dp-accounting``; the unit of privacy is a client, over ``fl.rounds`` rounds):

    fl.sampling=poisson: SelfComposed(PoissonSampled(q = m/N, Gaussian(z)), rounds),   add-or-remove-one,
                         RdpAccountant or PLDAccountant;
    fl.sampling=fixed:   SelfComposed(SampledWithoutReplacement(N, m, Gaussian(z/2)), rounds),   replace-one,
                         RdpAccountant only (dp-accounting's PLD has no sampling without replacement).

dp-accounting's noise multiplier is noise std / L2 sensitivity. Under add-or-remove-one the clipped sum moves by at
most C (so the multiplier is z); under replace-one by at most 2C (so z/2). This is stricter than treating a
fixed-size cohort as if it were Poisson-sampled, which pfl-research and the TFF tutorials do.

Reference code: TFF ``tensorflow_federated/python/aggregators/differential_privacy.py``
(``adaptive_clip_noise_params``, ``gaussian_fixed`` / ``gaussian_adaptive``), TF Privacy
``quantile_estimator_query.py``, pfl-research ``pfl/privacy/`` (``GaussianMechanism``, ``AdaptiveClippingGaussian
Mechanism``, accountants over dp-accounting), Flower ``flwr/server/strategy/dp_fixed_clipping.py`` /
``dp_adaptive_clipping.py``.

Deviations: the clip scale is applied to the update in the fused accumulate (not to a per-client copy);
``dp_clipped_fraction`` in metrics.jsonl is the exact (un-noised) share, a simulation diagnostic that ε does not
cover (as are train_loss and the other per-round statistics); failed clients contribute nothing and are not
retried.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from hpcfed.config import ConfigError, DPConfig
from hpcfed.rng import TrainStream, generator

if TYPE_CHECKING:  # pragma: no cover
    import dp_accounting

log = logging.getLogger("hpcfed.fl")


# -- accounting -------------------------------------------------------------------------------------------
class _DroppedRenyiOrders(logging.Filter):
    """Drops dp-accounting's "_compute_log_a_frac failed to converge ... Excluding this order" warnings: at small z
    its RDP accountant logs one for every low Rényi order (α ≈ 1.1-1.6) whose series does not converge and leaves
    that order out (ε stays a valid, slightly looser bound). A calibration or a run at z < 1.4 would print
    hundreds of them. Every other ``absl`` record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


_DROPPED_RENYI_ORDERS = _DroppedRenyiOrders()


def _without_dropped_order_warnings(fn):
    """Run ``fn`` with :class:`_DroppedRenyiOrders` on the ``absl`` logger (added once; thread-safe, unlike
    toggling the logger's level)."""
    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        absl_log = logging.getLogger("absl")
        if _DROPPED_RENYI_ORDERS not in absl_log.filters:
            absl_log.addFilter(_DROPPED_RENYI_ORDERS)
        return fn(*args, **kwargs)
    return quiet


def check_supported(accountant: str, sampling: str) -> None:
    """Raise :class:`ConfigError` for an (accountant, sampling) pair dp-accounting cannot account."""
    if accountant not in ("rdp", "pld"):
        raise ConfigError(f"fl.dp.accountant={accountant!r} is not valid; choose one of: rdp, pld")
    if sampling not in ("fixed", "poisson"):
        raise ConfigError(f"fl.sampling={sampling!r} is not valid; choose one of: fixed, poisson")
    if accountant == "pld" and sampling == "fixed":
        raise ConfigError("fl.dp.accountant=pld does not support fl.sampling=fixed (dp-accounting's PLD has no "
                          "sampling without replacement); use fl.sampling=poisson or fl.dp.accountant=rdp")


def make_accountant(accountant: str, sampling: str) -> "dp_accounting.PrivacyAccountant":
    """A fresh dp-accounting accountant: ``RdpAccountant`` or ``PLDAccountant``, with the neighbouring relation the
    sampling's event needs (replace-one for ``fixed``, add-or-remove-one for ``poisson``)."""
    import dp_accounting

    check_supported(accountant, sampling)
    rel = (dp_accounting.NeighboringRelation.REPLACE_ONE if sampling == "fixed"
           else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    if accountant == "pld":
        return dp_accounting.pld.PLDAccountant(rel)
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=rel)


def round_event(sampling: str, num_clients: int, cohort_size: int,
                noise_multiplier: float) -> "dp_accounting.DpEvent":
    """The DpEvent of one round: the sampled Gaussian mechanism of the module docstring.

    Args:
        sampling: 'poisson' (q = cohort_size / num_clients) or 'fixed' (cohort_size of num_clients without
            replacement; the Gaussian's multiplier is z/2, the replace-one sensitivity of the sum being 2C).
        noise_multiplier: z, the noise std on the sum over C.
    """
    import dp_accounting

    if sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(cohort_size / num_clients,
                                                   dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SampledWithoutReplacementDpEvent(num_clients, cohort_size,
                                                          dp_accounting.GaussianDpEvent(noise_multiplier / 2))


@_without_dropped_order_warnings
def epsilon(accountant: str, sampling: str, num_clients: int, cohort_size: int, noise_multiplier: float,
            rounds: int, delta: float) -> float:
    """ε after ``rounds`` rounds at ``delta`` (inf when z = 0; 0 for no rounds)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = make_accountant(accountant, sampling)
    acc.compose(round_event(sampling, num_clients, cohort_size, noise_multiplier), rounds)
    return float(acc.get_epsilon(delta))


@_without_dropped_order_warnings
def calibrate_noise_multiplier(target_epsilon: float, *, accountant: str, sampling: str, num_clients: int,
                               cohort_size: int, rounds: int, delta: float, tol: float = 1e-4) -> float:
    """The smallest z (within ``tol``) whose ε after ``rounds`` rounds at ``delta`` is at most ``target_epsilon``:
    ``dp_accounting.calibrate_dp_mechanism`` (Brent's method, then a check that the value found is on the
    private side). RDP brackets from [0.01, 1] upward; PLD, whose cost grows steeply as z shrinks, searches
    [z_RDP/2, 1.5·z_RDP] around the RDP solution (RDP's ε is the looser bound, so z_PLD ≤ z_RDP in practice).

    Raises:
        ConfigError: dp-accounting finds no such z (one line).
    """
    import dp_accounting

    def event(z: float):
        return dp_accounting.SelfComposedDpEvent(round_event(sampling, num_clients, cohort_size, z), rounds)

    bracket = dp_accounting.LowerEndpointAndGuess(0.01, 1.0)
    if accountant == "pld":
        z_rdp = calibrate_noise_multiplier(target_epsilon, accountant="rdp", sampling=sampling,
                                           num_clients=num_clients, cohort_size=cohort_size, rounds=rounds,
                                           delta=delta, tol=1e-3)
        bracket = dp_accounting.ExplicitBracketInterval(z_rdp / 2, 1.5 * z_rdp)
    try:
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(accountant, sampling), event, target_epsilon, delta,
            bracket_interval=bracket, tol=tol))
    except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError:
        raise ConfigError(f"fl.dp.target_epsilon={target_epsilon}: no noise multiplier found (ε after {rounds} "
                          f"rounds at δ={delta:g} is below the target already at the smallest z tried, 0.01); set "
                          "fl.dp.noise_multiplier directly") from None
    except (ValueError, ArithmeticError) as e:
        raise ConfigError(f"fl.dp.target_epsilon={target_epsilon}: no noise multiplier found "
                          f"({str(e).splitlines()[0]})") from None


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), the update's share of a total multiplier z when the unclipped count carries
    noise σ_b (Andrew et al., NeurIPS 2021, Theorem 1; TFF's ``adaptive_clip_noise_params``); z_Δ = 0 when z = 0.

    Raises:
        ConfigError: z ≥ 2σ_b (the count noise alone would already cost more than z allows).
    """
    z, s = noise_multiplier, count_stddev
    if z == 0:
        return 0.0
    if z >= 2 * s:
        raise ConfigError(f"fl.dp.clip_count_stddev={s:g} is too small for noise multiplier z={z:g}: adaptive "
                          f"clipping needs z < 2·clip_count_stddev (raise fl.dp.clip_count_stddev or fl.cohort_size)")
    return (z ** -2 - (2 * s) ** -2) ** -0.5


# -- the engine's part ------------------------------------------------------------------------------------
class ClientDP:
    """Per-run DP state of the round loop (identical on every rank): the clip norm, the noise multipliers and a
    running accountant. The loop calls :meth:`clip` per client and :meth:`privatize` once per round after the
    all-reduce.

    Args:
        cfg: the ``fl.dp`` section (enabled).
        seed: the run's training seed (the noise stream is [seed, DP_NOISE, round]).
        num_clients: N, the clients of the data set.
        cohort_size: m, the (expected) cohort size and the fixed denominator.
        rounds: the run's rounds (for ``target_epsilon``).
        sampling: ``fl.sampling``.
        main: whether this process logs.

    Raises:
        ConfigError: an unsupported accountant / sampling pair, no z for ``target_epsilon``, or z ≥ 2σ_b.
    """

    def __init__(self, cfg: DPConfig, *, seed: int, num_clients: int, cohort_size: int, rounds: int,
                 sampling: str, main: bool = True):
        check_supported(cfg.accountant, sampling)
        self.cfg, self.seed, self.sampling = cfg, seed, sampling
        self.num_clients, self.cohort_size = num_clients, cohort_size
        self.delta = cfg.delta if cfg.delta is not None else 1.0 / num_clients
        self.clip_norm = float(cfg.clip_norm)
        if cfg.noise_multiplier is not None:
            self.noise_multiplier = float(cfg.noise_multiplier)
        else:
            self.noise_multiplier = calibrate_noise_multiplier(
                cfg.target_epsilon, accountant=cfg.accountant, sampling=sampling, num_clients=num_clients,
                cohort_size=cohort_size, rounds=rounds, delta=self.delta)
        z = self.noise_multiplier
        if cfg.adaptive_clip:
            self.count_stddev = cfg.clip_count_stddev if cfg.clip_count_stddev is not None else (
                cohort_size / 20 if z > 0 else 0.0)
            self.update_noise_multiplier = update_noise_multiplier(z, self.count_stddev)
        else:
            self.count_stddev, self.update_noise_multiplier = 0.0, z
        self._accountant = None
        self._composed = 0
        if main:
            how = (f"solved for fl.dp.target_epsilon={cfg.target_epsilon} after {rounds} rounds"
                   if cfg.noise_multiplier is None else "fl.dp.noise_multiplier")
            log.info("fl.dp: client-level DP, noise multiplier z=%.6g (%s), δ=%.3g, %s sampling (N=%d, m=%d), "
                     "%s accountant, clip C=%g%s; aggregation weights are uniform (fl.weighting is ignored)",
                     z, how, self.delta, sampling, num_clients, cohort_size, cfg.accountant, self.clip_norm,
                     f", adaptive (γ={cfg.target_quantile}, η={cfg.clip_lr}, σ_b={self.count_stddev:g}, "
                     f"update z_Δ={self.update_noise_multiplier:.6g})" if cfg.adaptive_clip else "")

    # per client
    def clip(self, norm: float) -> tuple[float, int]:
        """(s_c, b_c) for a client update of L2 norm ``norm``: the scale min(1, C/‖Δ_c‖) and 1 when ‖Δ_c‖ ≤ C."""
        c = self.clip_norm
        return (1.0, 1) if norm <= c else (c / norm, 0)

    # per round, after the all-reduce
    def privatize(self, acc: torch.Tensor, cnt: torch.Tensor, round_idx: int, clients: float,
                  unclipped: float) -> dict:
        """Add the round's noise to the reduced sum ``acc`` (n,) in place and set ``cnt`` (n,) to the fixed
        denominator m; with adaptive clipping, update C from the noised unclipped count. Returns the round's
        ``dp_*`` metrics (``dp_clip_norm`` is the C this round clipped with).

        Args:
            clients: the clients whose updates were summed (over all ranks).
            unclipped: how many of them had ‖Δ_c‖ ≤ C.
        """
        c, zu = self.clip_norm, self.update_noise_multiplier
        rng = generator(self.seed, TrainStream.DP_NOISE, round_idx)
        if zu > 0:
            noise = torch.from_numpy(rng.standard_normal(acc.numel(), dtype=np.float32))  # (n,) fp32, CPU
            acc.add_(noise.to(acc.device), alpha=zu * c)
        cnt.fill_(float(self.cohort_size))
        m = {"dp_epsilon": self.epsilon(round_idx), "dp_delta": self.delta, "dp_clip_norm": c,
             "dp_noise_multiplier": self.noise_multiplier,
             "dp_clipped_fraction": (clients - unclipped) / clients if clients > 0 else 0.0}
        if self.cfg.adaptive_clip:
            b = (unclipped - clients / 2 + self.count_stddev * float(rng.standard_normal())) / self.cohort_size + 0.5
            b = min(1.0, max(0.0, b))
            self.clip_norm = c * math.exp(-self.cfg.clip_lr * (b - self.cfg.target_quantile))
            m.update(dp_noise_multiplier_update=zu, dp_unclipped_noised=b)
        return m

    @_without_dropped_order_warnings
    def epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` rounds at δ. RDP: one round's RDP curve is computed once and scaled by ``rounds``
        (what ``RdpAccountant.compose(event, rounds)`` does), then converted by dp-accounting's
        ``compute_epsilon``; PLD: a running accountant that composes only the rounds not yet in it."""
        if rounds <= 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        event = round_event(self.sampling, self.num_clients, self.cohort_size, self.noise_multiplier)
        if self.cfg.accountant == "rdp":
            from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

            if self._accountant is None:
                self._accountant = make_accountant("rdp", self.sampling).compose(event)
            one = self._accountant
            if hasattr(one, "_rdp") and hasattr(one, "_orders"):  # RdpAccountant's curve over its orders
                return float(compute_epsilon(one._orders, rounds * np.asarray(one._rdp), self.delta)[0])
            return epsilon("rdp", self.sampling, self.num_clients, self.cohort_size, self.noise_multiplier,
                           rounds, self.delta)
        if self._accountant is None or rounds < self._composed:
            self._accountant = make_accountant(self.cfg.accountant, self.sampling)
            self._composed = 0
        if rounds > self._composed:
            self._accountant.compose(event, rounds - self._composed)
            self._composed = rounds
        return float(self._accountant.get_epsilon(self.delta))

    # checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The clip norm (server state under adaptive clipping) and the noise multiplier z the rounds so far
        were noised with, float64."""
        return {"clip_norm": torch.tensor(self.clip_norm, dtype=torch.float64),
                "noise_multiplier": torch.tensor(self.noise_multiplier, dtype=torch.float64)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` saved (absent: keep the configured C).

        Raises:
            ValueError: the checkpoint's rounds were noised with another z than this run uses (a run resumed
                with a new ``fl.rounds`` under ``fl.dp.target_epsilon``, which solves z for the round count):
                the accountant, which composes one z, would misreport ε.
        """
        if "noise_multiplier" in tensors:
            z = float(tensors["noise_multiplier"])
            if abs(z - self.noise_multiplier) > 1e-9 * max(1.0, abs(z)):
                raise ValueError(
                    f"fl.dp: the checkpoint's rounds were noised with z={z:.6g} but this run uses "
                    f"z={self.noise_multiplier:.6g} (fl.dp.target_epsilon solves z for fl.rounds, so a new "
                    "fl.rounds changes it and ε would be misreported); resume with the fl.rounds of the "
                    "checkpointed run, or use a fixed fl.dp.noise_multiplier, whose ε simply grows with the rounds")
        if "clip_norm" in tensors:
            self.clip_norm = float(tensors["clip_norm"])


def make_client_dp(cfg, num_clients: int, main: bool) -> Optional[ClientDP]:
    """The run's :class:`ClientDP` from the whole config (None without ``fl.dp.enabled``)."""
    fl = cfg.fl
    if not fl.dp.enabled:
        return None
    return ClientDP(fl.dp, seed=cfg.seed, num_clients=num_clients, cohort_size=fl.cohort_size, rounds=fl.rounds,
                    sampling=fl.sampling, main=main)
