#!/usr/bin/env bash
# Where a 7B-shape decode step spends its time, in one device call (from the
# repo root, carrying .cuda-out; see scripts/bench-gpu-7b.sh):
#   1. cuBLAS alone (through PyTorch, replayed as CUDA graphs, weights rotated
#      so that nothing is served from L2): the step's bf16 products at 1 and
#      8 columns, against the copy bandwidth;
#   2. Nsight Compute's duration of every kernel of a few plain decode steps
#      of ours, summed by kernel name.
# Writes under $OUT: gemm.txt, ncu.csv, ncu-summary.txt.
set -euo pipefail
OUT="${OUT:-/tmp/gpu-profile}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
grow "$SPECDEC_SHARED_MODELS/py-m" "$work/py-7b" llama2-7b

python3 - <<'PY' | tee "$out/gemm.txt"
import torch
shapes = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096),
          "down": (4096, 11008), "head": (8192, 4096)}
copies = 4
total = {1: 0.0, 8: 0.0}
for name, (m, k) in shapes.items():
    ws = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    for n in (1, 8):
        x = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(n, m, device="cuda", dtype=torch.bfloat16)
        for w in ws:
            torch.matmul(x, w.t(), out=y)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(25):
                for w in ws:
                    torch.matmul(x, w.t(), out=y)
        g.replay(); torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); g.replay(); e.record(); e.synchronize()
        us = s.elapsed_time(e) * 1e3 / (25 * copies)
        tbs = m * k * 2 / (us * 1e-6) / 1e12
        per_token = us * (32 if name != "head" else 1)
        total[n] += per_token
        print(f"{name:8s} {m:6d}x{k:<6d} n={n}: {us:7.1f} us  {tbs:5.2f} TB/s  x{32 if name != 'head' else 1} = {per_token/1e3:6.3f} ms")
for n in (1, 8):
    print(f"all products of one step, n={n}: {total[n]/1e3:.3f} ms")
PY

# A prompt of a few tokens and 6 plain decode steps; every kernel timed.
ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  .cuda-out/bin/generate --cuda --target "$work/py-7b" --k 1 \
  --prompt "def main():" --max-new-tokens 6 > "$out/ncu.csv" 2> "$out/ncu.err" || {
  tail -20 "$out/ncu.err"; exit 1; }
python3 - "$out/ncu.csv" <<'PY' | tee "$out/ncu-summary.txt"
import collections, csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
by = collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    name = r[ki].split("(")[0][:60]
    by[name][0] += 1
    by[name][1] += float(r[vi].replace(",", "")) / 1e3  # ns -> us
total = sum(t for _, t in by.values())
print(f"{len(rows)} kernels, {total/1e3:.2f} ms in all")
for name, (n, t) in sorted(by.items(), key=lambda x: -x[1][1])[:25]:
    print(f"{t/1e3:8.3f} ms {n:6d} x {t/n:8.2f} us  {name}")
PY
