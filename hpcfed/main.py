"""Entry point: ``hpcfed [config=FILE.yaml] [key=value ...]`` (or ``python -m hpcfed.main ...``);
``hpcfed print-config [config=FILE.yaml] [key=value ...]`` prints the effective config; ``hpcfed --help`` lists
every key. From Python: ``hpcfed.run(...)`` (:mod:`hpcfed.api`).

Launch with ``mpirun -n N``, ``srun``, ``torchrun --nproc-per-node N`` or plainly (one process). Each rank
hosts its share of every round's cohort; see ``docs/`` and ``../shared/DESIGN.md``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from typing import Optional, Sequence

from hpcfed.compose import build_loop, load_run_config, quiet_libraries
from hpcfed.atomic import atomic_write_text
from hpcfed.config import Config, ConfigError, describe_keys, import_plugins
from hpcfed.envinfo import environment_info, warn_if_bf16_emulated

log = logging.getLogger("hpcfed")

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


class _CallerHooks:
    """A caller's callback with its optional hooks filled in: the loop calls ``on_round_end`` and ``close`` on
    every callback; a caller's object may define any of ``on_round_end(loop, metrics)``, ``on_stop(loop,
    reason)`` and ``close()``."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def on_round_end(self, loop, metrics: dict) -> None:
        if hasattr(self.callback, "on_round_end"):
            self.callback.on_round_end(loop, metrics)

    def on_stop(self, loop, reason: str) -> None:
        if hasattr(self.callback, "on_stop"):
            self.callback.on_stop(loop, reason)

    def close(self) -> None:
        if hasattr(self.callback, "close"):
            self.callback.close()


def run(cfg: Config, callbacks: Sequence = ()) -> dict:
    """Run the federated job described by ``cfg`` on this process's rank; returns the final metrics.

    Rank 0 writes ``<out_dir>/<name>/``: ``config.yaml``, ``metrics.jsonl`` and
    ``final/peft.safetensors``. The modules in ``cfg.plugins`` are imported and ``${...}`` interpolations
    resolved first (a ``Config()`` built in Python works as loaded ones do).

    Args:
        cfg: the run's config (validated against the registries: :func:`hpcfed.compose.validate`).
        callbacks: objects with any of ``on_round_end(loop, metrics)``, ``on_stop(loop, reason)``, ``close()``;
            called on rank 0 after the built-in ones (metrics file, progress, checkpoints).
    """
    from hpcfed.callbacks import CheckpointWriter, MetricsWriter, round_reporters
    from hpcfed.checkpoint import CheckpointError, find_resume_checkpoint
    from hpcfed.dist import init_runtime, make_comm
    from hpcfed.export import export_peft, save_peft
    from hpcfed.signals import StopFlag
    import_plugins(cfg.plugins)
    cfg = cfg.resolved()

    t_start = time.perf_counter()
    rt = init_runtime(device=cfg.dist.device, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s,
                      num_threads=cfg.dist.num_threads)
    comm = make_comm(timeout_s=cfg.dist.timeout_s)
    stop_flag = StopFlag().install()
    try:
        run_dir = cfg.run_dir
        ckpt_dir = run_dir / "checkpoints"
        loop, dataset = build_loop(cfg, rt, comm)
        loop.stop_flag = stop_flag
        ckpt = find_resume_checkpoint(ckpt_dir, cfg.checkpoint.resume, config_hash=cfg.hash(),
                                      force=cfg.checkpoint.force_resume, log=log)
        if ckpt is not None:
            try:
                loop.load_state(ckpt.tensors, ckpt.round, ckpt.history)
            except (KeyError, ValueError) as e:
                raise CheckpointError(f"{ckpt.path}: does not fit this model ({e})") from None
            if rt.is_main:
                log.info("resumed from %s (round %d)", ckpt.path, ckpt.round)
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())  # the effective config
            loop.callbacks = [
                MetricsWriter(run_dir / "metrics.jsonl", loop.state.history),
                *round_reporters(cfg.fl.rounds, initial=loop.state.round, progress=cfg.progress),
                CheckpointWriter(ckpt_dir, every_rounds=cfg.checkpoint.every_rounds,
                                 keep_last=cfg.checkpoint.keep_last, total_rounds=cfg.fl.rounds,
                                 config_hash=cfg.hash()),
                *_start_trackers(cfg, run_dir, loop.state.history, rt.world_size),
            ]
            loop.callbacks += [_CallerHooks(cb) for cb in callbacks]
            info = {"trainable_params": loop.flat.numel,
                    "total_params": sum(p.numel() for p in loop.model.parameters()),
                    "world_size": rt.world_size, "device": str(rt.device), "peft_method": cfg.peft.method,
                    "num_clients": dataset.num_clients, "config_hash": cfg.hash(),
                    "resumed_from_round": loop.state.round, "test_majority_rate": loop.test_majority_rate()}
            info.update(environment_info())
            (run_dir / "run_info.json").write_text(json.dumps(info, indent=1) + "\n")
            log.info("world=%d device=%s method=%s trainable=%d clients=%d cohort=%d", rt.world_size,
                     rt.device, cfg.peft.method, loop.flat.numel, dataset.num_clients, cfg.fl.cohort_size)
            warn_if_bf16_emulated(rt.device, cfg.fl.local.bf16, "fl.local.bf16", log)
        if cfg.fl.mode == "local_only":
            return _run_local_only(cfg, loop, dataset, comm, rt, t_start)
        try:
            state = loop.run()
        finally:
            for cb in loop.callbacks:
                cb.close()
        final = dict(state.history[-1]) if state.history else {}
        final["wall_s"] = time.perf_counter() - t_start
        if rt.is_main:
            save_peft(run_dir / "final" / "peft.safetensors", loop.flat, loop.theta_global,
                      peft_method=cfg.peft.method, config_hash=cfg.hash(), round=str(state.round))
            export_peft(loop.model, loop.flat, loop.theta_global, run_dir / "final" / "export", cfg)
            loop.algorithm.save_final(loop, run_dir / "final")
            log.info("done: %s", {k: final[k] for k in ("round", "test_acc", "wall_s") if k in final})
        dataset.close()
        return final
    finally:
        rt.shutdown()


