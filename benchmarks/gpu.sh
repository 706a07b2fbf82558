#!/usr/bin/env bash
# The harness on a CUDA GPU, in one run of under 8 minutes; every number goes to one JSON file.
#
#   benchmarks/gpu.sh CPU_RESULTS [--out FILE] [--work DIR]
#   benchmarks/gpu.sh --dry-run [CPU_RESULTS] [--out FILE] [--work DIR]
#
# CPU_RESULTS: the results.json of `pytest claims/ --model smollm2-135m --model minilm-l6` run on a CPU
# (float32, default settings) at the same commit. In order, each step bounded so that the whole run ends
# by its deadline (GPU_SH_DEADLINE seconds, default 470; a step with too little time left is skipped and
# the JSON says so; GPU_SH_ONLY="claims map", say, reruns only those of the parts ratios, claims, map):
#   1. benchmarks/ratios.py on CUDA: random-weight SmolLM2-135M-shaped and ~1B-parameter Llama-shaped
#      models, float32 and bfloat16, batch 4 at 128 and 1,024 tokens (capture), 2,048 (head statistics,
#      decoding), with peak memory (the first run also compares a planted model's verdicts with the CPU's);
#   2. the claims on smollm2-135m and minilm-l6 on CUDA in float32, compared with CPU_RESULTS
#      (`python -m massact diff`, and every value within 1e-4 relative: benchmarks/gpu_summary.py);
#   3. the 1B model saved as a model folder, its massive.* claims run whole on the GPU and then spread over
#      the GPU and the CPU (`--device-map auto --max-memory 0=2GiB,cpu=32GiB`), the two compared.
# The JSON goes to benchmarks/results/gpu-<device>.json (--out to change). --dry-run does the same steps on
# this machine's CPU with a tiny model shape, short sequences, one claim and few samples (the CPU run is
# made first when CPU_RESULTS is not given); tests/test_gpu_bench.py runs it so the script cannot rot.
# Runs from the repository root's .venv (scripts/setup), or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

dry=0 baseline="" out="" work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --out) out=$2; shift ;;
        --work) work=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 4 ;;
        *) baseline=$1 ;;
    esac
    shift
done
if [ ! -x "$PY" ]; then
    echo "gpu.sh: no Python at $PY: run scripts/setup test first (or set PYTHON)" >&2; exit 4
fi
if [ -n "$baseline" ] && [ ! -f "$baseline" ]; then
    echo "gpu.sh: $baseline is not a file: give the CPU run's results.json" >&2; exit 4
fi

if [ "$dry" = 1 ]; then
    device=cpu shapes=(tiny) dtypes=(float32 bfloat16)
    ratio_args=(--tokens 16 32 --long 64 --rounds 1 --no-memory)
    claim_args=(claims/massive.toml -k "massive.exists and not gpt2" --nsamples 2 --resamples 0)
    map_shape=tiny map_args=(--max-memory cpu=6MiB)
    out=${out:-${TMPDIR:-/tmp}/massact-gpu-dry-run.json}
else
    if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "gpu.sh: torch sees no CUDA device here; --dry-run runs the same steps on the CPU" >&2; exit 4
    fi
    if [ -z "$baseline" ]; then
        echo "gpu.sh: give the CPU run's results.json (pytest claims/ --model smollm2-135m --model minilm-l6)" >&2
        exit 4
    fi
    device=cuda shapes=(smollm2-135m llama-1b) dtypes=(float32 bfloat16)
    ratio_args=()
    claim_args=(claims/ -n 2)
    map_shape=llama-1b map_args=(--max-memory 0=2GiB,cpu=32GiB)
    name=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
    out=${out:-benchmarks/results/gpu-$name.json}
fi
if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/massact-gpu.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

start=$SECONDS deadline=${GPU_SH_DEADLINE:-470} only=" ${GPU_SH_ONLY:-ratios claims map} "
# step NAME CAP CMD...: CMD bounded by CAP seconds and by the deadline; its output in $work/NAME.log, its
# status in $work/NAME.rc, its time in $work/NAME.seconds; a step with under 20 s left is skipped (status 125)
step() {
    local name=$1 cap=$2 left rc=0 t0=$SECONDS
    shift 2
    left=$((deadline - (SECONDS - start)))
    [ "$cap" -lt "$left" ] || cap=$left
    if [ "$cap" -lt 20 ]; then
        echo "[gpu.sh] $name: skipped, ${left} s left of ${deadline}" >&2
        echo 125 > "$work/$name.rc"
        return 0
    fi
    echo "[gpu.sh] $name (at most ${cap} s): $*" >&2
    timeout -s INT -k 15 "$cap" "$@" > "$work/$name.log" 2>&1 || rc=$?
    echo "[gpu.sh] $name: exit status $rc after $((SECONDS - t0)) s" >&2
    echo "$rc" > "$work/$name.rc"
    echo $((SECONDS - t0)) > "$work/$name.seconds"
}
compare() {  # compare BASE NAME: massact diff of NAME's results.json against BASE, into $work/NAME.diff
    local new
    new=$(ls "$work/$2"/*/results.json 2>/dev/null | tail -1 || true)
    [ -n "$new" ] && [ -f "$1" ] || return 0
    "$PY" -m massact diff "$1" "$new" > "$work/$2.diff" 2>&1 && echo 0 > "$work/$2.diff.rc" || echo $? > "$work/$2.diff.rc"
}

# 1. ratios
first=1
[[ $only == *" ratios "* ]] || shapes=()
for shape in "${shapes[@]}"; do
    for dtype in "${dtypes[@]}"; do
        planted=(--no-planted)
        [ "$first" = 1 ] && planted=()
        first=0
        step "ratios-$shape-$dtype" 150 "$PY" benchmarks/ratios.py --shape "$shape" --dtype "$dtype" "${ratio_args[@]}" \
            "${planted[@]}" --out "$work/ratios-$shape-$dtype.json"
    done
done

# 2. the built-ins' claims on the device, against the CPU's verdicts
if [[ $only == *" claims "* ]]; then
    if [ "$dry" = 1 ] && [ -z "$baseline" ]; then
        step baseline 120 "$PY" -m pytest "${claim_args[@]}" --model smollm2-135m --model minilm-l6 --device cpu \
            --report-dir "$work/baseline" -q
        baseline=$(ls "$work"/baseline/*/results.json 2>/dev/null | tail -1 || true)
    fi
    step claims 300 "$PY" -m pytest "${claim_args[@]}" --model smollm2-135m --model minilm-l6 --device "$device" \
        --report-dir "$work/claims" -q
    compare "$baseline" claims
fi

# 3. the 1B model whole on the device, then spread over the device and the CPU by accelerate
if [[ $only == *" map "* ]]; then
    step save 60 "$PY" benchmarks/ratios.py --shape "$map_shape" --save "$work/model"
    map_claims=(claims/massive.toml -k "not gpt2 and not document" --nsamples 4 --resamples 0)
    [ "$dry" = 1 ] && map_claims=("${claim_args[@]}")
    step whole 60 "$PY" -m pytest "${map_claims[@]}" --model "$work/model" --device "$device" \
        --report-dir "$work/whole" -q
    step spread 90 "$PY" -m pytest "${map_claims[@]}" --model "$work/model" --device "$device" --device-map auto \
        "${map_args[@]}" --report-dir "$work/spread" -q
    compare "$(ls "$work"/whole/*/results.json 2>/dev/null | tail -1)" spread
fi

"$PY" benchmarks/gpu_summary.py "$work" "$out" ${baseline:+"$baseline"}
echo "[gpu.sh] done in $((SECONDS - start)) s: $out" >&2
