"""Launcher environment, devices, process group, collectives over flat buffers, client placement."""

from hpcfed.dist.comm import Comm, CountingComm, LocalComm, MainFailed, TorchDistComm, make_comm
from hpcfed.dist.placement import place_clients
from hpcfed.dist.runtime import LaunchInfo, Runtime, detect_launch, init_runtime, resolve_device

__all__ = [
    "Comm", "CountingComm", "LocalComm", "MainFailed", "TorchDistComm", "make_comm", "place_clients", "LaunchInfo",
    "Runtime", "detect_launch", "init_runtime", "resolve_device",
]