def _run_local_only(cfg: Config, loop, dataset, comm, rt, t_start: float) -> dict:
    """The local-only baseline: every client alone; one metrics line plus ``local_only.json``."""
    from hpcfed.fl.baselines import run_local_only

    for cb in loop.callbacks:
        cb.close()
    res = run_local_only(cfg, loop.model, loop.flat, dataset, loop.test_data, comm, rt.device)
    res["wall_s"] = time.perf_counter() - t_start
    if rt.is_main:
        per_client = res.pop("per_client")
        with open(cfg.run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(res) + "\n")
        (cfg.run_dir / "local_only.json").write_text(json.dumps(
            {**res, "columns": ["client", "n_train", "test_acc", "local_test_acc"], "per_client": per_client},
            indent=1) + "\n")
        log.info("local only: mean test acc %.4f, mean held-out acc %s", res["test_acc"], res["local_test_acc"])
    dataset.close()
    return res


def _start_trackers(cfg: Config, run_dir, history, world_size: int) -> list:
    """:func:`hpcfed.tracking.make_trackers` on rank 0; a tracker that fails to start is reported in one line and,
    with peers waiting in the first round's collective, brings them down too (a missing library is caught
    earlier, on every rank, by :func:`hpcfed.compose.validate`)."""
    from hpcfed.tracking import make_trackers

    try:
        return make_trackers(cfg, run_dir, history)
    except ConfigError as e:
        if world_size > 1:
            print(f"error: {e}", file=sys.stderr, flush=True)
            _abort_peers(2)
        raise


def _abort_peers(code: int) -> None:
    """Bring down the other ranks promptly when this one fails (MPI abort when under MPI)."""
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1"))) > 1:
        try:
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(code)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; returns the exit status (0 ok, 2 bad input, 1 crash)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    if argv and argv[0] == "print-config":
        return print_config(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries()
    from hpcfed.checkpoint import CheckpointError
    from hpcfed.data import DataError
    from hpcfed.fl.loop import RunStopped
    from hpcfed.models import ModelError
    from hpcfed.peft import LayoutError
    from hpcfed.signals import EXIT_FAILURES, EXIT_PREEMPTED

    try:
        cfg = load_run_config(argv)
        run(cfg)
        return 0
    except (ConfigError, DataError, ModelError, LayoutError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"hpcfed: {e}; checkpoint written, resume with the same command", file=sys.stderr)
        return EXIT_PREEMPTED if e.reason == "stop signal" else EXIT_FAILURES
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - report, then make sure no peer hangs
        traceback.print_exc()
        _abort_peers(1)
        return 1


def help_text() -> str:
    """``--help``: usage, then every config key grouped by section with its default and docstring."""
    return (__doc__.strip() + "\n\nA YAML file may start from others: `defaults: [../base.yaml]` (paths relative to "
            "it),\nmerged before its own keys. Example: configs/sst2_minilm_bitfit.yaml.\n\nKeys (key = default  "
            "(type)):\n\n" + describe_keys(Config))


def print_config(argv: Sequence[str]) -> int:
    """``print-config``: the effective config (YAML files, overrides, resolved interpolations), validated
    against the registries, as YAML on stdout. Returns 0, or 2 with one error line."""
    quiet_libraries()
    try:
        cfg = load_run_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cfg.to_yaml(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
