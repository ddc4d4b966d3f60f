"""Launcher detection from the environment of torchrun, mpirun (Open MPI, PMI) and srun."""

import pytest

from hpcfed.dist.runtime import detect_launch, first_slurm_host


@pytest.mark.parametrize("env, expect", [
    ({}, (0, 1, 0, "single")),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "x"},
     (3, 8, 1, "torchrun")),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, (5, 6, 2, "mpi")),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"}, (1, 2, 1, "mpi")),
    ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
      "SLURM_NTASKS_PER_NODE": "8(x2)"}, (9, 16, 1, "slurm")),
    # mpirun inside a Slurm allocation: MPI's own variables win over the allocation's
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
      "SLURM_JOB_ID": "7"}, (0, 2, 0, "mpi")),
])
def test_detect_launch(env, expect):
    info = detect_launch(env)
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == expect


@pytest.mark.parametrize("nodelist, host", [
    ("gpu[003-005,010],cpu01", "gpu003"), ("node7", "node7"), ("a[1,3]", "a1"), ("x-[09-12]-ib", "x-09-ib"),
])
def test_first_slurm_host(nodelist, host, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the built-in parser
    assert first_slurm_host(nodelist) == host
