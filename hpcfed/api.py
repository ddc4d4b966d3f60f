"""The Python API: run a federated job from a config path, a mapping or a :class:`~hpcfed.config.Config`.

Usage::

    import hpcfed

    result = hpcfed.run("configs/tiny_text.yaml", overrides={"fl.rounds": 3})
    result = hpcfed.run({"defaults": ["configs/tiny_text.yaml"], "fl": {"rounds": 3}})
    for m in result.history:
        print(m["round"], m.get("test_acc"))

It is the command line's job (:func:`hpcfed.main.run`) with the config built by
:func:`hpcfed.config.load_config` and validated at the composition root, and errors raised rather than turned
into exit codes: :class:`~hpcfed.config.ConfigError`, ``DataError``, ``ModelError``, ``LayoutError``,
``CheckpointError`` for bad input, :class:`~hpcfed.fl.loop.RunStopped` when the run stopped early.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from hpcfed.compose import finish_config, quiet_libraries
from hpcfed.config import Config, load_config
from hpcfed.config.load import ConfigSource
from hpcfed.main import run as run_job


@dataclass
class RunResult:
    """What a finished run produced (complete on the main process; other ranks get ``final`` only).

    Attributes:
        history: one metrics dict per round in order (``round``, ``train_loss``, ``test_acc`` where evaluated,
            ...), including rounds restored from a checkpoint; the local-only baseline has one entry.
        final: the last round's metrics plus ``wall_s`` (seconds the run took).
        run_dir: ``<out_dir>/<name>``: ``config.yaml``, ``metrics.jsonl``, ``run_info.json``, ``final/``.
        config: the effective config (resolved, validated).
        exports: files written at the end, by kind: ``peft`` (``final/peft.safetensors``, the flat buffer and
            its layout), ``export`` (``final/export``, the libraries' formats), ``metrics``, ``config``.
    """

    history: list[dict]
    final: dict
    run_dir: Path
    config: Config
    exports: dict[str, Path] = field(default_factory=dict)


class _History:
    """Keeps the loop it saw, whose ``state.history`` holds every round (restored ones too)."""

    def __init__(self) -> None:
        self.loop = None

    def on_round_end(self, loop, metrics: dict) -> None:
        self.loop = loop


def load(config: ConfigSource = None, overrides: Union[Sequence[str], Mapping[str, Any]] = ()) -> Config:
    """The config :func:`run` would run: :func:`hpcfed.config.load_config` (plugins imported, interpolations
    resolved) then what the command line does next (:func:`hpcfed.compose.finish_config`: the registries'
    checks, the hub tokenizer default, the hub's offline mode).

    Args:
        config: a YAML path, a mapping shaped like a YAML file (``defaults: [...]`` allowed, relative to the
            working directory), a :class:`Config`, command-line words, or None for the defaults.
        overrides: ``key=value`` words or ``{"dotted.key": value}``, applied last.

    Raises:
        ConfigError: one line naming the file or key.
    """
    return finish_config(load_config(config, overrides=overrides))


def run(config: ConfigSource = None, overrides: Union[Sequence[str], Mapping[str, Any]] = (),
        callbacks: Sequence[Any] = ()) -> RunResult:
    """Run a federated job in this process (one rank; under ``mpirun`` / ``torchrun`` every rank calls it).

    Args:
        config, overrides: see :func:`load`.
        callbacks: objects with any of ``on_round_end(loop, metrics)`` (after each round, with its metrics
            dict), ``on_stop(loop, reason)`` (the run stops early), ``close()`` (at the end); called on the main
            process after the built-in ones. ``loop`` is the :class:`~hpcfed.fl.loop.FederatedLoop`.

    Returns:
        :class:`RunResult`.

    Raises:
        ConfigError, DataError, ModelError, LayoutError, CheckpointError: bad input (one-line messages).
        RunStopped: the run stopped early (stop signal, too many failed clients); a checkpoint was written.
    """
    quiet_libraries()
    cfg = load(config, overrides)
    recorder = _History()
    final = run_job(cfg, callbacks=[recorder, *callbacks])
    run_dir = cfg.run_dir
    if recorder.loop is not None:
        history = [dict(m) for m in recorder.loop.state.history]
    else:  # no round ran here: the local-only baseline, a finished run resumed, or not the main process
        history = _read_metrics(run_dir / "metrics.jsonl")
    kinds = {"peft": run_dir / "final" / "peft.safetensors", "export": run_dir / "final" / "export",
             "metrics": run_dir / "metrics.jsonl", "config": run_dir / "config.yaml"}
    return RunResult(history=history, final=final, run_dir=run_dir, config=cfg,
                     exports={k: p for k, p in kinds.items() if p.exists()})


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


__all__ = ["RunResult", "load", "run"]
