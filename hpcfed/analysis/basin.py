"""Loss along the straight line between two models, and its barrier (linear mode connectivity).

For parameters θ_a, θ_b and a loss L, evaluate L(θ(t)) with θ(t) = (1 − t) θ_a + t θ_b at k evenly spaced
t ∈ [0, 1]. The *barrier* is the largest excess over the straight line between the end points,

    barrier = max_t [ L(θ(t)) − ((1 − t) L(θ_a) + t L(θ_b)) ]      (≥ 0 when the end points are sampled)

(Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020, define the same
quantity on the error; Chen et al., "On the Importance and Applicability of Pre-Training for Federated
Learning", ICLR 2023, use it to show that FL runs started from a pre-trained model land in one basin).
A convex loss has barrier 0; two minima separated by a ridge have a positive one.

Command line (two FL runs with the same model and PEFT method, e.g. different seeds or data splits)::

    python -m hpcfed.analysis.basin run_a=runs/a run_b=runs/b [k=11] [plot=basin.png] [out=basin.json]
        [max_test=N] [dotted.key=value ...]

It rebuilds the model from ``run_a/config.yaml`` through the run's method (its own ``build``; dotted words
override that config, e.g. ``data.shard_dir=...`` or ``dist.device=cpu``), loads both runs'
``final/peft.safetensors`` into the flat buffer, evaluates each point with the method's own evaluation on the
prepared test split (:mod:`hpcfed.restore`), and prints one JSON object: ``ts``, ``losses``, ``accuracies``,
``barrier`` (loss), ``error_barrier`` (1 − accuracy), and the two runs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hpcfed.atomic import atomic_path, atomic_write_text

Params = Union[torch.Tensor, Mapping[str, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------
# The math
# ----------------------------------------------------------------------------------------------------------

def _check_pair(theta_a: Params, theta_b: Params) -> None:
    if isinstance(theta_a, torch.Tensor) != isinstance(theta_b, torch.Tensor):
        raise TypeError("theta_a and theta_b must both be tensors or both be state dicts")
    if isinstance(theta_a, torch.Tensor):
        if theta_a.shape != theta_b.shape:
            raise ValueError(f"theta_a has shape {tuple(theta_a.shape)}, theta_b {tuple(theta_b.shape)}")
        return
    if set(theta_a) != set(theta_b):
        diff = sorted(set(theta_a) ^ set(theta_b))
        raise ValueError(f"state dicts have different keys, e.g. {diff[:3]}")
    for k, va in theta_a.items():
        vb = theta_b[k]
        if va.shape != vb.shape:
            raise ValueError(f"{k}: shape {tuple(va.shape)} vs {tuple(vb.shape)}")
        if not va.is_floating_point() and not torch.equal(va, vb):
            raise ValueError(f"{k}: non-floating tensors differ and cannot be interpolated")


def lerp_params(theta_a: Params, theta_b: Params, t: float) -> Params:
    """θ(t) = (1 − t) θ_a + t θ_b, computed so that t = 0 gives θ_a and t = 1 gives θ_b exactly.

    Tensors: a new tensor. State dicts: a new dict; floating tensors interpolated, others (step counters,
    integer buffers) copied from ``theta_a``.
    """
    if isinstance(theta_a, torch.Tensor):
        return theta_a * (1.0 - t) + theta_b * t
    return {k: (v * (1.0 - t) + theta_b[k] * t) if v.is_floating_point() else v.clone()
            for k, v in theta_a.items()}


def interpolate(set_params: Callable[[Params], None], theta_a: Params, theta_b: Params,
                evaluate: Callable[[], Any], k: int = 11) -> tuple[np.ndarray, list]:
    """Evaluate at ``k`` evenly spaced points of the segment from ``theta_a`` to ``theta_b``.

    Args:
        set_params: puts a parameter vector (or state dict) into the model.
        theta_a, theta_b: the end points: tensors of one shape (e.g. flat buffers) or state dicts with the
            same keys and shapes.
        evaluate: evaluates the model as it currently is; any return value.
        k: number of points (>= 2), t = 0, 1/(k−1), ..., 1.

    Returns:
        ts float64 (k,) and the list of ``evaluate()`` results. The model is left at θ_b.

    Raises:
        ValueError: k < 2, or the end points do not match.
    """
    if k < 2:
        raise ValueError(f"k={k} must be >= 2")
    _check_pair(theta_a, theta_b)
    ts = np.linspace(0.0, 1.0, k)
    results = []
    for t in ts:
        set_params(lerp_params(theta_a, theta_b, float(t)))
        results.append(evaluate())
    return ts, results


def interpolate_losses(set_params: Callable[[Params], None], theta_a: Params, theta_b: Params,
                       evaluate: Callable[[], float], k: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """:func:`interpolate` for a scalar ``evaluate`` (the loss): returns ts and losses, both float64 (k,)."""
    ts, res = interpolate(set_params, theta_a, theta_b, evaluate, k)
    return ts, np.asarray([float(r) for r in res], dtype=np.float64)


def barrier_height(ts: Sequence[float], losses: Sequence[float]) -> float:
    """max_t [L(t) − linear interpolation of L between the first and the last point].

    ``ts`` need not be evenly spaced but must be increasing; the line runs through (ts[0], losses[0]) and
    (ts[-1], losses[-1]) (θ_a and θ_b when ts spans [0, 1]). 0 for a convex (or linear) L along the segment,
    positive for a bump. NaN when a loss is not finite.

    Raises:
        ValueError: fewer than 2 points, lengths differ, or ts is not increasing.
    """
    t = np.asarray(ts, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    if t.ndim != 1 or t.shape != loss.shape or len(t) < 2:
        raise ValueError(f"need two 1-d sequences of equal length >= 2; got {t.shape} and {loss.shape}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("ts must be strictly increasing")
    if not np.all(np.isfinite(loss)):
        return math.nan
    w = (t - t[0]) / (t[-1] - t[0])  # (k,) position along the segment in [0, 1]
    line = (1.0 - w) * loss[0] + w * loss[-1]
    return float(np.max(loss - line))


# ----------------------------------------------------------------------------------------------------------
# Two FL runs
# ----------------------------------------------------------------------------------------------------------

class BasinError(ValueError):
    """Runs that cannot be compared (missing files, different models or PEFT layouts)."""


def _section_diff(a: Any, b: Any) -> list[str]:
    import dataclasses

    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [f"{k}={da[k]!r} vs {db[k]!r}" for k in da if da[k] != db.get(k)]


def check_comparable(cfg_a, cfg_b) -> None:
    """Both runs must share everything that the PEFT buffer does not hold: the model section and the PEFT
    method; and, when the frozen backbone is randomly initialised, the seed that drew it.

    Raises:
        BasinError: naming the differing keys.
    """
    diff = _section_diff(cfg_a.peft, cfg_b.peft)
    if diff:
        raise BasinError(f"runs differ in the PEFT section ({'; '.join(diff[:3])}): their buffers do not match")
    diff = _section_diff(cfg_a.model, cfg_b.model)
    if diff and cfg_a.peft.method != "full":
        raise BasinError(f"runs differ in the model section ({'; '.join(diff[:3])}): their frozen weights differ, "
                         "so interpolating the PEFT parameters alone would not interpolate the models")
    if not cfg_a.model.pretrained and cfg_a.seed != cfg_b.seed and cfg_a.peft.method != "full":
        raise BasinError(f"runs use randomly initialised frozen backbones drawn with seed={cfg_a.seed} and "
                         f"seed={cfg_b.seed}: their frozen weights differ (use peft.method=full runs, or equal seeds)")


def _load_run_config(run: Path, overrides: Sequence[str] = ()):
    from hpcfed.config import load_config

    path = run / "config.yaml"
    if not path.is_file():
        raise BasinError(f"{run}: no config.yaml (not a run directory?)")
    return load_config([f"config={path}", *overrides])


def compare_runs(run_a: Path, run_b: Path, *, k: int = 11, overrides: Sequence[str] = (),
                 max_test: Optional[int] = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Loss and accuracy on run_a's test split along the segment between two runs' final PEFT parameters.

    run_a is rebuilt by :func:`hpcfed.restore.restore_run` (its method's own ``build``; ``dist.device`` as
    :func:`hpcfed.dist.resolve_device`), and each point is evaluated by the method's own evaluation
    (:meth:`hpcfed.restore.RestoredRun.evaluate`: ``test_loss`` / ``test_acc``).

    Args:
        run_a, run_b: run folders (``config.yaml``, ``final/peft.safetensors``).
        k: points on the segment (>= 2).
        overrides: ``key=value`` words applied to both runs' configs.
        max_test: evaluate on the first ``max_test`` examples of the global test split only (methods that
            evaluate on splits of their own, e.g. FedYolo's tasks, use those in full).
        log: called with one line per point.

    Returns:
        dict with ``run_a``, ``run_b``, ``k``, ``test_examples``, ``ts``, ``losses``, ``accuracies``,
        ``barrier`` (loss), ``error_barrier`` (on 1 − accuracy), ``distance`` (‖θ_b − θ_a‖₂).

    Raises:
        BasinError: runs that cannot be compared, a missing weights file, or a method whose evaluation reports
            no test loss and accuracy.
        ConfigError, DataError, LayoutError, ModelError: with the file or key named (e.g. ``dist.device=cuda``
            without CUDA).
    """
    from hpcfed.restore import restore_run

    run_a, run_b = Path(run_a), Path(run_b)
    cfg = _load_run_config(run_a, overrides)
    cfg_b = _load_run_config(run_b, overrides)
    check_comparable(cfg, cfg_b)
    files = [run / "final" / "peft.safetensors" for run in (run_a, run_b)]
    for f in files:
        if not f.is_file():
            raise BasinError(f"{f}: not found (did the run finish?)")
    with restore_run(run_a, overrides, weights=files[0]) as run:
        test = run.dataset.load_test()
        if max_test is not None and max_test < len(test):
            from hpcfed.data import ClientData

            test = ClientData(x=test.x[:max_test], y=test.y[:max_test],
                              lengths=None if test.lengths is None else test.lengths[:max_test])
        loop = run.evaluation_loop(test)
        theta_a, theta_b = run.theta, run.load_weights(files[1])
        point = {"theta": theta_a}

        def set_params(theta: torch.Tensor) -> None:
            point["theta"] = theta

        def evaluate_point() -> tuple[float, float]:
            m = run.evaluate(point["theta"])
            if "test_loss" not in m or "test_acc" not in m:
                raise BasinError(f"fl.algorithm={cfg.fl.algorithm}: its evaluation reports no test_loss / test_acc "
                                 f"(got {', '.join(sorted(m)) or 'nothing'})")
            loss, acc = float(m["test_loss"]), float(m["test_acc"])
            log(f"loss {loss:.4f} acc {acc:.4f}")
            return loss, acc

        ts, res = interpolate(set_params, theta_a, theta_b, evaluate_point, k)
        n_test, trainable = len(loop.test_data), run.flat.numel
    losses = [r[0] for r in res]
    accs = [r[1] for r in res]
    return {
        "run_a": str(run_a), "run_b": str(run_b), "k": k, "test_examples": n_test,
        "peft_method": cfg.peft.method, "trainable": trainable,
        "distance": float(torch.linalg.vector_norm(theta_b - theta_a)),
        "ts": [float(t) for t in ts], "losses": losses, "accuracies": accs,
        "barrier": barrier_height(ts, losses), "error_barrier": barrier_height(ts, [1.0 - a for a in accs]),
    }


