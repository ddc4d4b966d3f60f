"""Entry point: ``python -m hpcfed.main [config=FILE.yaml] [key=value ...]``.

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
from hpcfed.config import Config, ConfigError
from hpcfed.envinfo import environment_info

log = logging.getLogger("hpcfed")

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


def run(cfg: Config) -> dict:
    """Run the federated job described by ``cfg`` on this process's rank; returns the final metrics.

    Rank 0 writes ``<out_dir>/<name>/``: ``config.yaml``, ``metrics.jsonl`` and
    ``final/peft.safetensors``.
    """
    from hpcfed.callbacks import CheckpointWriter, MetricsWriter, ProgressBar
    from hpcfed.checkpoint import CheckpointError, find_resume_checkpoint
    from hpcfed.dist import init_runtime, make_comm
    from hpcfed.export import export_peft, save_peft
    from hpcfed.signals import StopFlag

    t_start = time.perf_counter()
    rt = init_runtime(device=cfg.dist.device, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s,
                      num_threads=cfg.dist.num_threads)
    comm = make_comm()
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
                ProgressBar(cfg.fl.rounds, initial=loop.state.round, enabled=cfg.progress),
                CheckpointWriter(ckpt_dir, every_rounds=cfg.checkpoint.every_rounds,
                                 keep_last=cfg.checkpoint.keep_last, total_rounds=cfg.fl.rounds,
                                 config_hash=cfg.hash()),
            ]
            info = {"trainable_params": loop.flat.numel,
                    "total_params": sum(p.numel() for p in loop.model.parameters()),
                    "world_size": rt.world_size, "device": str(rt.device), "peft_method": cfg.peft.method,
                    "num_clients": dataset.num_clients, "config_hash": cfg.hash(),
                    "resumed_from_round": loop.state.round}
            info.update(environment_info())
            (run_dir / "run_info.json").write_text(json.dumps(info, indent=1) + "\n")
            log.info("world=%d device=%s method=%s trainable=%d clients=%d cohort=%d", rt.world_size,
                     rt.device, cfg.peft.method, loop.flat.numel, dataset.num_clients, cfg.fl.cohort_size)
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
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nKeys: see hpcfed/config.py; example: configs/sst2_minilm_bitfit.yaml")
        return 0
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


if __name__ == "__main__":
    sys.exit(cli())
