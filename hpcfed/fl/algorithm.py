"""The algorithm interface of the round loop, its registry, and its hyperparameter parsing.

An algorithm (a method from the literature) is one file under ``hpcfed/algorithms/`` with a class derived
from :class:`Algorithm`, registered by name there (:mod:`hpcfed.algorithms.registry`), and (optionally) a
dataclass of hyperparameters read from the config section ``fl.algo`` (defaults from its paper). This module
is the engine's side of that contract: the hooks and the parsing of ``fl.algo``. The loop never asks what an algorithm is; it calls these hooks, in
this order:

=====================================  ==========================================================================
``build(cfg, device, dataset)``        make (model, flat buffer) — default: :func:`build_model` + PEFT
``setup(loop)``                        once, at the end of :class:`FederatedLoop` construction
``on_round_start(loop, r)``            before the round's local training (every rank)
``local_update(trainer, θ, data,      train one client from θ_global; θ_c is left in ``trainer.flat.data``
seed, cid)``
``client_mask(cid)``                   (n,) bool — elements the client trains and sends (None: all)
``client_weight(num_samples)``         its aggregation weight
``after_round(loop, r)``               after the server step (every rank; may use ``loop.comm``); returns
                                       extra metrics
``evaluate(loop)``                     metrics of the global model (default: test loss / accuracy)
``save_final(loop, final_dir)``        the method's own final files (main process only, after the last round)
``state_tensors()`` / ``load_state``   extra state for exact resumption (checkpointed with prefix ``algo.``)
``on_restore(loop, rounds_done)``      a finished run restored for evaluation (``hpcfed.restore``)
=====================================  ==========================================================================

A method never sees a rank: everything it does between processes goes through ``loop.comm``
(:class:`~hpcfed.dist.Comm`: ``all_reduce_sum`` with its own tag, ``broadcast``, ``on_main`` to run a step on one
process and share the result, ``share`` / ``shard`` to split work), and files are written by the engine or in
``save_final``; the aggregation itself stays the loop's ONE all-reduce of the flat buffer per round.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Any, Optional

import torch

from hpcfed.config import Config, ConfigError, FLConfig
from hpcfed.data import ClientData
from hpcfed.fl.client import GradHook, LocalResult, LocalTrainer

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.fl.loop import FederatedLoop
    from hpcfed.peft import FlatParams

def parse_params(params_cls: Optional[type], values: dict[str, Any], algorithm: str):
    """Build the algorithm's hyperparameter dataclass from ``fl.algo``.

    Args:
        params_cls: a frozen dataclass type, or None for an algorithm without hyperparameters.
        values: the ``fl.algo`` mapping.
        algorithm: its name, for messages.

    Raises:
        ConfigError: an unknown key (with the valid ones), a value of the wrong type, or one the dataclass's
            ``__post_init__`` rejects.
        TypeError: ``params_cls`` is not a frozen dataclass (a method's programming error).
    """
    values = dict(values or {})
    if params_cls is not None and not (dataclasses.is_dataclass(params_cls)
                                       and params_cls.__dataclass_params__.frozen):
        raise TypeError(f"{params_cls.__name__}: an algorithm's Params must be a @dataclass(frozen=True)")
    if params_cls is None:
        if values:
            raise ConfigError(f"fl.algo: algorithm {algorithm!r} takes no parameters, got {sorted(values)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"fl.algo: unknown key '{unknown[0]}' for algorithm {algorithm!r}; valid keys: "
                          f"{', '.join(fields)}")
    hints = typing.get_type_hints(params_cls)
    for k, v in values.items():
        want = hints[k]
        base = typing.get_origin(want) or want
        if base is typing.Union:
            continue
        if base is float and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
        elif base in (int, float, str, bool) and not isinstance(v, base):
            raise ConfigError(f"fl.algo.{k}={v!r}: expected {base.__name__} for algorithm {algorithm!r}")
        elif base in (int, float) and isinstance(v, bool):
            raise ConfigError(f"fl.algo.{k}={v!r}: expected {base.__name__} for algorithm {algorithm!r}")
    try:
        return params_cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"fl.algo ({algorithm}): {e}") from None


def check_engine_options(cls: type["Algorithm"], cfg: Config) -> None:
    """Reject engine options the algorithm ``cls`` cannot run with (client-level DP without
    :attr:`Algorithm.supports_dp`, a robust ``fl.aggregator`` without :attr:`Algorithm.supports_robust`), and
    check ``fl.aggregator_params`` against the rule and the cohort (:func:`hpcfed.fl.robust.validate_params`).

    Raises:
        ConfigError: one line naming the keys.
    """
    if cfg.fl.dp.enabled and not cls.supports_dp:
        raise ConfigError(f"fl.dp.enabled=true does not work with fl.algorithm={cls.name!r} (client masks or "
                          "per-client state); use fedavg or fedprox")
    if cfg.fl.aggregator != "fedavg":
        from hpcfed.fl.robust import validate_params

        if not cls.supports_robust:
            raise ConfigError(f"fl.aggregator={cfg.fl.aggregator} does not work with fl.algorithm={cls.name!r} "
                              "(client masks or per-client state: a rule would read an unsent entry as 0); use "
                              "fedavg or fedprox")
        try:
            validate_params(cfg.fl.aggregator, cfg.fl.aggregator_params, cohort_size=cfg.fl.cohort_size)
        except ValueError as e:
            raise ConfigError(str(e)) from None


class Algorithm:
    """Base class: FedAvg semantics for every hook (McMahan et al., AISTATS 2017).

    A method owns its configuration: its hyperparameters are a frozen dataclass (``Params``) parsed once from
    ``fl.algo`` (:meth:`from_config`), and it is handed those and the FL section, not the whole run config.
    What else it needs (the run seed, the model section) it reads from the loop in :meth:`setup` or gets in
    :meth:`build`.

    Args:
        params: an instance of ``Params`` (None when the method has none).
        fl: the ``fl`` section (rounds, cohort, weighting, local training, ...).
    """

    name = "base"
    Params: Optional[type] = None
    """Frozen dataclass of hyperparameters (``fl.algo.*``); None when there are none."""
    supports_dp: bool = True
    """Whether client-level DP (``fl.dp``) applies: a client's contribution is one update of the whole flat
    buffer, clipped as a unit. False for methods with client masks or per-client state (FedDAT, FedPFT,
    FedYolo), whose updates the DP sum would not cover."""
    supports_robust: bool = True
    """Whether a Byzantine-robust ``fl.aggregator`` applies: every client sends one update of the whole flat
    buffer. False for the same methods as :attr:`supports_dp`: a rule over masked updates would read an entry a
    client did not send as Δ = 0."""

    def __init__(self, params: Any, fl: FLConfig):
        self.params = params
        self.fl = fl

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def parse_params(cls, values: dict[str, Any]) -> Any:
        """``fl.algo`` → an instance of ``cls.Params`` (None without one); see :func:`parse_params`."""
        return parse_params(cls.Params, values, cls.name)

    @classmethod
    def from_config(cls, cfg: Config) -> "Algorithm":
        """The method of a run: parse ``cfg.fl.algo`` once, check the method's constraints on the rest of
        the config (:meth:`check_config`), construct.

        Raises:
            ConfigError: one line naming the key.
        """
        params = cls.parse_params(cfg.fl.algo)
        check_engine_options(cls, cfg)
        cls.check_config(params, cfg)
        return cls(params, cfg.fl)

    @classmethod
    def check_config(cls, params: Any, cfg: Config) -> None:
        """Reject config combinations the algorithm cannot run (raise :class:`ConfigError`); ``params`` is
        the parsed ``fl.algo``. Called by the composition root, which sees the whole config."""

    def build(self, cfg: Config, device: torch.device, dataset) -> tuple[torch.nn.Module, "FlatParams"]:
        """The model and its flat buffer of federated parameters (the initial global model).

        Default: ``build_model`` from ``cfg.model`` then ``apply_peft`` from ``cfg.peft``, seeded by
        ``cfg.seed`` so every rank starts from the same weights.
        """
        from hpcfed.models import build_model
        from hpcfed.peft import apply_peft

        num_classes = cfg.model.num_classes or dataset.num_classes
        torch.manual_seed(cfg.seed)  # same head / LoRA init on every rank
        model = build_model(cfg.model, num_classes, class_names=dataset.class_names).to(device)
        return model, apply_peft(model, cfg.peft)

    def setup(self, loop: "FederatedLoop") -> None:
        """Called once when the loop is built (extra state, datasets, masks)."""

    # -- one round ------------------------------------------------------------------------------------
    def on_round_start(self, loop: "FederatedLoop", round_idx: int) -> None:
        """Called on every rank before the round's local training."""

    def client_weight(self, num_samples: int) -> float:
        """Aggregation weight w_c: the client's number of examples, or 1 with ``fl.weighting=uniform``."""
        return float(num_samples) if self.fl.weighting == "samples" else 1.0

    def grad_hook(self, theta_global: torch.Tensor) -> Optional[GradHook]:
        """Extra gradient term added after each local backward (None: none)."""
        return None

    def client_mask(self, client_id: int) -> Optional[torch.Tensor]:
        """(n,) bool entries the client trains and sends; None = all."""
        return None

    def local_update(self, trainer: LocalTrainer, theta_global: torch.Tensor, data: ClientData,
                     seed: int, client_id: int) -> LocalResult:
        """Load θ_global into the model's flat buffer and train it on ``data``; θ_c is left in the buffer."""
        trainer.flat.data.copy_(theta_global)
        return trainer.train(data, seed, grad_hook=self.grad_hook(theta_global),
                             mask=self.client_mask(client_id))

    def after_round(self, loop: "FederatedLoop", round_idx: int) -> dict:
        """Called on every rank after the server step; returns extra metrics for the round."""
        return {}

    # -- evaluation and state -------------------------------------------------------------------------
    def evaluate(self, loop: "FederatedLoop") -> dict:
        """Metrics of the global model; default: loss and accuracy on the global test split."""
        return loop.evaluate_test()

    def save_final(self, loop: "FederatedLoop", final_dir) -> None:
        """Write the method's own final outputs into ``final_dir`` (a :class:`pathlib.Path`) beside the PEFT
        weights. Called once, by the entry point, on the main process only, after the last round; default:
        nothing."""

    def on_restore(self, loop: "FederatedLoop", rounds_done: int) -> None:
        """A finished run is restored (:func:`hpcfed.restore.restore_run`) to evaluate its final model: put the
        method into its state after round ``rounds_done`` (e.g. where its per-client state is read from).
        Called once, after :meth:`setup`; default: nothing."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Extra tensors a checkpoint must hold to resume exactly (names without the ``algo.`` prefix)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""
