#!/usr/bin/env bash
# Masking-level sweep of a denoising autoencoder on MNIST (conf/experiment/vincent2010_masking.yaml).
# QUICK=1 (default): 5,000 training images, 2 epochs per level, for a smoke run on a CPU;
# QUICK=0: the full 55,000 / 20 epochs. Extra arguments go to Hydra (e.g. trainer=gpu).
# Each job writes outputs/multirun/<time>/<job>/metrics.json (test/mse, test/psnr, test/ssim).
set -euo pipefail
quick=()
if [[ "${QUICK:-1}" == "1" ]]; then
  quick=(data.limit=5000 data.val_size=1000 trainer.max_epochs=2)
fi
nice -n 10 uv run latentbench train -m experiment=vincent2010_masking corruption.fraction=0.1,0.25,0.4,0.6 \
  logger=csv "${quick[@]}" "$@"
