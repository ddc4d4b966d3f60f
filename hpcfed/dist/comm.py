"""Communicators: the one object through which the round loop and the methods talk to other ranks.

Algorithms and the round loop only see :class:`Comm`; the single-process :class:`LocalComm` makes them
testable alone, and :class:`CountingComm` wraps any communicator to count collectives in tests. Besides the
collectives, a Comm offers what a method needs without knowing ranks: :meth:`~Comm.on_main` (run on one
process, share the result or the error), :meth:`~Comm.share` (this process's share of a list) and
:attr:`~Comm.shard` (this process's part of a split data set).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Protocol, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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

    def broadcast(self, tensor: torch.Tensor, *, tag: str = "broadcast") -> torch.Tensor:
        """Overwrite ``tensor`` in place with the main process's values (same shape and dtype everywhere)."""
        ...

    def on_main(self, fn: Callable[[], T], *, share_result: bool = True) -> T | None:
        """Run ``fn`` on the main process only, then meet: the others get its result (``share_result``; small
        picklable objects only) or None. An exception in ``fn`` is raised on every process (the main one
        re-raises it; the others raise :class:`MainFailed` with its one-line message)."""
        ...

    def main_only(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the main process only, without waiting for it elsewhere (a side effect no other
        process depends on in this round, e.g. pruning old files)."""
        ...

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (round-robin; the shares of all processes partition ``items``)."""
        ...

    @property
    def shard(self) -> tuple[int, int]:
        """(index, count) of this process's part of a split data set, for ``evaluate(..., shard=...)``."""
        ...


class MainFailed(RuntimeError):
    """Raised on the other processes when :meth:`Comm.on_main`'s function failed on the main one."""


def _on_main(comm, fn, share_result: bool):
    """:meth:`Comm.on_main` for any communicator with ``rank`` and ``broadcast_object``."""
    result: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if comm.rank == 0:
        try:
            out = fn()
            result = ("ok", out if share_result else None)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others learned of it
            error = e
            result = ("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    result = comm.broadcast_object(result, src=0)
    if error is not None:
        raise error
    if result[0] == "error":
        raise MainFailed(result[1])
    return result[1] if share_result else (out if comm.rank == 0 else None)


def _share(comm, items):
    return list(items[comm.rank::comm.world_size])


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

    def broadcast(self, tensor: torch.Tensor, *, tag: str = "broadcast") -> torch.Tensor:
        return tensor

    def on_main(self, fn, *, share_result: bool = True):
        return fn()

    def main_only(self, fn) -> None:
        fn()

    def share(self, items):
        return list(items)

    shard = (0, 1)


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

    def broadcast(self, tensor: torch.Tensor, *, tag: str = "broadcast") -> torch.Tensor:
        dist.broadcast(tensor, src=0)
        return tensor

    def on_main(self, fn, *, share_result: bool = True):
        return _on_main(self, fn, share_result)

    def main_only(self, fn) -> None:
        if self.rank == 0:
            fn()

    def share(self, items):
        return _share(self, items)

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


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

    def broadcast(self, tensor: torch.Tensor, *, tag: str = "broadcast") -> torch.Tensor:
        self.calls[tag] += 1
        self.bytes[tag] += tensor.numel() * tensor.element_size()
        return self.inner.broadcast(tensor, tag=tag)

    def on_main(self, fn, *, share_result: bool = True):
        return _on_main(self, fn, share_result)  # through this wrapper's broadcast_object: counted

    def main_only(self, fn) -> None:
        self.inner.main_only(fn)

    def share(self, items):
        return self.inner.share(items)

    @property
    def shard(self) -> tuple[int, int]:
        return self.inner.shard


def make_comm() -> Comm:
    """The communicator of this process: torch.distributed when a group is up, else :class:`LocalComm`."""
    return TorchDistComm() if dist.is_available() and dist.is_initialized() else LocalComm()
