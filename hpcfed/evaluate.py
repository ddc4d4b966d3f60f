"""Evaluate a run's trained PEFT parameters on the global test split.

Usage::

    python -m hpcfed.evaluate run_dir=runs/NAME [export=DIR | weights=FILE] [key=value ...]

Reads ``<run_dir>/config.yaml`` (``key=value`` words override it, e.g. ``dist.device=cpu`` or
``eval.batch_size=64``), rebuilds the model through the run's method (``fl.algorithm``: its own ``build``,
with the same seed, so a random-init backbone is the run's own; :func:`hpcfed.restore.restore_run`), loads
the trained parameters — from ``export=DIR`` (a folder written by :func:`hpcfed.export.export_peft`),
``weights=FILE`` (a :func:`hpcfed.export.save_peft` file), or by default ``<run_dir>/final/peft.safetensors`` —
and runs the method's own evaluation on the prepared shards (``cfg.data.resolved_shard_dir()``), in one
process. Prints one JSON line: ``accuracy``, ``loss`` (the method's ``test_acc`` / ``test_loss``, as in the
run's last ``metrics.jsonl`` row), ``num_examples``, ``source``, ``method``, ``algorithm`` and ``metrics`` (all
the method reported). Bad input prints ``error: ...`` and exits with 2.

Per method: ``fedavg`` / ``fedprox`` / ``feddat`` (FedDAT: its global and personalised metrics, each client's
A_C and head read from the run's client-state store as of the last round) and ``fedyolo`` (mean over its tasks,
``*_task{t}`` each) give the run's numbers; ``fedpft`` evaluates the full model with the global LoRA (the run's ``test_acc``), but its
``setup`` first re-runs stage-1 distillation on the public text (skip with ``fl.algo.distill_steps=0``; the
``sub_*`` metrics are of that re-distilled sub-model, not the run's); ``fedsimsiam`` reports its SimSiam loss
(``accuracy`` and ``loss`` are null).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from hpcfed.config import ConfigError

_OWN_KEYS = ("run_dir", "export", "weights")


def _parse(argv: Sequence[str]) -> tuple[dict, list[str]]:
    own: dict = {}
    rest: list[str] = []
    for word in argv:
        key, eq, value = word.partition("=")
        if not eq:
            raise ConfigError(f"command-line argument {word!r} is not key=value")
        if key in _OWN_KEYS:
            own[key] = value
        elif key == "config":
            raise ConfigError("config= is not accepted: the run's config.yaml is used (override keys instead)")
        else:
            rest.append(word)
    if "run_dir" not in own:
        raise ConfigError("run_dir=<runs/NAME> is required")
    if "export" in own and "weights" in own:
        raise ConfigError("give export= or weights=, not both")
    return own, rest


def evaluate_run(argv: Sequence[str]) -> dict:
    """Run the evaluation described by ``argv`` (see the module docstring); returns the printed metrics.

    The model is rebuilt by :func:`hpcfed.restore.restore_run` (the method's own ``build``) and evaluated by
    the method's own ``evaluate`` (:meth:`hpcfed.restore.RestoredRun.evaluate`).

    Returns:
        ``accuracy`` / ``loss`` (the method's ``test_acc`` / ``test_loss``; None when it reports none, e.g.
        ``fedsimsiam``), ``num_examples`` (the global test split), ``source``, ``method`` (``peft.method``),
        ``algorithm`` (``fl.algorithm``) and ``metrics`` (everything the method's evaluation reported).

    Raises:
        ConfigError, DataError, ModelError, LayoutError: missing run folder / weights, shards not prepared,
            weights that do not fit the model, ``dist.device=cuda`` without CUDA.
    """
    from hpcfed.restore import restore_run

    own, overrides = _parse(argv)
    with restore_run(own["run_dir"], overrides, weights=own.get("weights"), export=own.get("export")) as run:
        metrics = run.evaluate()
        n = len(run.evaluation_loop().test_data)
    return {"accuracy": metrics.get("test_acc"), "loss": metrics.get("test_loss"), "num_examples": n,
            "source": str(run.source), "method": run.cfg.peft.method, "algorithm": run.cfg.fl.algorithm,
            "metrics": metrics}


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # hub access: the run's model.allow_download
    from hpcfed.data import DataError
    from hpcfed.models import ModelError
    from hpcfed.peft import LayoutError

    try:
        metrics = evaluate_run(argv)
    except (ConfigError, DataError, ModelError, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
