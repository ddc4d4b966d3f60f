"""PEFT methods (which parameters are trained) and the flat buffer that holds them. Knows nothing of FL.

Importing the package registers the built-in methods: ``head``, ``bias``, ``full``, ``lora``
(:mod:`~hpcfed.peft.methods`), ``adapter`` (:mod:`~hpcfed.peft.adapter`), ``prompt`` (:mod:`~hpcfed.peft.prompt`).
"""

from hpcfed.peft.flat import FlatParams, LayoutError, Segment, frozen_state
from hpcfed.peft.methods import apply_peft  # registers head, bias, full, lora  # isort: skip
from hpcfed.peft import adapter, prompt  # noqa: F401,E402 (register adapter, prompt)  # isort: skip
from hpcfed.peft.registry import METHODS, is_head, register

__all__ = ["FlatParams", "LayoutError", "Segment", "frozen_state", "METHODS", "apply_peft", "is_head", "register"]
