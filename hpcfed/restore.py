"""Restore a finished run: its config, the model its method builds, its trained parameters, and the method's
own evaluation of them.

A run folder (``<out_dir>/<name>/``, written by :mod:`hpcfed.main`) holds ``config.yaml`` (the effective
config) and ``final/peft.safetensors`` (the global federated parameters, in the layout of the method's flat
buffer). :func:`restore_run` rebuilds the model the way the job did — through the method's own
:meth:`~hpcfed.fl.algorithm.Algorithm.build`, so FedDAT's dual adapters, FedYolo's per-task modules and heads
and FedPFT's sub-model are what the file is loaded into — and :meth:`RestoredRun.evaluate` runs the method's
own :meth:`~hpcfed.fl.algorithm.Algorithm.evaluate` (FedYolo: mean over its tasks; FedPFT: the full model with
the global LoRA; FedSimSiam: its SimSiam loss), so the numbers are those of the run's last ``metrics.jsonl``
row for the global model.

Used by the entry points that rebuild a run (:mod:`hpcfed.evaluate`, :mod:`hpcfed.analysis.basin`). In the
layers of ``pyproject.toml`` this module sits between them and the composition root (:mod:`hpcfed.compose`,
whose :func:`~hpcfed.compose.load_run_config` it uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import nn

from hpcfed.compose import load_run_config
from hpcfed.config import Config, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.data import ShardedDataset
    from hpcfed.fl.algorithm import Algorithm
    from hpcfed.fl.loop import FederatedLoop
    from hpcfed.peft import FlatParams

PathLike = Union[str, Path]

WEIGHTS = Path("final") / "peft.safetensors"
"""Where a finished run keeps its global parameters, relative to the run folder."""


@dataclass
class RestoredRun:
    """A finished run rebuilt in this process. Close it (or use it as a context manager) to close the shards.

    Attributes:
        run_dir: the run folder.
        cfg: its config (``config.yaml`` with the overrides), checked by :func:`hpcfed.compose.load_run_config`.
        algorithm: the method's instance (``cfg.fl.algorithm``), after its ``build``.
        model: the model its ``build`` returned; its trainable parameters are views of ``flat``.
        flat: the flat buffer of federated parameters; holds ``theta`` after :func:`restore_run`.
        dataset: the run's prepared shards (``cfg.data.resolved_shard_dir()``), open.
        device: where the model lives.
        source: the file or export folder the parameters were read from.
        theta: (n,) the run's trained parameters, on ``device``.
    """

    run_dir: Path
    cfg: Config
    algorithm: "Algorithm"
    model: nn.Module
    flat: "FlatParams"
    dataset: "ShardedDataset"
    device: torch.device
    source: Path
    theta: torch.Tensor
    _loop: Optional["FederatedLoop"] = field(default=None, repr=False)

    def __enter__(self) -> "RestoredRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the shards."""
        self.dataset.close()

    def load_weights(self, path: PathLike) -> torch.Tensor:
        """Read another run's ``final/peft.safetensors`` (same model and method) as an (n,) vector on
        ``device``; the model is left unchanged.

        Raises:
            LayoutError: unreadable file, or one that does not fit this flat buffer (names the file).
        """
        from hpcfed.export import load_peft

        return load_peft(Path(path), self.flat).to(self.device)

    def evaluation_loop(self, test=None) -> "FederatedLoop":
        """The engine's :class:`~hpcfed.fl.loop.FederatedLoop` around the restored model, in this one process
        (a :class:`~hpcfed.dist.LocalComm`), built on the first call, with the method's ``setup`` run (which
        may read data: FedYolo opens, and derives if missing, its task shards; FedPFT re-runs its stage-1
        distillation on public text unless ``fl.algo.distill_steps=0``).

        Args:
            test: the test split for the loop's ``evaluate_test`` (a :class:`~hpcfed.data.ClientData`);
                default: the run's global test split. Methods that evaluate on splits of their own (FedYolo's
                tasks) use those.

        Raises:
            ValueError: ``test`` given after the loop was built.
            ConfigError, DataError: from the method's ``setup``.
        """
        if self._loop is not None:
            if test is not None:
                raise ValueError("the evaluation loop is already built; pass test= on the first call")
            return self._loop
        from hpcfed.dist import LocalComm
        from hpcfed.fl.loop import FederatedLoop

        if test is None:
            test = self.dataset.load_test()
        with torch.no_grad():
            self.flat.data.copy_(self.theta)
        self._loop = FederatedLoop(self.cfg, self.model, self.flat, self.dataset, test, LocalComm(), self.device,
                                   algorithm=self.algorithm)
        self.algorithm.on_restore(self._loop, self.cfg.fl.rounds)  # final weights: after the last round
        return self._loop

    def evaluate(self, theta: Optional[torch.Tensor] = None) -> dict:
        """The method's own evaluation (:meth:`~hpcfed.fl.algorithm.Algorithm.evaluate`) of ``theta`` as the
        global model, on :meth:`evaluation_loop` (built with the default test split if not yet built).

        Args:
            theta: (n,) parameters; default: the run's own (``self.theta``).

        Returns:
            the method's metrics, e.g. ``test_loss`` / ``test_acc`` (FedYolo adds ``*_task{t}``; FedPFT
            ``sub_*`` of the sub-model as its ``setup`` left it, not the run's aligned one; FedDAT its global
            and personalised metrics, with each client's state read from the run's store as of its last round;
            FedSimSiam ``ssl_test_loss`` / ``ssl_proj_std``).

        Raises:
            ConfigError, DataError: from the method's ``setup`` (first call).
        """
        loop = self.evaluation_loop()
        with torch.no_grad():
            loop.theta_global.copy_(self.theta if theta is None else theta)
            return loop.algorithm.evaluate(loop)


