#!/usr/bin/env bash
# Issue 16's table in one device call, on the GPU machine: grows py-m to a
# Llama-2-7B-shape target and py-s to a TinyLlama-1.1B-shape draft
# (../shared/models/grow.py; same logits up to bf16 rounding), measures the
# card's copy bandwidth (the limit), runs the CUDA tests, ours (plain,
# speculative greedy, temperature 0.7, the tiny py-s draft, candle's ops) and
# transformers (plain and assisted) on the same checkpoints and prompts, and
# writes everything plus a JSON summary (gpu-7b.json) under $OUT, and all of
# it again as $OUT/gpu-7b-all.tgz.
#
# Here, first:   scripts/build-cuda.sh        (binaries, models, grow.py, prompts -> .cuda-out)
# Then, in one device call from the repo root, carrying .cuda-out:
#   scripts/bench-gpu-7b.sh            full table (~5 minutes on an H200)
#   QUICK=1 scripts/bench-gpu-7b.sh    tests, then a short run of ours only
# The grown checkpoints (13 GB + 2 GB) go to $WORK (default /tmp/specdec-7b),
# never into the repository.
set -euo pipefail
OUT="${OUT:-/tmp/gpu-7b-out}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
prompts="$shared/prompts_py.json"
commit="$(cat .cuda-out/commit.txt)"
say() { echo "== $*" | tee -a "$out/summary.txt"; }
t0=$(date +%s)
# The device tool brings back a limited number of files: everything also
# goes into one archive, written whenever the script ends.
trap 'tar -C "$out" -czf /tmp/gpu-7b-all.tgz --exclude gpu-7b-all.tgz . 2>/dev/null && mv /tmp/gpu-7b-all.tgz "$out/"' EXIT
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader \
  | tee "$out/gpu.txt"
say "commit $commit"

# 1. Tests (conformance, bit-identical rows, graph vs candle's ops, greedy
#    identity). Benchmarks of a failing build are not worth the device time.
say "test-cuda ($(elapsed))"
if ! "$bin/test-cuda" --test-threads 1 --nocapture > "$out/test-cuda.txt" 2>&1; then
  tail -40 "$out/test-cuda.txt"
  say "test-cuda FAILED"
  exit 1
fi
grep -E "^test |test result|largest difference" "$out/test-cuda.txt" | tee -a "$out/summary.txt"

# 2. The bandwidth limit: a device-to-device copy of 4 GiB (bytes read +
#    written over time, median of 20), as KINDS.md measures it.
python3 - > "$out/bandwidth.json" <<'PY'
import json, statistics, torch
n = 4 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda")
b = torch.empty_like(a)
a.random_(0, 255)
for _ in range(3):
    b.copy_(a)
times = []
for _ in range(20):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); b.copy_(a); e.record(); e.synchronize()
    times.append(s.elapsed_time(e) / 1e3)
t = statistics.median(times)
print(json.dumps({"copy_bytes": 2 * n, "median_s": t, "tb_per_s": 2 * n / t / 1e12}))
PY
say "copy bandwidth: $(cat "$out/bandwidth.json") ($(elapsed))"

# 3. Grow the pair (gpu-common.sh).
grow_pair
du -sb "$work/py-7b" "$work/py-1b" | tee "$out/sizes.txt"
say "grown ($(elapsed))"

ours() { # ours NAME ARGS...: the table, then the same run as JSON
  local name="$1"; shift
  "$bin/speedup" --cuda --target "$work/py-7b" --prompts "$prompts" --max-new-tokens "$N" "$@" \
    > "$out/ours-$name.txt" 2>&1 || { tail -20 "$out/ours-$name.txt"; exit 1; }
  cat "$out/ours-$name.txt"
}
ours_json() { # ours_json NAME ARGS...
  local name="$1"; shift
  "$bin/speedup" --cuda --target "$work/py-7b" --prompts "$prompts" --max-new-tokens "$N" "$@" --json \
    > "$out/ours-$name.json" 2> "$out/ours-$name.err" || { tail -20 "$out/ours-$name.err"; exit 1; }
}

if [[ -n "${QUICK:-}" ]]; then
  ours quick --draft "$work/py-1b" --k 4,8 --adaptive-k 8
  say "quick done ($(elapsed))"
  exit 0
fi

# 4. Ours: greedy with the 1.1B-shape draft (the headline), as a table and
#    as JSON; temperature 0.7; the tiny py-s draft.
ours_json greedy --draft "$work/py-1b" --k 2,3,4,5,6,8,12,16 --adaptive-k 4,8,12,16
say "ours greedy ($(elapsed))"
python3 - "$out/ours-greedy.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"plain {r['plain_decode_ms_per_token']:.2f} ms/token decoding, target pass {r['target_pass_ms']:.2f} ms, draft pass {r['draft_pass_ms']:.2f} ms, c = {r['cost_ratio']:.3f}")
for x in r["runs"]:
    print(f"k {x['k']}{' adaptive' if x['min_draft_confidence'] else ''}: {x['ms_per_token']:.2f} ms/token ({x['speedup']:.2f}x), decode {x['decode_ms_per_token']:.2f} ({x['decode_speedup']:.2f}x), r_k {x['verify_cost_ratio']:.2f}, identical {x['identical']}")
PY
ours_json t07 --draft "$work/py-1b" --k 4,8,16 --adaptive-k 8,16 --temperature 0.7
say "ours T=0.7 ($(elapsed))"
ours py-s --draft "$SPECDEC_SHARED_MODELS/py-s" --k 4,8,16 --adaptive-k 8,16
say "ours py-s draft ($(elapsed))"
# The same pair through candle's ops (the path before the graphs), for the record.
ours_json ops --draft "$work/py-1b" --k 8 --graph-widths off --draft-graph-widths off
say "ours on candle's ops ($(elapsed))"

# 5. transformers on the same checkpoints and prompts.
python3 scripts/hf_peer_gpu.py --target "$work/py-7b" --draft "$work/py-1b" --prompts "$prompts" \
  --max-new-tokens "$N" --device cuda --dtype bfloat16 > "$out/hf.txt" 2>&1 \
  || { tail -20 "$out/hf.txt"; exit 1; }
tail -4 "$out/hf.txt"
say "transformers ($(elapsed))"

# 6. The summary.
python3 scripts/gpu_summary.py --out "$out" --commit "$commit" --work "$work" > "$out/gpu-7b.json"
cat "$out/gpu-7b.json"
say "done ($(elapsed))"
