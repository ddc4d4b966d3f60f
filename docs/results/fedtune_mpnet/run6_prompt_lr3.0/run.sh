#!/bin/bash
# Post-hoc sensitivity check (session 22): MPNet prompt tuning at lr 3.0, the runner-up of the one-seed sweep,
# for seeds 1 and 2 (seed 0 at 3.0 is the sweep cell sweep-model-mpnet_method-prompt_lr-3.0_seed-0). The cells are
# fedtune_mpnet's main cells with fl.local.lr=3.0 instead of the picked 10. Seed 1 ran inside the study before 10
# was added to the grid (set aside by the runner when the pick changed); seed 2 ran with this script.
# Run from anywhere: it changes to the repository root (four levels up).
cd "$(dirname "$0")/../../../.." && source .venv/bin/activate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for seed in ${SEEDS:-1 2}; do
  flock /tmp/hpcfed_cpu.lock mpirun --oversubscribe --bind-to none --allow-run-as-root -n 2 python -m hpcfed.main \
    config=configs/text_classification.yaml progress=false data.partition=dirichlet data.alpha=1.0 \
    data.num_clients=10 data.num_shards=2 data.max_train_samples=6000 data.max_length=64 fl.rounds=6 \
    fl.cohort_size=10 fl.local.steps=5 fl.local.batch_size=32 fl.local.bf16=false fl.local.head_lr=1.0 \
    eval.every_rounds=3 checkpoint.every_rounds=0 checkpoint.export_model=false \
    'model.path=${oc.env:HPCFED_MODEL_CACHE,${oc.env:HOME}/.cache/hpcfed/models}/all-mpnet-base-v2' \
    'peft.lora_target_modules=["q", "v"]' peft.method=prompt seed=$seed data.seed=$seed fl.local.lr=3.0 \
    name=model-mpnet_method-prompt_seed-$seed out_dir=runs/fedtune_mpnet_prompt_lr3.0
done
