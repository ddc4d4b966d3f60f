"""Ground floor of the configuration: the error type, the repository root, and the value checks every section's
``__post_init__`` uses (one-line messages naming the key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout's root (meaningful in an editable install only: after a regular install it is the
site-packages folder). Nothing derives data or cache folders from it; see :func:`default_data_root` and
:func:`default_cache_root`."""


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key (and the file, where one is involved)."""


def default_data_root() -> str:
    """Folder of the offline data sets (``${hpcfed_data_root:}``): ``$HPCFED_DATA``, else ``../shared/data``
    relative to the working directory (absolute). From the repository root that is the checkout's layout:
    ``../shared/data`` beside the repository."""
    env = os.environ.get("HPCFED_DATA")
    return str(Path(env).expanduser()) if env else str(Path.cwd().parent / "shared" / "data")


def default_cache_root() -> Path:
    """Folder of derived data (client shards): ``$HPCFED_CACHE``, else ``./data_cache`` in the working directory
    (absolute). Never the package's own location, which after a regular install is site-packages."""
    env = os.environ.get("HPCFED_CACHE")
    return Path(env).expanduser() if env else Path.cwd() / "data_cache"


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise :class:`ConfigError` naming ``key`` and the valid ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def check_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is None, > 0 (or >= 0 with ``allow_zero``)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def check_fraction(key: str, value: float, *, closed_high: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is in [0, 1) (or [0, 1] with ``closed_high``)."""
    if not (0.0 <= value < 1.0 or (closed_high and value == 1.0)):
        raise ConfigError(f"{key}={value!r} must be in [0, 1{']' if closed_high else ')'}")
