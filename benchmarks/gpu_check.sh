#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: in at most 8 minutes, the gpu-marked tests, the Triton kernels on
# CUDA against their references, an NCCL all-reduce over every visible GPU (torchrun), the main job on CUDA for
# 3 rounds and the kernel bandwidth benchmark, each under its own timeout; ONE JSON result file (exit code, wall
# seconds, output tail and parsed numbers per step; GPU, driver, torch/CUDA/triton versions, date, git commit).
# The steps and the JSON are described in benchmarks/gpu_check.py.
#
# Usage:  benchmarks/gpu_check.sh [OUT.json]          (default docs/results/gpu_check.json)
#         PYTHON=/path/to/python benchmarks/gpu_check.sh    (default .venv/bin/python, else python3)
# Exit:   0 every step passed, 1 a step failed or timed out, 2 no CUDA GPU visible (nothing run, no JSON written),
#         124 the whole check ran past 475 s and was killed (no JSON written).
set -u
if [ $# -ge 1 ]; then  # a relative OUT is relative to the caller's directory, not the repository root
    case "$1" in /*) out=$1 ;; *) out=$PWD/$1 ;; esac
    shift
    set -- "$out" "$@"
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
# The steps' own timeouts and the 450 s budget of benchmarks/gpu_check.py keep it under 8 minutes; this is the
# backstop for the driver itself.
exec timeout -k 5 475 "$PY" -m benchmarks.gpu_check "$@"
