"""The PEFT-method registry: ``peft.method`` names → functions ``(model, cfg) -> trainable parameter names``.

Methods register themselves with :func:`register` when their module is imported; importing
:mod:`hpcfed.peft` imports the built-in ones (:mod:`~hpcfed.peft.methods`, :mod:`~hpcfed.peft.adapter`,
:mod:`~hpcfed.peft.prompt`); plugin modules register theirs the same way (:func:`hpcfed.config.import_plugins`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from hpcfed.config import ConfigError, PeftConfig

MethodFn = Callable[[nn.Module, PeftConfig], list[str]]
METHODS: dict[str, MethodFn] = {}
"""Registered PEFT methods by name (``peft.method``)."""


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register a PEFT method under ``name`` (the value of ``peft.method``).

    Out-of-tree methods register the same way from a plugin module (config key ``plugins``, or the entry-point
    group ``hpcfed.plugins``). Registering the same function again (a re-imported module) is allowed.

    Raises:
        ConfigError: ``name`` is already taken by another function.
    """

    def deco(fn: MethodFn) -> MethodFn:
        old = METHODS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"peft method {name!r} from {fn.__module__} is already registered by "
                              f"{old.__module__}.{old.__qualname__}; choose another name")
        METHODS[name] = fn
        return fn

    return deco


def is_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to the classification head (always trained and sent)."""
    return name.startswith("head.")
