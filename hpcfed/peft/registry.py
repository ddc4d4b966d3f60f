"""The PEFT-method registry: ``peft.method`` names → functions ``(model, cfg) -> trainable parameter names``.

Methods register themselves with :func:`register` when their module is imported; importing
:mod:`hpcfed.peft` imports the built-in ones (:mod:`~hpcfed.peft.methods`, :mod:`~hpcfed.peft.adapter`,
:mod:`~hpcfed.peft.prompt`).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from hpcfed.config import PeftConfig

MethodFn = Callable[[nn.Module, PeftConfig], list[str]]
METHODS: dict[str, MethodFn] = {}
"""Registered PEFT methods by name (``peft.method``)."""


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register a PEFT method under ``name`` (the value of ``peft.method``)."""

    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def is_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to the classification head (always trained and sent)."""
    return name.startswith("head.")
