#!/bin/bash
# Run from anywhere: it changes to the repository root (three levels up).
cd "$(dirname "$0")/../../.." && source .venv/bin/activate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
COMMON="config=configs/text_classification.yaml progress=false data.partition=dirichlet data.alpha=1.0 data.num_clients=10 data.num_shards=2 data.max_train_samples=6000 data.max_length=64 fl.rounds=6 fl.cohort_size=10 fl.local.steps=5 fl.local.batch_size=32 fl.local.bf16=false fl.local.head_lr=1.0 eval.every_rounds=3 checkpoint.every_rounds=0 checkpoint.export_model=false model.path=$HOME/.cache/hpcfed/models/all-mpnet-base-v2 seed=1 data.seed=1 out_dir=runs/mpnet_peft_smoke"
for m in "adapter 0.3" "prompt 1.0"; do set -- $m
  /usr/bin/time -f "wall_s %e" flock /tmp/hpcfed_cpu.lock mpirun --oversubscribe --bind-to none --allow-run-as-root -n 2 python -m hpcfed.main $COMMON peft.method=$1 fl.local.lr=$2 name=mpnet_$1_seed-1
done
