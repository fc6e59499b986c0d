#!/usr/bin/env bash
# The GPU half of the benchmarks, in one go (about 15 minutes on an H200, up to 9 of them time to quality):
#
#     bash bench/gpu.sh                 # uses `uv run python`; or PYTHON="python3" bash bench/gpu.sh
#     bash bench/gpu.sh time_to_quality checkpoint_ab     # only these sections
#     bash bench/gpu.sh overhead diffusion eval test; bash bench/gpu.sh time_to_quality   # under 10 minutes each
#
# Sections: overhead, time_to_quality, diffusion, eval, test (the default set) and checkpoint_ab (the
# measurement behind callbacks.periodic_checkpoint's default: by time, not every 100 steps).
#
# Each benchmark writes its JSON under bench/results/ and prints its one-line summary; a failing or
# slow one is cut by its own timeout and the rest still run. With $COLLECT set, the results and the
# log are packed into $COLLECT/gpu-results.tar.gz after every step, so what finished survives a cut.
set -u
PYTHON=${PYTHON:-uv run python}
LOG=${LOG:-bench/results/gpu.log}
STARTED=$(date +%s)
mkdir -p bench/results

collect() {
    [ -n "${COLLECT:-}" ] || return 0
    tar -czf "$COLLECT/gpu-results.tar.gz" "$LOG" "$LOG.detail" $(find bench/results -name '*.json' -newer "$LOG.start" 2>/dev/null) \
        $(find bench/results -name '*profile*.txt' -newer "$LOG.start" 2>/dev/null) 2>/dev/null
}

step() {  # step SECONDS ARGS...: one benchmark under a timeout, logged
    local limit=$1; shift
    echo "== [$(( $(date +%s) - STARTED )) s] $*" | tee -a "$LOG"
    timeout "$limit" $PYTHON "$@" >"$LOG.step" 2>&1
    local rc=$?
    cat "$LOG.step" >>"$LOG.detail"
    grep -E '^(overhead|diffusion|time to quality|eval)|[0-9]+ (passed|failed)' "$LOG.step" | tail -1 | tee -a "$LOG"
    [ $rc -eq 0 ] || { echo "   exit $rc; last lines:" | tee -a "$LOG"; tail -5 "$LOG.step" | tee -a "$LOG"; }
    collect
}

SECTIONS=${*:-overhead time_to_quality diffusion eval test}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

touch "$LOG.start"; : >"$LOG"; : >"$LOG.detail"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"

# harness overhead: Hinton MLP and conv AE, data served from the CPU and held on the GPU
if want overhead; then
    for model in ae_hinton ae_conv; do
        step 90 -m bench.overhead --model "$model" --device cuda --steps 500 --reps 3
        step 90 -m bench.overhead --model "$model" --device cuda --steps 500 --reps 3 --on-device
    done
fi
# time to 13.87 (PCA-30) with the fastest CPU recipe, data on the GPU
if want time_to_quality; then
    # the default recipe (test 2.904 on a CPU core in 37 min), test error timed every 5 epochs; batch 128
    # is launch-bound on a GPU: guessed 3-5 s an epoch on an H200, hence its own call (see the header)
    step 560 -m bench.time_to_quality --device cuda --on-device --precision bf16-mixed --test-every 5 --max-minutes 8.5
fi
# LDM training throughput and MFU at a GPU-sized shape: 64 px images -> 4x32x32 latents
LDM64=(--device cuda --precision bf16-mixed --batch-size 256 --image-size 64 --num-train 16384 --unet-channels 128,256 --steps 100)
if want diffusion; then
    step 150 -m bench.diffusion --conditioning text "${LDM64[@]}" --reps 3
    step 120 -m bench.diffusion --conditioning class "${LDM64[@]}" --reps 3
fi
# FID + CLIP score as a share of an LDM run on the GPU (setup on the CPU)
if want eval; then
    step 150 -m bench.eval --model ldm --device cuda --steps 64 --reps 1
fi
# the suite's GPU test (bf16-mixed + compile + data on the GPU)
if want test; then
    step 150 -m pytest -m gpu tests/test_hardware.py -q
fi
# last.ckpt by time (the default) against every 100 steps (the default before)
if want checkpoint_ab; then
    EVERY100=callbacks.periodic_checkpoint.every_n_steps=100
    step 60 -m bench.overhead --model ae_hinton --device cuda --steps 500 --reps 3 --on-device --profile
    step 60 -m bench.overhead --model ae_hinton --device cuda --steps 500 --reps 3 --on-device \
        --override $EVERY100 --name overhead-ae_hinton-cuda-ondevice-ckpt100
    step 90 -m bench.diffusion --conditioning class "${LDM64[@]}" --reps 2
    step 90 -m bench.diffusion --conditioning class "${LDM64[@]}" --reps 2 \
        --override $EVERY100 --name diffusion-class-cuda-bf16-mixed-64px-ckpt100
fi
echo "== [$(( $(date +%s) - STARTED )) s] done" | tee -a "$LOG"
collect
