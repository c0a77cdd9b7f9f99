#!/usr/bin/env bash
# Every GPU figure benchmarks/RESULTS.md still lacks, in one run on one GPU, most useful first, so a
# short loan of a machine yields what it can. Each step has its own time limit and a failure does not
# stop the next; each step's full output goes to $OUT/<step>.txt, a summary to stdout.
#
#   OUT=/tmp/figures bash benchmarks/gpu_figures.sh    # at most 12.5 min (the sum of the steps' limits)
#
# Needs the project installed (make install, or its wheels on PYTHONPATH) and a CUDA device.
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

step() {  # step NAME LIMIT_S COMMAND...: run it, keep its output, print its table rows
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    grep -E '^(\||#|Speed)' "$OUT/$name.txt" || tail -n 5 "$OUT/$name.txt"
    [ "$rc" -eq 0 ] || echo "   ($name exited $rc)"
}

python -c "import torch, sys; torch.cuda.is_available() or sys.exit('no CUDA device: nothing to measure')
print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" || exit 1
step gpu_tests 180 python -m pytest -q -m gpu tests/test_gpu.py tests/test_bf16.py
step stage2_cache 120 python benchmarks/stage2_throughput.py --device cuda --batch 16 --encoder-size base \
    --clip-model ViT-B-32 --num-voxels 15728 --steps 20 --warmup 5
step stage3_train 150 python benchmarks/stage3_throughput.py --device cuda --ldm-config cin256-f4 --batch 16 \
    --encoder-size base --num-voxels 15728 --steps 20 --warmup 5
step stage1_mae_large 150 python benchmarks/stage1_throughput.py --models mae --sizes large --modes fast \
    --batch 256 --steps 15
step stage1_profile 150 python benchmarks/profile_stage1.py --model mae --size large --batch 128
