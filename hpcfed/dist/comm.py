"""Communicators: the one object through which the round loop talks to other ranks.

Algorithms and the round loop only see :class:`Comm`; the single-process :class:`LocalComm` makes them
testable alone, and :class:`CountingComm` wraps any communicator to count collectives in tests.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import torch
import torch.distributed as dist


class Comm(Protocol):
    """What the round loop needs from the ranks."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place; returns it. ``tag`` names the purpose (for counting)."""
        ...

    def barrier(self) -> None:
        ...

    def broadcast_object(self, obj, src: int = 0):
        """Return rank ``src``'s ``obj`` on every rank (small Python objects only)."""
        ...


class LocalComm:
    """World of one: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        return None

    def broadcast_object(self, obj, src: int = 0):
        return obj


class TorchDistComm:
    """torch.distributed communicator (NCCL on CUDA, gloo on CPU) over the default process group."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("TorchDistComm needs an initialized process group")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj, src: int = 0):
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


class CountingComm:
    """Wraps a communicator and counts collectives by tag, and elements/bytes all-reduced by tag."""

    def __init__(self, inner: Comm) -> None:
        self.inner = inner
        self.rank = inner.rank
        self.world_size = inner.world_size
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        self.calls[tag] += 1
        self.bytes[tag] += tensor.numel() * tensor.element_size()
        return self.inner.all_reduce_sum(tensor, tag=tag)

    def barrier(self) -> None:
        self.calls["barrier"] += 1
        self.inner.barrier()

    def broadcast_object(self, obj, src: int = 0):
        self.calls["broadcast_object"] += 1
        return self.inner.broadcast_object(obj, src)


def make_comm() -> Comm:
    """The communicator of this process: torch.distributed when a group is up, else :class:`LocalComm`."""
    return TorchDistComm() if dist.is_available() and dist.is_initialized() else LocalComm()
