#!/usr/bin/env bash
# Ready this checkout for `bash bench/gpu.sh` on a bare, offline GPU machine (the workplace's `device`
# tool: Python 3.12 with torch, Lightning, torchmetrics, pandas... but no Hydra, W&B, diffusers,
# open_clip, kornia or datasets, and no uv). Run here, in the repo root, where pip reaches PyPI:
#
#     bash bench/device_prep.sh            # -> .whl/ (about 41 MB of wheels) and .data/mnist (11 MB)
#
# then on the device, with `carry: [".whl", ".data"]`:
#
#     source bench/device_env.sh && bash bench/gpu.sh ...
#
# Both folders are git-ignored through .git/info/exclude; together with the tree they stay under the
# tool's 64 MiB.
set -euo pipefail
DATA=${LATENTBENCH_DATA:-../shared/data}
# on the device image already (KINDS.md), or not needed by the benchmarks (video I/O, Optuna, SLURM)
ON_DEVICE="aiohappyeyeballs aiohttp aiosignal anyio attrs certifi charset-normalizer click contourpy cycler filelock
fonttools frozenlist fsspec h11 hf-xet httpcore httpx huggingface-hub idna imageio jinja2 joblib kiwisolver lazy-loader
lightning-utilities markdown-it-py markupsafe matplotlib mdurl mpmath multidict networkx numpy packaging pandas pillow
propcache protobuf psutil pyarrow pygments pyparsing python-dateutil pytorch-lightning pyyaml regex requests rich
safetensors scikit-image scikit-learn scipy setuptools six sympy threadpoolctl tifffile timm torch torchmetrics
torchvision tqdm triton typing-extensions urllib3 xxhash yarl zipp narwhals cuda-bindings cuda-pathfinder cuda-toolkit
tzdata cloudpickle colorama"
NOT_NEEDED="av alembic sqlalchemy cliff cmd2 cmaes colorlog optuna autopage stevedore prettytable pyperclip rich-argparse
mako hydra-optuna-sweeper submitit hydra-submitit-launcher prompt-toolkit greenlet"
skip=" $(echo $ON_DEVICE $NOT_NEEDED) "
wanted=()
while IFS= read -r line; do
    name=${line%%==*}
    [[ $name == nvidia-* || $skip == *" $name "* ]] || wanted+=("$line")
done < <(uv export --no-hashes --no-dev --no-emit-project --no-header | grep -E '^[A-Za-z0-9_.-]+==' | sed 's/ *;.*//')
# protobuf and click: the device's may be older than what W&B 0.31 asks for
wanted+=("$(uv export --no-hashes --no-dev --no-header | grep -E '^protobuf==' | sed 's/ *;.*//')")
rm -rf .whl && mkdir -p .whl .data
for spec in "${wanted[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 -d .whl "$spec" 2>/dev/null \
    || python3 -m pip wheel -q --no-deps -w .whl "$spec"  # sdist only (antlr4-python3-runtime): a pure-Python wheel
done
rm -rf .data/mnist && cp -r "$DATA/mnist" .data/
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
grep -qx '/.data/' .git/info/exclude 2>/dev/null || echo /.data/ >>.git/info/exclude
du -sh .whl .data
