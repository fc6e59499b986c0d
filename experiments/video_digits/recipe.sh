#!/usr/bin/env bash
# The README's video recipe end to end on the CPU (under 30 minutes on one core): frame classifier,
# first stage, the video LDM trained and at initialisation (0 steps), then clips and the denoising.
# Usage: bash experiments/video_digits/recipe.sh [output folder, default outputs/video_digits]
# Prints each step's wall and CPU time (bash `time`) and the total wall time at the end.
set -euo pipefail
out=${1:-outputs/video_digits}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
lb="uv run latentbench"
start=$SECONDS
time $lb train experiment=video_digits_classifier logger=csv hydra.run.dir=$out/classifier
time $lb train experiment=video_digits_ae logger=csv hydra.run.dir=$out/ae
ldm="experiment=video_digits_ldm logger=csv model.first_stage.checkpoint=$out/ae metrics.fid.checkpoint=$out/classifier"
time $lb train $ldm hydra.run.dir=$out/ldm
time $lb sample checkpoint=$out/ldm output=$out/samples classes=[0,1,2,3,4,5,6,7,8,9] per_condition=1 steps=20 guidance_scale=6 trajectory=true
time $lb train $ldm trainer.max_steps=0 hydra.run.dir=$out/ldm_init   # the same measures before any training step
echo "recipe total: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s wall (CPU: the sum of the user + sys times above)"
