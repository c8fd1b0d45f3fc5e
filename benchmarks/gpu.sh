#!/usr/bin/env bash
# The GPU check for a lent H100/H200, in a few minutes:
#   1. consistency step vs SFT step, bf16, the Qwen2.5-0.5B architecture (random weights), T=512, full fine-tuning
#      (6N per trained token is then what runs) -> ratios, tokens/s, peak memory, MFU against 989 TFLOP/s;
#   2. the same with LoRA (the ratio the CPU target is stated for);
#   3. a smoke run of `coherentize run --quick` on the GPU, stopped after 150 s.
#
#   bash benchmarks/gpu.sh                # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --dry-run      # CPU: the same steps on the tiny model, to check the script
#   BATCH=12 PEAK_TFLOPS=989 OUT=/tmp/gpu bash benchmarks/gpu.sh   # overrides
#
# Every step's output goes to $OUT (default runs/gpu-check; on the device machine its $OUT) and to stdout; a failing step is reported and the next
# one runs. The exit status is the number of failed steps.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export COHERENTIZE_CACHE=${COHERENTIZE_CACHE:-$HOME/.cache/coherentize}
PY=${PYTHON:-python}
fail=0

step() {  # step NAME SECONDS CMD...: run with a time limit, log, keep going on failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "=== $name: STOPPED at its ${limit} s limit"; fi
    if [ "$rc" -ne 0 ]; then fail=$((fail + 1)); fi
}

if ! $PY -c "import coherentize" 2>/dev/null; then
    echo "coherentize is not importable: installing the checkout without dependencies"
    $PY -m pip install -q --no-deps -e . || { echo "pip install failed"; exit 99; }
fi
$PY - <<'PYEOF' | tee "$OUT/env.log"
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
try:
    import trl; print("trl", trl.__version__)
except ImportError:
    print("trl not installed: the TRL SFTTrainer arm is skipped")
PYEOF

if [ $DRY -eq 1 ]; then
    MODEL="--model tiny --device cpu --dtype float32 --seq-len 96 --response-len 32 --batch 2 --steps 1 --warmup 1"
    QUICK_LIMIT=60
else
    # 8 clusters = 24 trained rows x 512 tokens; plain SFT needs ~1.5 GB per row here (full-vocabulary logits).
    MODEL="--model qwen2.5-0.5b-arch --device cuda --dtype bfloat16 --seq-len 512 --response-len 64 --batch ${BATCH:-8} --steps 5 --warmup 2"
    QUICK_LIMIT=150
fi
ARMS="SFT,SFT-TRL,output-KL,output-KL +leash,BCT,ACT,output-KL+ACT,output-KL+ACT +leash"
step ratio_full 240 $PY benchmarks/step_ratio.py $MODEL --full --arms "$ARMS" --peak-tflops "${PEAK_TFLOPS:-989}"
step ratio_lora 180 $PY benchmarks/step_ratio.py $MODEL --lora --arms "SFT,output-KL+ACT,output-KL+ACT +leash" \
    --peak-tflops "${PEAK_TFLOPS:-989}"

# The end-to-end smoke: `coherentize run --quick` (stopped after QUICK_LIMIT s; a timeout counts as a failure).
if $PY -m coherentize run --help >/dev/null 2>&1; then
    step run_quick "$QUICK_LIMIT" $PY -m coherentize run --quick --set out_dir="$OUT/run_quick"
else
    echo "=== run_quick: skipped, 'coherentize run' does not exist in this checkout"
fi
echo "=== failed steps: $fail"
exit $fail
