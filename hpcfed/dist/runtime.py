"""Process runtime: which rank am I, which device, and the torch.distributed process group.

Rank info is read from the launcher's environment, in this order:

* torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (+ ``MASTER_ADDR``/``MASTER_PORT`` set by torchrun);
* Open MPI (mpirun): ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``, ``OMPI_COMM_WORLD_LOCAL_RANK``;
* MPICH / Intel MPI (PMI): ``PMI_RANK``, ``PMI_SIZE`` (+ ``MPI_LOCALRANKID``);
* Slurm (srun): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``;
* none of these: a single process.

The rendezvous address is discovered, never hard-coded: under MPI, rank 0 picks its host name and a free
port and broadcasts them with mpi4py; under Slurm without MPI, the first host of ``SLURM_JOB_NODELIST`` and a
port derived from the job id are used. ``MASTER_ADDR``/``MASTER_PORT`` in the environment always win.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from hpcfed.config import ConfigError


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    """'torchrun', 'mpi', 'slurm' or 'single'."""


def detect_launch(environ: Optional[dict] = None) -> LaunchInfo:
    """Read rank, world size and local rank from the launcher's environment variables (see module doc)."""
    env = os.environ if environ is None else environ

    def get(*names: str) -> Optional[int]:
        for n in names:
            v = env.get(n)
            if v not in (None, ""):
                return int(v)
        return None

    if get("RANK") is not None and get("WORLD_SIZE") is not None and "TORCHELASTIC_RUN_ID" in env:
        return LaunchInfo(get("RANK"), get("WORLD_SIZE"), get("LOCAL_RANK") or 0,
                          get("LOCAL_WORLD_SIZE") or 1, "torchrun")
    if get("OMPI_COMM_WORLD_RANK") is not None:
        return LaunchInfo(get("OMPI_COMM_WORLD_RANK"), get("OMPI_COMM_WORLD_SIZE"),
                          get("OMPI_COMM_WORLD_LOCAL_RANK") or 0, get("OMPI_COMM_WORLD_LOCAL_SIZE") or 1, "mpi")
    if get("PMI_RANK") is not None and get("PMI_SIZE") is not None:
        return LaunchInfo(get("PMI_RANK"), get("PMI_SIZE"), get("MPI_LOCALRANKID", "PMI_LOCAL_RANK") or 0,
                          get("MPI_LOCALNRANKS", "PMI_LOCAL_SIZE") or 1, "mpi")
    if get("SLURM_PROCID") is not None and get("SLURM_NTASKS") is not None and "SLURM_STEP_ID" in env:
        ntasks_node = env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
        return LaunchInfo(get("SLURM_PROCID"), get("SLURM_NTASKS"), get("SLURM_LOCALID") or 0,
                          int(ntasks_node) if ntasks_node.isdigit() else 1, "slurm")
    if get("RANK") is not None and get("WORLD_SIZE") is not None:
        return LaunchInfo(get("RANK"), get("WORLD_SIZE"), get("LOCAL_RANK") or 0,
                          get("LOCAL_WORLD_SIZE") or 1, "torchrun")
    return LaunchInfo(0, 1, 0, 1, "single")


