#!/usr/bin/env bash
# rgb vs ycbcr vs lab colorizers with the same budget on coco-mini (32x32, 150 steps each), one after
# the other; each run writes outputs/colorization/<color space>/metrics.json. Usage (from the repo root):
#   bash experiments/colorization/run.sh [extra overrides, e.g. trainer=gpu]
set -euo pipefail
for space in rgb ycbcr lab; do
  nice -n 10 uv run latentbench train model=colorizer model.color_space=$space model.channels=[16,32,64] \
    data=images data.root=../shared/data/coco-mini data.image_size=32 data.batch_size=16 \
    trainer.max_steps=150 trainer.max_epochs=1000 seed=1234 logger=csv \
    hydra.run.dir=outputs/colorization/$space "$@"
done
uv run python - <<'PY'
import json, pathlib
print("| color_space | test/mse | test/psnr | test/ssim | test/recon_sse |")
print("| --- | --- | --- | --- | --- |")
for space in ("rgb", "ycbcr", "lab"):
    m = json.loads(pathlib.Path(f"outputs/colorization/{space}/metrics.json").read_text())
    print(f"| {space} | {m['test/mse']:.5f} | {m['test/psnr']:.2f} | {m['test/ssim']:.4f} | {m['test/recon_sse']:.2f} |")
PY
