# Sourced by the scripts in slurm/ from the repository root (sbatch runs a copy of a job script, so they cd to
# $SLURM_SUBMIT_DIR first and source this by its path there). Sets PY and the job environment.
#
# PY: $HPCFED_PYTHON, else the repository's .venv, else python3.
PY=${HPCFED_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
# Hub access: offline (HF cache only) unless HPCFED_ALLOW_DOWNLOAD=1 is exported at submission; an
# HF_HUB_OFFLINE already in the environment is kept. Downloads also need model.allow_download=true in the config
# (hpcfed.main sets HF_HUB_OFFLINE=1 itself when that key is false). Compute nodes often have no network:
# fill the cache on a login node first (docs/models.md, "Hub models").
if [ "${HPCFED_ALLOW_DOWNLOAD:-0}" != 1 ]; then
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
fi
