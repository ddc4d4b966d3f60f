"""The algorithms registry: ``fl.algorithm`` names → classes.

A method registers itself with the :func:`register` class decorator when its module is imported;
``hpcfed.algorithms`` imports the built-in ones, and a composition root (``hpcfed.compose``) asks
:func:`get_algorithm` by name. The engine (``hpcfed.fl``) never looks names up: it is handed an instance.
"""

from __future__ import annotations

from hpcfed.config import Config, ConfigError
from hpcfed.fl.algorithm import Algorithm, check_engine_options

ALGORITHMS: dict[str, type[Algorithm]] = {}
"""Registered algorithms by name (``fl.algorithm``)."""


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` selectable as ``fl.algorithm=<cls.name>``.

    Out-of-tree methods register the same way from a plugin module (config key ``plugins``, or the entry-point
    group ``hpcfed.plugins``). Registering the same class again (a re-imported module) is allowed.

    Raises:
        TypeError: ``cls`` is not an :class:`Algorithm` subclass with a ``name``.
        ConfigError: the name is already taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)) or not isinstance(cls.__dict__.get("name"), str):
        raise TypeError(f"{cls!r}: register an Algorithm subclass that sets its own `name`")
    old = ALGORITHMS.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ConfigError(f"algorithm {cls.name!r} from {cls.__module__} is already registered by "
                          f"{old.__module__}.{old.__qualname__}; choose another name")
    ALGORITHMS[cls.name] = cls
    return cls


def get_algorithm(name: str) -> type[Algorithm]:
    """The registered class for ``name``.

    Raises:
        ConfigError: no algorithm of that name (the message lists the registered ones).
    """
    if name not in ALGORITHMS:
        raise ConfigError(f"fl.algorithm={name!r} is not one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def validate_algorithm(cfg: Config) -> None:
    """Check ``fl.algorithm`` against the registry, ``fl.algo`` against the method's ``Params`` and the
    method's own config constraints (:meth:`Algorithm.check_config`).

    Raises:
        ConfigError: one line naming the key.
    """
    cls = get_algorithm(cfg.fl.algorithm)
    check_engine_options(cls, cfg)
    cls.check_config(cls.parse_params(cfg.fl.algo), cfg)
