#!/usr/bin/env bash
# Where a decode step's time goes on the GPU, with the kernels overlapping
# as they do in use (programmatic dependent launch, one graph a width):
# the plain pass of the grown 1.1B draft and 7B target with parts of the
# step left out (graph.rs: SPECDEC_CUDA_SKIP, timing only: the tokens are
# then wrong), so each part's cost is the difference; then the 7B verify
# of a window of 8 with and without attention. Each pass time is the median
# per-call time of plain decoding in `speedup` (7 prompts, $N tokens).
#   scripts/build-cuda.sh, then in one device call from the repo root,
#   carrying .cuda-out: OUT=$OUT scripts/breakdown-gpu.sh
# Extra environment (say SPECDEC_CUDA_ATT_ROWS=0) applies to every run.
set -euo pipefail
OUT="${OUT:-/tmp/breakdown-gpu-out}"
N="${N:-64}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
echo "commit $(cat .cuda-out/commit.txt)"
grow_pair
prompts="$shared/prompts_py.json"
products="qkv,o,gate_up,down,head"
all="norm,attention,$products"
# pass LABEL MODEL SKIP ARGS...: the model's target pass (and r_k when ARGS
# ask for a draft window), parts SKIP left out.
pass() {
  local label="$1" model="$2" skip="$3"; shift 3
  if SPECDEC_CUDA_SKIP="$skip" "$bin/speedup" --cuda --target "$model" --prompts "$prompts" \
      --max-new-tokens "$N" "$@" --json > "$out/bd-$label.json" 2> "$out/bd-$label.err"; then
    python3 - "$out/bd-$label.json" "$label" "${skip:-none}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rk = " ".join(f"r_{x['k']} {x['verify_cost_ratio']:.3f}" for x in r["runs"])
print(f"{sys.argv[2]:10s} skip {sys.argv[3]:44s} pass {r['target_pass_ms']:.3f} ms  {rk}")
PY
  else
    echo "$label (skip ${skip:-none}) FAILED: $(tail -2 "$out/bd-$label.err")"
  fi
}
# Every part of the draft; the target's big groups (a 7B load is slow).
# SKIPS_1B / SKIPS_7B replace the lists (space-separated; "-" for none).
for s in ${SKIPS_1B:-- norm attention qkv o gate_up down head "$products" "$all"}; do
  [[ "$s" == - ]] && s=""
  pass "1b-${s//,/+}" "$work/py-1b" "$s" --ngram 2 --k 2
done
for s in ${SKIPS_7B:-- norm attention "$products" "$all"}; do
  [[ "$s" == - ]] && s=""
  pass "7b-${s//,/+}" "$work/py-7b" "$s" --ngram 2 --k 2
done
# Verify of 8 (r_8) with and without attention, drafting with the 1.1B.
for s in "" attention; do
  SPECDEC_CUDA_SKIP="$s" "$bin/speedup" --cuda --target "$work/py-7b" --draft "$work/py-1b" \
    --prompts "$prompts" --max-new-tokens "$N" --k 8 --json > "$out/bd-verify-${s:-full}.json" \
    2> "$out/bd-verify-${s:-full}.err" || { echo "verify ${s:-full} FAILED"; continue; }
  python3 - "$out/bd-verify-${s:-full}.json" "${s:-none}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
x = r["runs"][0]
print(f"7b verify k=8, skip {sys.argv[2]}: target pass {r['target_pass_ms']:.3f} ms, r_8 {x['verify_cost_ratio']:.3f}, verify {x['verify_cost_ratio'] * r['target_pass_ms']:.3f} ms")
PY
done
