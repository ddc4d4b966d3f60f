"""PEFT methods (which parameters are trained) and the flat buffer that holds them. Knows nothing of FL."""

from hpcfed.peft.flat import FlatParams, LayoutError, Segment, frozen_state
from hpcfed.peft.methods import METHODS, apply_peft, is_head, register

__all__ = ["FlatParams", "LayoutError", "Segment", "frozen_state", "METHODS", "apply_peft", "is_head", "register"]
