"""Experiment trackers (``logging.report_to``): rank-0 round-end callbacks that hand each round's metrics to
CSV, TensorBoard, Weights & Biases (offline) or MLflow, each through the library itself.

Every tracker logs the round's numeric metrics at step = round (``round`` itself is the step, booleans become
0/1, non-finite values are skipped) and each warning of the round as ``warn_<name>`` = 1 (see
``docs/tracking.md``). TensorBoard, W&B and MLflow also get the flattened config (``fl.local.lr`` ...) as
hyperparameters. A resumed run appends its new rounds (``metrics.csv`` is rewritten with the restored rounds
first, like ``metrics.jsonl``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from hpcfed.atomic import atomic_write_text
from hpcfed.config import Config, ConfigError

EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow")}
"""tracker -> (module it imports, pip extra of hpcfed that installs it)."""


def require(tracker: str) -> None:
    """Import check for ``tracker``'s library.

    Raises:
        ConfigError: one line naming ``logging.report_to`` and the pip extra, when the library is missing.
    """
    if tracker not in EXTRAS:
        return
    module, extra = EXTRAS[tracker]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"logging.report_to: '{tracker}' needs the {module} package: "
                          f"pip install 'hpcfed[{extra}]'") from None


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as ``{"fl.local.lr": 0.001, ...}``: nested sections joined with dots; values are bool, int,
    float or str (None as 'null', lists as JSON)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(key + ".", v)
            elif v is None:
                out[key] = "null"
            elif isinstance(v, (bool, int, float, str)):
                out[key] = v
            else:
                out[key] = json.dumps(v, default=str)

    walk("", dataclasses.asdict(cfg))
    return out


def scalars(metrics: dict) -> dict[str, float]:
    """The trackable numbers of one round's ``metrics``: numeric values except ``round`` (bools as 0/1,
    non-finite skipped) and ``warn_<name>`` = 1 for each entry of ``metrics["warnings"]``."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if k == "round" or not isinstance(v, (bool, int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    for w in metrics.get("warnings") or ():
        out[f"warn_{w}"] = 1.0
    return out


class CsvTracker:
    """``<run dir>/metrics.csv``: one row per round, a column per metric key seen so far (blank where a round
    lacks it; ``warnings`` joined by ';'). Rewritten whole (atomically) each round, since later rounds may bring
    new columns (the first evaluation, a warning)."""

    def __init__(self, path: Path, history: Sequence[dict] = ()):
        self.path = path
        self.rows: list[dict] = [dict(m) for m in history]

    def on_round_end(self, loop, metrics: dict) -> None:
        self.rows.append(dict(metrics))
        columns: dict[str, None] = {}
        for row in self.rows:
            columns.update(dict.fromkeys(row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        for row in self.rows:
            w.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
        atomic_write_text(self.path, buf.getvalue())

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files in ``<run dir>/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``): a scalar per
    metric per round, the round's warnings as text, the flattened config in the HPARAMS tab."""

    def __init__(self, log_dir: Path, cfg: Config):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(log_dir))
        for summary in hparams(flat_config(cfg), {}):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def on_round_end(self, loop, metrics: dict) -> None:
        step = int(metrics.get("round", 0))
        for k, v in scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        if metrics.get("warnings"):
            self.writer.add_text("warnings", ", ".join(metrics["warnings"]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """An offline W&B run in ``<run dir>/wandb/`` (``wandb.init(mode="offline")``; upload later with
    ``wandb sync``): the flattened config as its config, a history row per round at step = round."""

    def __init__(self, run_dir: Path, cfg: Config):
        import wandb

        self.run = wandb.init(mode="offline", dir=str(run_dir), project=cfg.logging.wandb_project, name=cfg.name,
                              config=flat_config(cfg), settings=wandb.Settings(silent=True, console="off"))

    def on_round_end(self, loop, metrics: dict) -> None:
        self.run.log(scalars(metrics), step=int(metrics.get("round", 0)))

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run (``MlflowClient``; tracking URI ``logging.mlflow_tracking_uri``, default the file store
    ``file:<run dir>/mlruns``) in experiment ``logging.mlflow_experiment``: the flattened config as params,
    metrics at step = round. MLflow 3 refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE`` is true; it is set
    for the file store (unless already set)."""

    def __init__(self, run_dir: Path, cfg: Config):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = cfg.logging.mlflow_tracking_uri or f"file:{(run_dir / 'mlruns').resolve()}"
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = cfg.logging.mlflow_experiment
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=cfg.name).info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def on_round_end(self, loop, metrics: dict) -> None:
        import time

        from mlflow.entities import Metric

        step, now_ms = int(metrics.get("round", 0)), int(time.time() * 1000)
        batch = [Metric(k, v, now_ms, step) for k, v in scalars(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make_trackers(cfg: Config, run_dir: Path, history: Sequence[dict] = ()) -> list:
    """The callbacks for ``cfg.logging.report_to``, in its order, writing under ``run_dir``.

    Args:
        cfg: the run config.
        run_dir: the run's folder (created if missing).
        history: rounds restored from a checkpoint (only the CSV file is rewritten with them).

    Raises:
        ConfigError: a tracker's library is missing (one line naming ``logging.report_to`` and the pip extra),
            or a tracker fails to start (e.g. a bad ``logging.mlflow_tracking_uri``).
    """
    names = list(cfg.logging.report_to)
    for name in names:
        require(name)
    run_dir.mkdir(parents=True, exist_ok=True)
    out: list = []
    for name in names:
        try:
            if name == "csv":
                out.append(CsvTracker(run_dir / "metrics.csv", history))
            elif name == "tensorboard":
                out.append(TensorBoardTracker(run_dir / "tensorboard", cfg))
            elif name == "wandb":
                out.append(WandbTracker(run_dir, cfg))
            elif name == "mlflow":
                out.append(MlflowTracker(run_dir, cfg))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a library's own start-up failure (bad URI, init error): one line
            for started in out:
                started.close()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"logging.report_to: {name!r} could not start ({type(e).__name__}: {first})") from None
    return out
