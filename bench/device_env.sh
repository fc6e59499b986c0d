# Source on the GPU machine, in the repo root, after `bash bench/device_prep.sh` ran here and .whl and
# .data were carried: installs the carried wheels beside the image's packages and points the
# benchmarks at them, at src/ and at the carried MNIST; W&B offline.
#
#     source bench/device_env.sh && COLLECT=$OUT bash bench/gpu.sh fused
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 3
export PYTHONPATH=/tmp/site:$PWD/src:$PWD LATENTBENCH_DATA=$PWD/.data PYTHON=python3 PYTHONUNBUFFERED=1
export WANDB_MODE=offline WANDB_SILENT=true