def restore_run(run_dir: PathLike, overrides: Sequence[str] = (), *, device: Optional[torch.device] = None,
                weights: Optional[PathLike] = None, export: Optional[PathLike] = None) -> RestoredRun:
    """Rebuild a finished run's model through its method's ``build`` and load its trained parameters.

    Reads ``<run_dir>/config.yaml`` (``overrides``: ``key=value`` words on top, e.g. ``dist.device=cpu``),
    opens the prepared shards, seeds ``torch`` with ``cfg.seed`` (as every ``build`` does, so a random-init
    backbone and head are the run's own), builds ``(model, flat)`` with
    ``get_algorithm(cfg.fl.algorithm)(cfg).build(cfg, device, dataset)``, and loads the parameters into
    ``flat``. Sets ``torch``'s CPU threads to ``dist.num_threads`` when that is set.

    Args:
        run_dir: the run folder.
        overrides: config words applied on top of the run's config.
        device: default :func:`hpcfed.dist.resolve_device` of ``dist.device``.
        weights: a file written by :func:`hpcfed.export.save_peft`; default ``<run_dir>/final/peft.safetensors``.
        export: instead of ``weights``, a folder written by :func:`hpcfed.export.export_peft`.

    Returns:
        the :class:`RestoredRun` (its shards open; close it).

    Raises:
        ConfigError: no such folder, no ``config.yaml``, a bad override, ``weights`` and ``export`` both given,
            ``dist.device=cuda`` without CUDA, or a config the method's ``build`` rejects.
        LayoutError: the parameter file / export is missing, unreadable, or does not fit the model.
        DataError: the shards are not prepared (or belong to another data set).
        ModelError: the backbone cannot be built.
    """
    from hpcfed.algorithms import get_algorithm
    from hpcfed.data import ShardedDataset
    from hpcfed.dist import resolve_device
    from hpcfed.export import load_export, load_peft
    from hpcfed.peft import LayoutError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir}: no such folder")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run_dir={run_dir}: no config.yaml (not a run folder)")
    if weights is not None and export is not None:
        raise ConfigError("give export= or weights=, not both")
    # the run's folder is where it is now (its client state, derived data), whatever out_dir it was run with
    cfg = load_run_config([f"config={run_dir / 'config.yaml'}", f"out_dir={run_dir.resolve().parent}",
                           f"name={run_dir.resolve().name}", *overrides])
    source = Path(export if export is not None else weights or run_dir / WEIGHTS)
    if export is None and not source.is_file():
        raise LayoutError(f"{source}: no such file (did the run finish? give export=DIR or weights=FILE)")
    device = resolve_device(cfg.dist.device) if device is None else device
    if cfg.dist.num_threads:
        torch.set_num_threads(cfg.dist.num_threads)
    dataset = ShardedDataset(cfg.data.resolved_shard_dir(), expect_name=cfg.data.name)
    try:
        algorithm = get_algorithm(cfg.fl.algorithm).from_config(cfg)
        torch.manual_seed(cfg.seed)
        model, flat = algorithm.build(cfg, device, dataset)
        theta = load_export(model, flat, source) if export is not None else load_peft(source, flat)
        theta = theta.to(flat.data.device)
        with torch.no_grad():
            flat.data.copy_(theta)
    except BaseException:
        dataset.close()
        raise
    return RestoredRun(run_dir, cfg, algorithm, model, flat, dataset, device, source, theta)
