#!/usr/bin/env bash
# A/B of the CUDA decode step's switches (graph.rs: SPECDEC_CUDA_PDL,
# SPECDEC_CUDA_GEMV_UNROLL, _TILES, SPECDEC_CUDA_ATT_PREFETCH, _ROWS) in
# one device call: the GPU tests under the default, with every switch off
# and with two tiles a block everywhere, then the 7B/1.1B pair (grown as
# bench-gpu-7b.sh grows it) with each variant, greedy, plain and
# speculative. Output: the speedup tables, one per variant, under $OUT.
#   scripts/build-cuda.sh, then in one device call: OUT=$OUT scripts/ab-gpu.sh
# VARIANTS picks the runs (default "default nopdl u4 u8"):
#   default, single, w1     k = 8, 12, 16 and adaptive k <= 8, 12, 16
#   mt1, late               k = 8, 12 and adaptive k <= 8, 12
#   nopdl, u4, u8           k = 8 and adaptive k <= 8
#   t07                     k = 4, 8 and adaptive k <= 8 at temperature 0.7
#   confX                   k = 8, 12 and adaptive k <= 8, 12 stopping below confidence X
# nopdl: no programmatic dependent launch; u4 / u8 / mt1: the product
# kernel's slabs in flight / tiles a block fixed; late: attention loads
# the cache only after its wait; single: attention a block per (head, row)
# at every width; w1: the target also gets a width-1 graph, for plain
# steps. SKIP_TESTS=1 skips the tests.
set -euo pipefail
OUT="${OUT:-/tmp/ab-gpu-out}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
echo "commit $(cat .cuda-out/commit.txt)"
run_tests() { # run_tests LABEL [ENV...]
  local label="$1"; shift
  if env "$@" "$bin/test-cuda" --test-threads 1 > "$out/test-$label.txt" 2>&1; then
    echo "tests ($label): $(grep 'test result' "$out/test-$label.txt")"
  else
    tail -30 "$out/test-$label.txt"; echo "tests ($label) FAILED"; exit 1
  fi
}
if [[ -z "${SKIP_TESTS:-}" ]]; then
  run_tests default
  run_tests no-switches SPECDEC_CUDA_PDL=0 SPECDEC_CUDA_GEMV_UNROLL=4 SPECDEC_CUDA_GEMV_TILES=1 SPECDEC_CUDA_ATT_PREFETCH=0 SPECDEC_CUDA_ATT_ROWS=0
  run_tests two-tiles SPECDEC_CUDA_GEMV_TILES=2
fi
grow_pair
variant() { # variant LABEL "ENV..." ARGS...
  local label="$1" envs="$2"; shift 2
  env $envs "$bin/speedup" --cuda --target "$work/py-7b" --draft "$work/py-1b" \
    --prompts "$shared/prompts_py.json" --max-new-tokens "$N" "$@" > "$out/ab-$label.txt" 2>&1 \
    || { tail -20 "$out/ab-$label.txt"; exit 1; }
  echo "== $label ($envs $*)"
  grep -E "^plain|^\| +(<= )?[0-9]" "$out/ab-$label.txt"
}
for v in ${VARIANTS:-default nopdl u4 u8}; do
  case "$v" in
    default) variant default "" --k 8,12,16 --adaptive-k 8,12,16 ;;
    nopdl) variant nopdl "SPECDEC_CUDA_PDL=0" --k 8 --adaptive-k 8 ;;
    u4) variant u4 "SPECDEC_CUDA_GEMV_UNROLL=4" --k 8 --adaptive-k 8 ;;
    u8) variant u8 "SPECDEC_CUDA_GEMV_UNROLL=8" --k 8 --adaptive-k 8 ;;
    mt1) variant mt1 "SPECDEC_CUDA_GEMV_TILES=1" --k 8,12 --adaptive-k 8,12 ;;
    late) variant late "SPECDEC_CUDA_ATT_PREFETCH=0" --k 8,12 --adaptive-k 8,12 ;;
    single) variant single "SPECDEC_CUDA_ATT_ROWS=0" --k 8,12,16 --adaptive-k 8,12,16 ;;
    w1) variant w1 "" --k 8,12,16 --adaptive-k 8,12,16 --graph-widths 1,8,16 ;;
    t07) variant t07 "" --k 4,8 --adaptive-k 8 --temperature 0.7 ;;
    conf*) variant "$v" "" --k 8,12 --adaptive-k 8,12 --min-draft-confidence "${v#conf}" ;;
  esac
done
