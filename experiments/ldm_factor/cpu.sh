#!/usr/bin/env bash
# ldm_factor at a budget that fits a 2-core CPU in about an hour (Fig. 6's shape, not its scale):
#
#     bash experiments/ldm_factor/cpu.sh [OUT]     # OUT default: outputs/experiments/ldm_factor/cpu_<time>
#
# classifier   the full budget (3 epochs of MNIST at batch 128, ~1 minute)
# first_stage  f = 2, 4, 8 KL autoencoders, 480 steps of batch 64 each (half an epoch), two at a time
# ldm          LDM-f for f = 1, 2, 4, 8, the same 860 steps (one epoch of batch 64) each, validated every 200 steps on
#              20 batches, with the sample FID (domain features) and class accuracy of 256 samples
#              (DDIM 20 steps, guidance 3) at each validation and at test; two at a time
# Each stage is a resumable Hydra multirun: rerun a stopped run with `latentbench train resume=<its folder>`.
set -eu
OUT=${1:-outputs/experiments/ldm_factor/cpu_$(date +%Y-%m-%d_%H-%M-%S)}
LB=${LB:-uv run latentbench}
PARALLEL=(hydra/launcher=parallel hydra.launcher.n_jobs=2)
$LB experiment ldm_factor --only classifier --out "$OUT" trainer=cpu
$LB experiment ldm_factor --only first_stage --out "$OUT" trainer=cpu data.batch_size=64 trainer.max_epochs=1 \
    trainer.limit_train_batches=480 "${PARALLEL[@]}"
$LB experiment ldm_factor --only ldm --out "$OUT" trainer=cpu data.batch_size=64 trainer.max_epochs=1 \
    trainer.val_check_interval=200 trainer.limit_val_batches=20 \
    metrics.fid.num_images=256 metrics.fid.sample_batch_size=128 model.sampling.steps=20 "${PARALLEL[@]}"
