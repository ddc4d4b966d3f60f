"""The composition root: where the components meet.

Each component validates only itself (``hpcfed.config`` checks types and ranges and imports nothing from
hpcfed). Names that live in registries — ``peft.method``, ``fl.server_opt.name``, ``fl.algorithm`` and its
``fl.algo`` parameters — are checked here against those registries, as torchtitan's trainer checks its
cross-component constraints. Entry points (``hpcfed.main``, ``hpcfed.study``, ``hpcfed.evaluate``, the
benchmarks) load configs with :func:`load_run_config` and build jobs with :func:`build_loop`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hpcfed import kernels
from hpcfed.algorithms import get_algorithm, validate_algorithm
from hpcfed.config import Config, ConfigError, check_choice, load_config
from hpcfed.peft import METHODS


def quiet_libraries() -> None:
    """Offline, quiet Hugging Face libraries (no hub access, no progress bars, errors only)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def validate(cfg: Config) -> None:
    """Check the names ``cfg`` takes from registries, and the algorithm's own parameters and constraints.

    Raises:
        ConfigError: one line naming the key and the valid choices.
    """
    check_choice("peft.method", cfg.peft.method, list(METHODS))
    check_choice("fl.server_opt.name", cfg.fl.server_opt.name, list(kernels.SERVER_OPTIMIZERS))
    validate_algorithm(cfg)


def load_run_config(argv: Sequence[str] = ()) -> Config:
    """:func:`hpcfed.config.load_config` then :func:`validate`: the config of a run, fully checked.

    Raises:
        ConfigError: see both functions.
    """
    cfg = load_config(argv)
    validate(cfg)
    return cfg


def prepare_data_collectively(cfg: Config, comm) -> Path:
    """Rank 0 makes sure the shards exist (preparing them once); the others wait for its verdict.

    Raises:
        DataError: on every rank, with rank 0's message, when preparation failed.
    """
    from hpcfed.data import DataError, ensure_prepared

    tokenizer = cfg.data.tokenizer or cfg.model.path
    result: tuple[str, str]
    if comm.rank == 0:
        try:
            result = ("ok", str(ensure_prepared(cfg.data, tokenizer)))
        except (DataError, ConfigError) as e:
            result = ("error", str(e))
    else:
        result = ("", "")
    result = comm.broadcast_object(result, src=0)
    if result[0] != "ok":
        raise DataError(result[1])
    return Path(result[1])


def build_loop(cfg: Config, rt, comm, callbacks=None):
    """Compose the job on this rank: shards -> the algorithm's model and PEFT flat buffer -> the engine's
    :class:`~hpcfed.fl.loop.FederatedLoop`.

    Returns:
        (loop, dataset) — the caller closes the dataset.
    """
    from hpcfed.data import ShardedDataset
    from hpcfed.fl.loop import FederatedLoop

    shard_dir = prepare_data_collectively(cfg, comm)
    dataset = ShardedDataset(shard_dir, expect_name=cfg.data.name)
    algorithm = get_algorithm(cfg.fl.algorithm).from_config(cfg)
    model, flat = algorithm.build(cfg, rt.device, dataset)
    test = dataset.load_test()
    loop_data = dataset
    if cfg.fl.mode == "centralized":
        from dataclasses import replace

        from hpcfed.fl.baselines import PooledDataset, centralized_config

        cfg, loop_data = replace(cfg, fl=centralized_config(cfg)), PooledDataset(dataset)
    return FederatedLoop(cfg, model, flat, loop_data, test, comm, rt.device, callbacks,
                         algorithm=algorithm), dataset
