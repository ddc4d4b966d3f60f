"""The composition root: where the components meet.

Each component validates only itself (``hpcfed.config`` checks types and ranges and imports nothing from
hpcfed). Names that live in registries — ``peft.method``, ``fl.server_opt.name``, ``fl.algorithm`` and its
``fl.algo`` parameters — are checked here against those registries, as torchtitan's trainer checks its
cross-component constraints. Entry points (``hpcfed.main``, ``hpcfed.study``, ``hpcfed.evaluate``, the
benchmarks) load configs with :func:`load_run_config` and build jobs with :func:`build_loop`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from hpcfed import kernels
from hpcfed.algorithms import get_algorithm, validate_algorithm
from hpcfed.config import Config, ConfigError, check_choice, load_config
from hpcfed.peft import METHODS
from hpcfed.tracking import require as require_tracker


def quiet_libraries() -> None:
    """Quiet Hugging Face libraries (no progress bars, errors only), through environment variables read when
    they are imported; call before importing them. Hub access is set by :func:`apply_download_policy` once the
    config is known."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already: the environment is no longer read
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


_written_offline: list = [None]
"""The ``HF_HUB_OFFLINE`` value :func:`apply_download_policy` last wrote (None: none): any other value in the
environment is the user's own, which wins over the keys."""


def apply_download_policy(cfg: Config) -> None:
    """The hub's offline mode for this config: ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` unless
    ``model.allow_download`` or ``data.allow_download`` is on (then both are removed, so the libraries may
    download what the config asks for); an ``HF_HUB_OFFLINE`` that the user set (one this function did not
    write) is left alone. Set on every call, not once, so that several runs in one process (``hpcfed.run`` in a
    notebook) each get their own; ``huggingface_hub.constants.HF_HUB_OFFLINE`` is updated too when that library
    is already imported (it reads the variable at import). Model loading also passes ``local_files_only``
    itself (:mod:`hpcfed.models.hub`); this covers what the libraries fetch by name (a hub tokenizer in
    ``data.tokenizer``, a `datasets` source)."""
    current = os.environ.get("HF_HUB_OFFLINE")
    if current is not None and current != _written_offline[0]:
        return
    offline = not (cfg.model.allow_download or cfg.data.allow_download)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if offline:
            os.environ[var] = "1"
        else:
            os.environ.pop(var, None)
    _written_offline[0] = "1" if offline else None
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = offline


def validate(cfg: Config) -> None:
    """Check the names ``cfg`` takes from registries, and the algorithm's own parameters and constraints.

    Raises:
        ConfigError: one line naming the key and the valid choices.
    """
    check_choice("peft.method", cfg.peft.method, list(METHODS))
    check_choice("fl.server_opt.name", cfg.fl.server_opt.name, list(kernels.SERVER_OPTIMIZERS))
    validate_algorithm(cfg)
    for tracker in cfg.logging.report_to:  # every rank, before any data or model work
        require_tracker(tracker)


def finish_config(cfg: Config) -> Config:
    """What every entry point does to a loaded config before running it: :func:`validate`; a hub
    ``model.name`` becomes the text tokenizer when ``data.tokenizer`` is null; :func:`apply_download_policy`.
    Used by :func:`load_run_config` and :func:`hpcfed.api.load`.

    Raises:
        ConfigError: see :func:`validate`.
    """
    validate(cfg)
    if cfg.model.name and cfg.data.kind == "text" and not cfg.data.tokenizer:
        # The hub model's tokenizer, by repo id (part of the shards' identity, as model.path is); a pinned
        # @revision is not passed on: tokenizers rarely change between revisions of one repo.
        cfg.data.tokenizer = cfg.model.name.removeprefix("hf-hub:").partition("@")[0]
    apply_download_policy(cfg)
    return cfg


def load_run_config(argv: Sequence[str] = ()) -> Config:
    """:func:`hpcfed.config.load_config` then :func:`finish_config`: the config of a run, fully checked, with
    the hub tokenizer default and the hub's offline mode applied.

    Raises:
        ConfigError: see both functions.
    """
    return finish_config(load_config(argv))


def prepare_data_collectively(cfg: Config, comm) -> Path:
    """Rank 0 makes sure the shards exist (preparing them once); the others wait for its verdict, however long
    it takes (:func:`hpcfed.dist.comm.main_then_share`'s heartbeat keeps their waits under ``dist.timeout_s``).

    Raises:
        DataError: on every rank, with rank 0's message, when preparation failed.
    """
    from hpcfed.data import DataError, ensure_prepared
    from hpcfed.dist.comm import main_then_share

    tokenizer = cfg.data.tokenizer or cfg.model.path

    def prepare() -> tuple[str, str]:
        try:
            return ("ok", str(ensure_prepared(cfg.data, tokenizer)))
        except (DataError, ConfigError) as e:
            return ("error", str(e))

    result = main_then_share(comm, prepare)  # heartbeats: a preparation longer than dist.timeout_s is fine
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
    if cfg.fl.cohort_size > dataset.num_clients:  # data.num_clients=null (natural ids): known only now
        dataset.close()
        raise ConfigError(f"fl.cohort_size={cfg.fl.cohort_size} is larger than the {dataset.num_clients} clients "
                          f"of {shard_dir}")
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
