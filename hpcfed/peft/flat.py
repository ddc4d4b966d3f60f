"""The flat buffer: all trainable PEFT tensors of a model as views of ONE contiguous fp32 tensor.

Switching the model from one client's state to another is one ``copy_`` into :attr:`FlatParams.data`;
aggregation is one collective over it. Gradients are views of a second flat buffer
(:attr:`FlatParams.grad`), the way DDP's ``gradient_as_bucket_view`` works: autograd accumulates into an
existing ``.grad`` in place, so the fused local optimizer step reads one buffer.

The layout — ``(name, shape, offset)`` per tensor — travels with checkpoints and exports, so a flat vector
can be loaded into a fresh model or turned back into a named state dict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Segment:
    """One tensor of the layout: ``flat[offset : offset + numel].view(shape)`` is parameter ``name``."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int

    @property
    def end(self) -> int:
        return self.offset + self.numel


class LayoutError(ValueError):
    """A layout or flat vector that does not fit this model."""


def _set_param(model: nn.Module, name: str, param: nn.Parameter) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if leaf not in mod._parameters:
        raise LayoutError(f"{name} is not a registered parameter")
    mod._parameters[leaf] = param


class FlatParams:
    """Make the named parameters of ``model`` views of one flat buffer; freeze all others.

    Args:
        model: the model; its parameters named in ``names`` are replaced in place by views.
        names: parameter names (as in ``model.named_parameters()``) to train; order = layout order.
            Tied parameters (one tensor under two names) appear once.
        dtype: dtype of the flat buffer (fp32: the master copy).

    Attributes:
        data: (n,) ``dtype`` — the trainable values. ``model`` parameters are views of slices of it.
        grad: (n,) ``dtype`` — gradients; each parameter's ``.grad`` is a view of a slice of it.
        layout: list of :class:`Segment` in offset order.

    Raises:
        LayoutError: a name is not a parameter of ``model``.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], dtype: torch.dtype = torch.float32):
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = [n for n in names if n not in params]
        if missing:
            raise LayoutError(f"not parameters of the model: {missing[:5]}")
        seen: set[int] = set()
        chosen: list[tuple[str, torch.Tensor]] = []
        for n in names:
            p = params[n]
            if id(p) in seen:
                continue
            seen.add(id(p))
            chosen.append((n, p))
        for p in model.parameters():
            p.requires_grad_(False)
        device = chosen[0][1].device if chosen else next(model.parameters()).device
        n_total = sum(p.numel() for _, p in chosen)
        self.data = torch.zeros(n_total, dtype=dtype, device=device)
        self.grad = torch.zeros(n_total, dtype=dtype, device=device)
        self.layout: list[Segment] = []
        self.params: list[nn.Parameter] = []
        off = 0
        for n, p in chosen:
            seg = Segment(n, tuple(p.shape), off, p.numel())
            view = self.data[seg.offset:seg.end].view(seg.shape)
            view.copy_(p.detach())
            new_p = nn.Parameter(view, requires_grad=True)
            new_p.grad = self.grad[seg.offset:seg.end].view(seg.shape)
            _set_param(model, n, new_p)
            # Tied aliases of the same tensor point to the new parameter too.
            for alias, q in params.items():
                if q is p and alias != n:
                    _set_param(model, alias, new_p)
            self.layout.append(seg)
            self.params.append(new_p)
            off += seg.numel
        self.model = model

    # -- sizes and layout ----------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return self.data.numel()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.layout]

    def layout_json(self) -> str:
        return json.dumps([[s.name, list(s.shape), s.offset] for s in self.layout])

    @staticmethod
    def layout_from_json(text: str) -> list[Segment]:
        out = []
        for name, shape, off in json.loads(text):
            numel = 1
            for d in shape:
                numel *= d
            out.append(Segment(name, tuple(shape), off, numel))
        return out

    def segment_mask(self, predicate: Callable[[str], bool], dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """(n,) mask that is 1 on the segments whose name satisfies ``predicate``."""
        m = torch.zeros(self.numel, dtype=dtype, device=self.data.device)
        for s in self.layout:
            if predicate(s.name):
                m[s.offset:s.end] = 1
        return m

    # -- gradients ------------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Zero the flat gradient (keeping each ``.grad`` a view of it)."""
        self.grad.zero_()
        for seg, p in zip(self.layout, self.params):
            if p.grad is None or p.grad.data_ptr() != self.grad[seg.offset:].data_ptr():
                # Something replaced the view (e.g. set_to_none); re-attach it.
                p.grad = self.grad[seg.offset:seg.end].view(seg.shape)

    # -- state dicts ----------------------------------------------------------------------------------
    def state_dict(self, flat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named tensors (copies) of ``flat`` (default: :attr:`data`), keyed by parameter name."""
        src = self.data if flat is None else flat
        return {s.name: src[s.offset:s.end].view(s.shape).clone() for s in self.layout}

    def flat_from_state_dict(self, sd: dict[str, torch.Tensor], strict: bool = True) -> torch.Tensor:
        """Assemble an (n,) vector from named tensors.

        Raises:
            LayoutError: a name is missing (when ``strict``) or a shape differs.
        """
        out = self.data.detach().clone()
        for s in self.layout:
            t = sd.get(s.name)
            if t is None:
                if strict:
                    raise LayoutError(f"tensor {s.name!r} missing")
                continue
            if tuple(t.shape) != s.shape:
                raise LayoutError(f"tensor {s.name!r} has shape {tuple(t.shape)}, the model has {s.shape}")
            out[s.offset:s.end] = t.reshape(-1).to(out.dtype)
        return out


def trainable_names(model: nn.Module, predicate: Callable[[str], bool]) -> list[str]:
    """Names of ``model``'s parameters that satisfy ``predicate``, in registration order."""
    return [n for n, _ in model.named_parameters() if predicate(n)]


def frozen_state(model: nn.Module, flat: FlatParams) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter outside the flat buffer (for the frozen-is-frozen check)."""
    inside = {id(p) for p in flat.params}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in inside]
