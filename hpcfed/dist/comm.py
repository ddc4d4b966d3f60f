"""Communicators: the one object through which the round loop and the methods talk to other ranks.

Algorithms and the round loop only see :class:`Comm`; the single-process :class:`LocalComm` makes them
testable alone, and :class:`CountingComm` wraps any communicator to count collectives in tests. The collectives
are the all-reduce of the round's flat accumulator (FedAvg's ONE collective), broadcasts, and
:meth:`~Comm.all_gather` of row blocks whose row counts differ by rank (used only by the robust aggregators of
``hpcfed/fl/robust.py``, which need every client's update). Besides the collectives, a Comm offers what a
method needs without knowing ranks: :meth:`~Comm.on_main` (run on one process, share the result or the error),
:meth:`~Comm.share` (this process's share of a list) and :attr:`~Comm.shard` (this process's part of a split
data set).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable, Protocol, Sequence, TypeVar

import torch
import torch.distributed as dist

from hpcfed.config import first_line

T = TypeVar("T")

GATHER_CHUNK_BYTES = 256 << 20
"""Default bound on the receive buffer of one step of :meth:`Comm.all_gather` (world × max rows × columns ×
element size, in bytes); wider inputs are gathered in column chunks so the temporary memory stays bounded."""

HEARTBEAT_S = 30.0
"""Default seconds between the main process's "still working" broadcasts while it runs a one-process step
(:func:`main_then_share`: :meth:`Comm.on_main`, data preparation). The other processes wait for that step in a
collective, which the process group bounds by ``dist.timeout_s``; without a heartbeat, a step longer than the
timeout (a large dataset's preparation, a long distillation) kills them with the backend's raw timeout error.
``hpcfed.main`` uses min(HEARTBEAT_S, dist.timeout_s / 4) (:func:`make_comm`)."""

_WORKING = ("working", None)
_in_main_step = threading.local()  # .active: this thread is inside main_then_share's fn (nesting is an error)


class Comm(Protocol):
    """What the round loop needs from the ranks."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place; returns it. ``tag`` names the purpose (for counting)."""
        ...

    def all_gather(self, tensor: torch.Tensor, *, tag: str = "gather",
                   chunk_bytes: int = GATHER_CHUNK_BYTES) -> torch.Tensor:
        """Concatenate every rank's rows, in rank order; the same result on every rank.

        Args:
            tensor: (k_r, n) on this rank's device, contiguous or not; k_r may differ by rank (0 allowed), n and
                the dtype must be the same on every rank.
            tag: names the purpose (for counting).
            chunk_bytes: bound on one step's receive buffer (world × max_r k_r × columns × element size); wider
                inputs are gathered in column chunks.

        Returns:
            (Σ_r k_r, n), same dtype and device; rows of rank 0 first, then rank 1, ... (on one rank: may be
            ``tensor`` itself, so do not write into the result).

        Raises:
            ValueError: ``tensor`` is not 2-D, or n or the dtype differs between ranks (raised on every rank).
        """
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


def _describe(e: BaseException) -> str:
    """``Type: first line of the message`` (one line, for an error sent to or raised on another process)."""
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


def main_then_share(comm, fn: Callable[[], tuple]) -> tuple:
    """Run ``fn`` on the main process (rank 0) and return its result on every process, however long it takes.

    While ``fn`` runs, a daemon thread on the main process broadcasts a "still working" message every
    ``comm.heartbeat_s`` seconds (default :data:`HEARTBEAT_S`); the others receive until the result comes. Each
    of their waits is then short, so on the waiting processes the process group's timeout (``dist.timeout_s``)
    still catches a dead main process, but no longer kills a step that is merely long. The main process learns
    of a dead peer from its next heartbeat, which fails; it raises that error once ``fn`` has returned. ``fn``
    runs in the caller's thread (grad mode, signals and the CUDA device are the caller's); only the heartbeat
    thread issues collectives while it runs, so ``fn`` must issue none (a nested call raises). A C call in
    ``fn`` that holds the GIL for longer than ``dist.timeout_s`` − ``heartbeat_s`` would delay the heartbeat
    past the timeout. A step shorter than the heartbeat costs one broadcast, as before.

    Args:
        comm: any communicator with ``rank`` and ``broadcast_object`` (:class:`CountingComm` counts the
            heartbeats as ``broadcast_object`` calls).
        fn: called on rank 0 only; returns a small picklable tuple whose first item is not ``"working"``.

    Returns:
        ``fn()``'s tuple on every process.

    Raises:
        Whatever ``fn`` raises, on the main process only, after the heartbeat thread stopped; the others then
        wait for the result until the process group's timeout (callers catch and share errors, see
        :func:`_on_main`).
        RuntimeError: on the main process, a heartbeat failed (a peer died; the backend's error is chained), or
            ``fn`` called :func:`main_then_share` (or ``on_main``) itself.
    """
    if comm.rank != 0:
        result = comm.broadcast_object(None, src=0)
        while result == _WORKING:
            result = comm.broadcast_object(None, src=0)
        return result
    if getattr(_in_main_step, "active", False):
        raise RuntimeError("main_then_share/on_main called inside another one: its function must issue no "
                           "collective (the heartbeat thread is the only one that may while it runs)")
    stop = threading.Event()
    failure: list[BaseException] = []
    cuda_device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    interval_s = float(getattr(comm, "heartbeat_s", HEARTBEAT_S))

    def beat() -> None:
        try:
            if cuda_device is not None:  # the CUDA current device is per thread: NCCL's object broadcast uses it
                torch.cuda.set_device(cuda_device)
            while not stop.wait(interval_s):
                comm.broadcast_object(_WORKING, src=0)
        except BaseException as e:  # noqa: BLE001 - raised on the caller's thread after the join
            failure.append(e)

    thread = threading.Thread(target=beat, name="hpcfed-main-heartbeat", daemon=True)
    _in_main_step.active = True
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()  # a heartbeat in flight completes: the others are receiving
        _in_main_step.active = False
    if failure:
        raise RuntimeError(f"a heartbeat broadcast of the main process failed (a peer died?): "
                           f"{_describe(failure[0])}") from failure[0]
    return comm.broadcast_object(result, src=0)


def _on_main(comm, fn, share_result: bool):
    """:meth:`Comm.on_main` for any communicator with ``rank`` and ``broadcast_object`` (through
    :func:`main_then_share`, so a step longer than the process group's timeout does not fail the others)."""
    error: BaseException | None = None
    out: Any = None

    def run() -> tuple[str, Any]:
        nonlocal error, out
        try:
            out = fn()
            return ("ok", out if share_result else None)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others learned of it
            error = e
            return ("error", _describe(e))

    result = main_then_share(comm, run)
    if error is not None:
        raise error
    if result[0] == "error":
        raise MainFailed(result[1])
    return result[1] if share_result else out


def _share(comm, items):
    return list(items[comm.rank::comm.world_size])


def _check_gather_input(tensor: torch.Tensor) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"all_gather needs a 2-D (rows, n) tensor, got shape {tuple(tensor.shape)}")


