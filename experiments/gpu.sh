#!/usr/bin/env bash
# The paper experiments whose full budget does not fit in a few hours on the 2-core development CPU
# (issue 22), as one prepared script for a lent GPU (minutes, not hours):
#
#     bash experiments/gpu.sh                  # the default: ldm_factor (under 10 minutes on one H200)
#     bash experiments/gpu.sh ldm_factor hinton2006
#     COLLECT=$OUT bash experiments/gpu.sh     # also pack every report folder into $COLLECT/<name>-report.tar.gz
#
# Sections (each cut by its own timeout; what finished is reported and packed even when a later stage is cut):
#   ldm_factor   Rombach et al. 2022, Fig. 6 on MNIST: classifier, f = 2/4/8 first stages (5 epochs), LDM-f for
#                f = 1/2/4/8 (10 epochs each, sample FID and class accuracy of 1,000 samples every epoch)
#   hinton2006   Hinton & Salakhutdinov 2006: the table (PCA-30, deep AE-30, 3 seeds, 100 epochs) and Fig. 3
#                (on the CPU: ~45 minutes an AE seed on one core, so it also runs there, in parts: resume=<job folder>)
set -u
LB=${LB:-uv run latentbench}
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
SECTIONS=${*:-ldm_factor}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

run() {  # run SECONDS NAME ARGS...: one `latentbench experiment` stage under a timeout
    local limit=$1 name=$2; shift 2
    echo "== $(date +%T) $name $*"
    timeout "$limit" $LB experiment "$name" --out "outputs/experiments/$name/gpu_$STAMP" "$@"
    echo "   exit $?"
}

collect() {  # collect NAME: the report folder (tables, figures) of a section, for the device tool's $OUT
    local report="outputs/experiments/$1/gpu_$STAMP/report"
    [ -n "${COLLECT:-}" ] && [ -d "$report" ] && tar -czf "$COLLECT/$1-report.tar.gz" -C "$(dirname "$report")" report
    [ -d "$report" ] && cat "$report"/*.md
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if want ldm_factor; then
    run 150 ldm_factor --only classifier first_stage trainer=gpu data.num_workers=4
    run 420 ldm_factor --only ldm trainer=gpu data.num_workers=4
    collect ldm_factor
fi
if want hinton2006; then
    run 540 hinton2006 trainer=gpu data.on_device=true
    collect hinton2006
fi
