"""The statistical design of a study file: ``seeds`` (an axis that repeats every cell), ``seed_keys``,
``metrics`` (what the arms table summarises), ``claims`` (paired comparisons of two arms) and ``lr_sweep``
(a small per-arm sweep that picks a learning rate for the main cells).

An *arm* is a cell without its seed: the cells of one arm differ only in ``seed``. A study file refers to an
arm by its id (``method-lora_alpha-0.1``) or by a mapping of axis labels (``{method: lora, data.alpha: 0.1}``).
Pure parsing of the YAML values; :mod:`hpcfed.study.spec` calls it, :mod:`hpcfed.study.sweep` and
:mod:`hpcfed.study.summary` use the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hpcfed.study.errors import StudyError
from hpcfed.study.stats import DIRECTIONS

METRIC_COLUMNS = ("status", "final_test_acc", "best_test_acc", "trainable_params", "bytes_per_round",
                  "rounds_to_target", "wall_s", "local_test_acc", "error")
"""Table columns after ``cell`` and the axis columns."""
NUMERIC_METRICS = ("final_test_acc", "best_test_acc", "local_test_acc", "rounds_to_target", "bytes_per_round",
                   "trainable_params", "wall_s")
"""Table columns that ``metrics``, a claim's ``metric`` and a sweep's ``metric`` may name."""
ROUNDS_TO_ACC = re.compile(r"rounds_to_acc_(0\.[0-9]*[1-9]|1(\.0*)?)")
"""``rounds_to_acc_<x>``: the first evaluated round whose test accuracy is >= x (a fraction in (0, 1]), a
``rounds_to_target`` with its own target, so one study can ask "rounds to 0.75" of one model and "rounds to 0.88"
of another."""
DEFAULT_METRICS = ("final_test_acc", "best_test_acc")
SWEEP_GOALS = ("max", "min")
SEED_AXIS = "seed"
"""The table column (and id part) of the ``seeds`` axis."""


@dataclass(frozen=True)
class Claim:
    """A claimed paired difference: ``metric(a) - metric(b)`` is > 0 (``greater``) or < 0 (``less``).

    With ``a_minus`` / ``b_minus`` it is a difference of differences (an interaction contrast), paired by seed:
    ``(metric(a) - metric(a_minus)) - (metric(b) - metric(b_minus))``, an absent ``*_minus`` counting as 0.
    E.g. "pre-training closes the federated-vs-centralized gap": ``a`` = centralized, ``a_minus`` = federated
    (random init) against ``b`` = centralized, ``b_minus`` = federated (pre-trained), ``greater``.
    """

    name: str
    a: str
    """Arm id."""
    b: str
    """Arm id."""
    metric: str
    direction: str
    a_minus: Optional[str] = None
    """Arm id subtracted from ``a`` seed by seed (None: nothing)."""
    b_minus: Optional[str] = None
    """Arm id subtracted from ``b`` seed by seed (None: nothing)."""

    @property
    def terms(self) -> tuple[tuple[str, float], ...]:
        """``(arm, coefficient)`` pairs of the claimed quantity, e.g. ``((a, 1), (a_minus, -1), (b, -1))``."""
        out = [(self.a, 1.0)] + ([(self.a_minus, -1.0)] if self.a_minus else [])
        out += [(self.b, -1.0)] + ([(self.b_minus, 1.0)] if self.b_minus else [])
        return tuple(out)

    def side_text(self, side: str) -> str:
        """``a`` or ``a − a_minus`` (``side`` is ``"a"`` or ``"b"``), for tables."""
        arm, minus = (self.a, self.a_minus) if side == "a" else (self.b, self.b_minus)
        return arm if not minus else f"{arm} − {minus}"


@dataclass(frozen=True)
class LrSweep:
    """A sweep of one config key per arm; the best mean ``metric`` over ``seeds`` picks the value."""

    key: str
    """Config key swept (default ``fl.local.lr``)."""
    values: tuple
    metric: str
    goal: str
    """``max`` or ``min`` of the metric."""
    seeds: Optional[tuple[int, ...]]
    """Seeds of the sweep cells (None: the config's own ``seed``, when the study has no ``seeds``)."""
    rounds: Optional[int]
    """``fl.rounds`` of the sweep cells (None: as the main cells)."""
    arms: tuple[str, ...]
    """Arm ids swept, each independently."""


def _seed_list(raw: Any, where: str) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise StudyError(f"{where}={raw!r} must be a count >= 1 or a list of integer seeds")
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{where} must be a count >= 1 or a non-empty list of integer seeds")
    for s in raw:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise StudyError(f"{where}: {s!r} is not an integer seed >= 0")
    if len(set(raw)) < len(raw):
        raise StudyError(f"{where}: a seed is listed twice ({raw!r})")
    return list(raw)


def parse_seeds(raw: Any, where: str) -> Optional[list[int]]:
    """``seeds``: a list of distinct integers >= 0, or a count ``n`` (seeds ``0..n-1``), or None (no axis).

    Raises:
        StudyError: anything else (the message names ``seeds``).
    """
    return None if raw is None else _seed_list(raw, f"{where}: seeds")


def parse_seed_keys(raw: Any, where: str) -> tuple[str, ...]:
    """``seed_keys``: the config keys a cell's seed sets (default ``[seed]``; add ``data.seed`` to also vary
    the partition between seeds).

    Raises:
        StudyError: not a non-empty list of dotted key strings.
    """
    if raw is None:
        return ("seed",)
    if not isinstance(raw, list) or not raw or not all(isinstance(k, str) and k for k in raw):
        raise StudyError(f"{where}: seed_keys must be a non-empty list of config keys, e.g. [seed, data.seed]")
    return tuple(raw)


def metric_name(raw: Any, where: str) -> str:
    """A metric column name (``final test_acc`` is read as ``final_test_acc``): one of :data:`NUMERIC_METRICS`,
    ``final_<key>`` — the last value of any metric ``<key>`` the runs write to ``metrics.jsonl`` (e.g.
    ``final_dat_local_acc`` of FedDAT) — or ``rounds_to_acc_<x>`` (:data:`ROUNDS_TO_ACC`, e.g.
    ``rounds_to_acc_0.88``).

    Raises:
        StudyError: neither.
    """
    name = "_".join(str(raw).split())
    if name.startswith("rounds_to_acc_"):
        if not ROUNDS_TO_ACC.fullmatch(name):
            raise StudyError(f"{where}={raw!r}: the target in rounds_to_acc_<x> must be an accuracy in (0, 1] "
                             "written as a decimal fraction, e.g. rounds_to_acc_0.88")
    elif name not in NUMERIC_METRICS and not re.fullmatch(r"final_[A-Za-z0-9_]+", name):
        raise StudyError(f"{where}={raw!r} is not a metric; choose one of: {', '.join(NUMERIC_METRICS)}, "
                         "final_<any key of metrics.jsonl>, or rounds_to_acc_<x>")
    return name


def extra_metric_columns(metrics: Sequence[str]) -> list[str]:
    """The ``final_<key>`` and ``rounds_to_acc_<x>`` metrics beyond :data:`METRIC_COLUMNS` (table columns of
    their own)."""
    return [m for m in metrics if m not in METRIC_COLUMNS]


def rounds_to_acc_target(name: str) -> Optional[float]:
    """The target accuracy of a ``rounds_to_acc_<x>`` metric name, else None."""
    m = ROUNDS_TO_ACC.fullmatch(name)
    return float(m.group(1)) if m else None


def parse_metrics(raw: Any, where: str) -> tuple[str, ...]:
    """``metrics``: the columns summarised per arm (default :data:`DEFAULT_METRICS`).

    Raises:
        StudyError: not a non-empty list of metric names.
    """
    if raw is None:
        return DEFAULT_METRICS
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{where}: metrics must be a non-empty list of: {', '.join(NUMERIC_METRICS)}")
    return tuple(dict.fromkeys(metric_name(m, f"{where}: metrics[{i}]") for i, m in enumerate(raw)))


def match_arms(selector: Any, arms: dict[str, dict], where: str) -> list[str]:
    """The arm ids ``selector`` names: an arm id, or a mapping ``axis: label`` that every matching arm has.

    Raises:
        StudyError: no arm matches, or the selector is neither a string nor a mapping.
    """
    if isinstance(selector, str):
        if selector in arms:
            return [selector]
        raise StudyError(f"{where}: no arm {selector!r}; arms: {', '.join(arms)}")
    if not isinstance(selector, dict) or not selector:
        raise StudyError(f"{where}: must be an arm id or a mapping of axis labels (e.g. {{method: lora}})")
    out = [a for a, labels in arms.items()
           if all(str(k) in labels and labels[str(k)] == v for k, v in selector.items())]
    if not out:
        raise StudyError(f"{where}: {selector!r} matches no arm; arms: {', '.join(arms)}")
    return out


def _mapping(raw: Any, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: must be a mapping with keys {', '.join(keys)}")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        raise StudyError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(keys)}")
    return raw


def parse_claims(raw: Any, arms: dict[str, dict], where: str) -> list[Claim]:
    """``claims``: a list of ``{name, a, b, a_minus, b_minus, metric (default final_test_acc), direction
    (greater | less)}``; ``a``, ``b`` (and the optional ``a_minus`` / ``b_minus`` of a difference of
    differences, :class:`Claim`) each name exactly one arm.

    Raises:
        StudyError: a wrong shape, an unknown or ambiguous arm, an arm used twice in one claim, a bad metric or
            direction, or two claims with one name (the message names ``claims[i].<key>``).
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise StudyError(f"{where}: claims must be a list of {{name, a, b, metric, direction}}")
    out: list[Claim] = []
    for i, c in enumerate(raw):
        here = f"{where}: claims[{i}]"
        c = _mapping(c, ("name", "a", "b", "a_minus", "b_minus", "metric", "direction"), here)
        ab: dict[str, Optional[str]] = {}
        for side in ("a", "b", "a_minus", "b_minus"):
            if side not in c or c[side] is None:
                if side in ("a", "b"):
                    raise StudyError(f"{here}.{side}: missing (an arm id or {{axis: label, ...}})")
                ab[side] = None
                continue
            found = match_arms(c[side], arms, f"{here}.{side}")
            if len(found) > 1:
                raise StudyError(f"{here}.{side}: {c[side]!r} matches {len(found)} arms ({', '.join(found)}); "
                                 f"add a label to pick one")
            ab[side] = found[0]
        if ab["a"] == ab["b"]:
            raise StudyError(f"{here}: a and b are the same arm ({ab['a']})")
        used = [v for v in ab.values() if v]
        if len(set(used)) < len(used):
            raise StudyError(f"{here}: an arm appears twice among a, a_minus, b, b_minus ({', '.join(used)})")
        direction = c.get("direction", "greater")
        if direction not in DIRECTIONS:
            raise StudyError(f"{here}.direction={direction!r} is not valid; choose one of: {', '.join(DIRECTIONS)}")
        name = str(c.get("name") or f"{ab['a']} vs {ab['b']}")
        if any(o.name == name for o in out):
            raise StudyError(f"{here}.name: {name!r} is used by another claim")
        out.append(Claim(name, ab["a"], ab["b"], metric_name(c.get("metric", "final_test_acc"), f"{here}.metric"),
                         direction, ab["a_minus"], ab["b_minus"]))
    return out


def parse_sweeps(raw: Any, arms: dict[str, dict], seeds: Optional[list[int]], where: str) -> list[LrSweep]:
    """``lr_sweep``: one mapping or a list of them, ``{key (default fl.local.lr), values, metric (default
    final_test_acc), goal (max | min), seeds (default: the study's first seed), rounds, arms (default all)}``.

    Raises:
        StudyError: a wrong shape or value, or an arm swept twice (the message names ``lr_sweep[i].<key>``).
    """
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    out: list[LrSweep] = []
    taken: dict[str, int] = {}
    for i, sw in enumerate(items):
        here = f"{where}: lr_sweep" + (f"[{i}]" if isinstance(raw, list) else "")
        sw = _mapping(sw, ("key", "values", "metric", "goal", "seeds", "rounds", "arms"), here)
        key = sw.get("key", "fl.local.lr")
        if not isinstance(key, str) or not key:
            raise StudyError(f"{here}.key must be a config key such as fl.local.lr")
        values = sw.get("values")
        if not isinstance(values, list) or len(values) < 2 or len(set(map(repr, values))) < len(values):
            raise StudyError(f"{here}.values must be a list of at least 2 distinct values")
        goal = sw.get("goal", "max")
        if goal not in SWEEP_GOALS:
            raise StudyError(f"{here}.goal={goal!r} is not valid; choose one of: {', '.join(SWEEP_GOALS)}")
        rounds = sw.get("rounds")
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise StudyError(f"{here}.rounds={rounds!r} must be an integer >= 1")
        sw_seeds = sw.get("seeds")
        sw_seeds = (_seed_list(sw_seeds, f"{here}.seeds") if sw_seeds is not None
                    else None if seeds is None else seeds[:1])
        selected = list(arms) if sw.get("arms") is None else list(dict.fromkeys(
            a for j, s in enumerate(_as_list(sw["arms"], f"{here}.arms"))
            for a in match_arms(s, arms, f"{here}.arms[{j}]")))
        for a in selected:
            if a in taken:
                raise StudyError(f"{here}.arms: arm {a} is already swept by lr_sweep[{taken[a]}]")
            taken[a] = i
        out.append(LrSweep(key, tuple(values), metric_name(sw.get("metric", "final_test_acc"), f"{here}.metric"),
                           goal, None if sw_seeds is None else tuple(sw_seeds), rounds, tuple(selected)))
    return out


def _as_list(raw: Any, where: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{where} must be a non-empty list of arm ids or {{axis: label}} mappings")
    return raw