def plot(result: dict, path: Path) -> Path:
    """Loss (left axis) and accuracy (right axis) against t, written as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ts, losses = result["ts"], result["losses"]
    ax.plot(ts, losses, "o-", color="C0", label="test loss")
    ax.plot([ts[0], ts[-1]], [losses[0], losses[-1]], "--", color="C0", alpha=0.5, label="linear")
    ax.set_xlabel("t  (θ = (1−t)·θ_a + t·θ_b)")
    ax.set_ylabel("test loss", color="C0")
    if result.get("accuracies"):
        ax2 = ax.twinx()
        ax2.plot(ts, result["accuracies"], "s-", color="C1", label="test accuracy")
        ax2.set_ylabel("test accuracy", color="C1")
    ax.set_title(f"barrier {result['barrier']:.4f} (loss)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


USAGE = ("usage: python -m hpcfed.analysis.basin run_a=DIR run_b=DIR [k=11] [plot=PNG] [out=JSON] [max_test=N] "
         "[dotted.key=value ...]")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; prints the JSON result; returns 0, or 2 on bad input."""
    from hpcfed.config import ConfigError
    from hpcfed.data import DataError
    from hpcfed.models import ModelError
    from hpcfed.peft import LayoutError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip().split("\n\n")[0] + "\n\n" + USAGE)
        return 0
    opts: dict[str, str] = {}
    overrides: list[str] = []
    try:
        for word in argv:
            key, eq, value = word.partition("=")
            if not eq:
                raise BasinError(f"argument {word!r} is not key=value; {USAGE}")
            if "." in key:
                overrides.append(word)
            elif key in ("run_a", "run_b", "k", "plot", "out", "max_test"):
                opts[key] = value
            else:
                raise BasinError(f"unknown key {key!r}; valid: run_a, run_b, k, plot, out, max_test, or a dotted "
                                 "config key")
        for key in ("run_a", "run_b"):
            if not opts.get(key):
                raise BasinError(f"{key}= is required; {USAGE}")
        ints = {}
        for key, default, lo in (("k", 11, 2), ("max_test", None, 1)):
            raw = opts.get(key)
            if raw is None:
                ints[key] = default
                continue
            try:
                ints[key] = int(raw)
            except ValueError:
                raise BasinError(f"{key}={raw!r} is not an integer") from None
            if ints[key] < lo:
                raise BasinError(f"{key}={ints[key]} must be >= {lo}")
        result = compare_runs(Path(opts["run_a"]), Path(opts["run_b"]), k=ints["k"], overrides=overrides,
                              max_test=ints["max_test"],
                              log=lambda s: print(s, file=sys.stderr, flush=True))
        if opts.get("plot"):
            result["plot"] = str(plot(result, Path(opts["plot"])))
        text = json.dumps(result)
        if opts.get("out"):
            atomic_write_text(Path(opts["out"]), text + "\n")
    except (BasinError, ConfigError, DataError, ModelError, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