def first_slurm_host(nodelist: str) -> str:
    """First host name of a Slurm node list such as ``gpu[003-005,010],cpu01`` -> ``gpu003``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    m = re.match(r"^(.*?)\[([^\]]+)\](.*)$", first)
    if not m:
        return first
    prefix, ranges, suffix = m.groups()
    lo = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{lo}{suffix}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rendezvous(info: LaunchInfo) -> tuple[str, int]:
    """Find MASTER_ADDR/PORT: environment, else MPI broadcast from rank 0, else the Slurm node list."""
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if info.launcher == "mpi":
        try:
            from mpi4py import MPI  # imported here: only MPI launches need it
        except ImportError:
            raise ConfigError("launched by MPI but mpi4py is not installed: pip install 'hpcfed[mpi]', or mpi4py "
                              "built against the site's MPI (README: using a cluster's MPI), or set MASTER_ADDR "
                              "and MASTER_PORT") from None

        comm = MPI.COMM_WORLD
        addr = None
        if comm.Get_rank() == 0:
            host = socket.gethostname()
            # Ranks on one node (the common single-node case) can always reach loopback.
            addr = (host, _free_port())
        addr = comm.bcast(addr, root=0)
        host, port = addr
        if host == socket.gethostname():
            host = "127.0.0.1"
        return host, port
    if "SLURM_JOB_NODELIST" in os.environ:
        host = first_slurm_host(os.environ["SLURM_JOB_NODELIST"])
        port = 15000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000
        return host, port
    return "127.0.0.1", _free_port()


DEVICES = ("auto", "cpu", "cuda")
"""The values of ``dist.device``."""


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """The one place a ``dist.device`` value becomes a :class:`torch.device`.

    Args:
        requested: ``'auto'`` (CUDA when a device is visible, else CPU), ``'cpu'`` or ``'cuda'``.
        local_rank: this process's rank on its node; CUDA picks ``cuda:{local_rank % device_count}``.

    Returns:
        ``cpu`` or ``cuda:{i}``.

    Raises:
        ConfigError: ``'cuda'`` without a visible CUDA device, or a value outside :data:`DEVICES` (one line,
            naming the key).
    """
    if requested not in DEVICES:
        raise ConfigError(f"dist.device={requested!r} is not valid; valid: {', '.join(DEVICES)}")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise ConfigError("dist.device=cuda but no CUDA device is visible (torch.cuda.is_available() is "
                              "False); use dist.device=cpu or auto")
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass
class Runtime:
    """The process's place in the job: rank, world, device, and whether a process group is up."""

    info: LaunchInfo
    device: torch.device
    backend: Optional[str]

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0

    def shutdown(self) -> None:
        """Destroy the process group. Unreferenced tensors are collected first, on this thread: a tensor whose
        last reference sits in a finished gloo work item is otherwise freed by gloo's worker thread, which
        aborts the process (SIGABRT) if that happens while Python is finalizing (seen once in 20 2-rank runs,
        torch 2.14.1, after the job had finished)."""
        if dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


def init_runtime(*, device: str = "auto", backend: str = "auto", timeout_s: float = 600.0,
                 num_threads: Optional[int] = None) -> Runtime:
    """Detect the launcher, choose the device by local rank, and start the process group when world > 1.

    Args:
        device: 'auto' (CUDA ``cuda:{local_rank % n}`` when available, else CPU), 'cpu' or 'cuda'.
        backend: 'auto' (NCCL on CUDA, gloo on CPU), 'nccl' or 'gloo'.
        timeout_s: collective timeout (seconds); a dead peer fails the others after at most this.
        num_threads: CPU threads for this rank; None divides the node's cores among its local ranks.

    Raises:
        ConfigError: 'cuda' requested without a CUDA device (:func:`resolve_device`); 'nccl' on CPU; a backend
            outside 'auto' / 'nccl' / 'gloo'; an MPI launch without mpi4py (one line each, naming the key).
    """
    info = detect_launch()
    dev = resolve_device(device, info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if num_threads is None:
            num_threads = max(1, (os.cpu_count() or 1) // max(1, info.local_world_size))
            num_threads = min(num_threads, cores)
        torch.set_num_threads(num_threads)
    if backend not in ("auto", "nccl", "gloo"):
        raise ConfigError(f"dist.backend={backend!r} is not valid; valid: auto, nccl, gloo")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError(f"dist.backend=nccl needs a CUDA device, but this process runs on {dev.type} "
                          f"(dist.device={device}); use dist.backend=gloo or auto")
    if info.world_size > 1 and not dist.is_initialized():
        addr, port = _rendezvous(info)
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{addr}:{port}",
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        return Runtime(info, dev, backend)
    return Runtime(info, dev, None)