_DTYPE_CODES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                torch.uint8, torch.bool)


def _gather_rows(tensor: torch.Tensor, rank: int, world: int, chunk_bytes: int, gather_fn) -> torch.Tensor:
    """:meth:`Comm.all_gather` over a backend's equal-size gather ``gather_fn(out, inp)`` (out = world copies
    of inp, stacked along dim 0): first the shapes [k_r, n, dtype] of every rank, then the rows padded to
    k_max = max_r k_r, in column chunks of at most ``chunk_bytes`` of receive buffer."""
    _check_gather_input(tensor)
    k, n = tensor.shape
    code = _DTYPE_CODES.index(tensor.dtype) if tensor.dtype in _DTYPE_CODES else len(_DTYPE_CODES)
    shapes = torch.empty(world * 3, dtype=torch.int64, device=tensor.device)
    gather_fn(shapes, torch.tensor([k, n, code], dtype=torch.int64, device=tensor.device))
    rows = shapes.view(world, 3).tolist()  # (world, [k_r, n_r, dtype_r])
    if any(r[1] != n for r in rows):
        raise ValueError("all_gather needs the same number of columns on every rank, got "
                         f"{[r[1] for r in rows]}")
    if any(r[2] != code for r in rows):
        raise ValueError(f"all_gather needs the same dtype on every rank (rank {rank} has {tensor.dtype})")
    counts = [r[0] for r in rows]
    k_max, total = max(counts), sum(counts)
    out = torch.empty(total, n, dtype=tensor.dtype, device=tensor.device)
    if k_max == 0 or n == 0:
        return out
    starts = [sum(counts[:r]) for r in range(world)]
    cols = max(1, min(n, chunk_bytes // (world * k_max * tensor.element_size())))
    for c0 in range(0, n, cols):
        w = min(cols, n - c0)
        send = torch.zeros(k_max, w, dtype=tensor.dtype, device=tensor.device)  # rows k..k_max: padding
        send[:k].copy_(tensor[:, c0:c0 + w])
        recv = torch.empty(world * k_max, w, dtype=tensor.dtype, device=tensor.device)
        gather_fn(recv, send)
        blocks = recv.view(world, k_max, w)  # (world, k_max, w)
        for src in range(world):
            out[starts[src]:starts[src] + counts[src], c0:c0 + w].copy_(blocks[src, :counts[src]])
    return out


class LocalComm:
    """World of one: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor, *, tag: str = "gather",
                   chunk_bytes: int = GATHER_CHUNK_BYTES) -> torch.Tensor:
        _check_gather_input(tensor)
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

    def __init__(self, heartbeat_s: float = HEARTBEAT_S) -> None:
        """``heartbeat_s``: seconds between the main process's "still working" broadcasts during a one-process
        step (:func:`main_then_share`); keep it well under the process group's timeout."""
        if not dist.is_initialized():
            raise RuntimeError("TorchDistComm needs an initialized process group")
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0 seconds, got {heartbeat_s}")
        self.heartbeat_s = float(heartbeat_s)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, tensor: torch.Tensor, *, tag: str = "gather",
                   chunk_bytes: int = GATHER_CHUNK_BYTES) -> torch.Tensor:
        # all_gather_single (torch >= 2.10, the name all_gather_into_tensor is deprecated): one contiguous
        # receive buffer, no per-rank list; NCCL and gloo both implement it.
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return _gather_rows(tensor, self.rank, self.world_size, chunk_bytes, gather)

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
    """Wraps a communicator and counts collectives by tag, and the bytes this rank put in (all-reduced,
    broadcast, or sent by :meth:`all_gather`) by tag."""

    def __init__(self, inner: Comm) -> None:
        self.inner = inner
        self.rank = inner.rank
        self.world_size = inner.world_size
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    @property
    def heartbeat_s(self) -> float:
        """The wrapped communicator's heartbeat (:func:`main_then_share`)."""
        return float(getattr(self.inner, "heartbeat_s", HEARTBEAT_S))

    def all_reduce_sum(self, tensor: torch.Tensor, *, tag: str = "aggregate") -> torch.Tensor:
        self.calls[tag] += 1
        self.bytes[tag] += tensor.numel() * tensor.element_size()
        return self.inner.all_reduce_sum(tensor, tag=tag)

    def all_gather(self, tensor: torch.Tensor, *, tag: str = "gather",
                   chunk_bytes: int = GATHER_CHUNK_BYTES) -> torch.Tensor:
        """Counted as ONE collective under ``tag`` (whatever its chunks); bytes are this rank's rows sent."""
        self.calls[tag] += 1
        self.bytes[tag] += tensor.numel() * tensor.element_size()
        return self.inner.all_gather(tensor, tag=tag, chunk_bytes=chunk_bytes)

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


def make_comm(*, timeout_s: float | None = None) -> Comm:
    """The communicator of this process: torch.distributed when a group is up, else :class:`LocalComm`.

    ``timeout_s``: the process group's collective timeout (``dist.timeout_s``, seconds); the heartbeat of
    one-process steps (:func:`main_then_share`) is then min(:data:`HEARTBEAT_S`, timeout_s / 4)."""
    if not (dist.is_available() and dist.is_initialized()):
        return LocalComm()
    return TorchDistComm(HEARTBEAT_S if timeout_s is None else min(HEARTBEAT_S, timeout_s / 4))
