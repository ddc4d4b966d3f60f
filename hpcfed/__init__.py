"""hpcfed: federated parameter-efficient fine-tuning of pre-trained transformers, simulated on HPC clusters.

From Python::

    import hpcfed
    result = hpcfed.run("configs/tiny_text.yaml", overrides={"fl.rounds": 3})   # hpcfed.api.RunResult
    cfg = hpcfed.load_config("configs/tiny_text.yaml")                         # hpcfed.config.Config

``hpcfed.run``, ``hpcfed.load``, ``hpcfed.RunResult`` (:mod:`hpcfed.api`) and ``hpcfed.Config``,
``hpcfed.load_config``, ``hpcfed.ConfigError`` (:mod:`hpcfed.config`) are imported on first use, so
``import hpcfed`` stays light (PEP 562).

Entry points: ``hpcfed`` / ``python -m hpcfed.main`` (a run; ``--help`` lists every key, ``print-config`` shows
the effective config), ``python -m hpcfed.data.prepare`` (client shards), ``python -m hpcfed.study`` (grids),
``python -m hpcfed.evaluate``, ``python -m hpcfed.pretrain``, ``python -m hpcfed.analysis.basin``. See README.md
and ../shared/DESIGN.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"run": "hpcfed.api", "load": "hpcfed.api", "RunResult": "hpcfed.api", "Config": "hpcfed.config",
         "load_config": "hpcfed.config", "ConfigError": "hpcfed.config"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """PEP 562: the public API, imported on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hpcfed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
