"""Run configuration: dataclass schema -> OmegaConf structured config, YAML then CLI dotlist.

Usage::

    cfg = load_config(["config=configs/sst2_minilm_bitfit.yaml", "fl.rounds=5"])

Order of precedence (last wins): dataclass defaults, the YAML files named by ``config=`` (each after the files
its ``defaults:`` list names, relative to it), the remaining ``key=value`` overrides. ``load_config`` also takes
a mapping, a YAML path or a ``Config``, and imports the modules named in ``plugins``. The structured config is in struct mode, so an unknown key fails; OmegaConf checks
types; each dataclass validates its values in ``__post_init__``. Every failure is raised as
:class:`ConfigError` with one line naming the key and what is wrong (valid choices where there are some).

Layout: :mod:`~hpcfed.config.checks` (``ConfigError``, value checks), :mod:`~hpcfed.config.sections` (one
dataclass per section), :mod:`~hpcfed.config.load` (the root ``Config``, ``load_config``, resolvers, plugins), :mod:`~hpcfed.config.keys` (every
key with its docstring, for ``--help``). This
package is the ground floor: it imports nothing else from hpcfed (``docs/architecture.md``).
"""

from hpcfed.config.checks import (
    REPO_ROOT, ConfigError, check_choice, check_fraction, check_positive, default_cache_root, default_data_root,
)
from hpcfed.config.keys import describe_keys, field_docs
from hpcfed.config.load import (
    MOVED_KEYS, PLUGIN_GROUP, Config, SharedPrefixLoader, first_line, import_plugins, load_config, minilm_path,
    register_resolvers, resolved,
)
from hpcfed.config.sections import (
    AGGREGATORS, ATTACKS, DATA_KINDS, LABEL_MODES, LOCAL_OPTIMIZERS, MODEL_FAMILIES, PARTITIONS, ROBUST_AGGREGATORS,
    AttackConfig, CheckpointConfig, DataConfig, DistConfig, DPConfig, EvalConfig, FLConfig, LocalConfig, ModelConfig,
    PeftConfig, ServerOptConfig, check_attack,
)

__all__ = [
    "REPO_ROOT", "ConfigError", "check_choice", "check_fraction", "check_positive", "default_cache_root",
    "default_data_root", "describe_keys", "field_docs", "first_line", "MOVED_KEYS", "PLUGIN_GROUP", "Config",
    "import_plugins", "load_config", "minilm_path", "register_resolvers", "resolved", "SharedPrefixLoader",
    "AGGREGATORS", "ATTACKS", "DATA_KINDS", "LABEL_MODES", "LOCAL_OPTIMIZERS", "MODEL_FAMILIES", "PARTITIONS",
    "ROBUST_AGGREGATORS", "AttackConfig", "CheckpointConfig", "DataConfig", "DistConfig", "DPConfig", "EvalConfig",
    "FLConfig", "LocalConfig", "ModelConfig", "PeftConfig", "ServerOptConfig", "check_attack",
]
