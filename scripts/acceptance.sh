#!/usr/bin/env bash
# Acceptance of rejection sampling (Leviathan et al.; the default) beside
# reproducible sampling (Gumbel-max keyed by seed and position), for py-m
# with py-s and py-xs at temperatures 0.7 and 1.0: one fixed window, the same
# prompts, and a markdown table of acceptance (accepted / drafted) and tokens
# per target pass. Rejection sampling's acceptance is the largest any exact
# scheme can have, 1 - TV(p, q) per token; the reproducible mode's is at
# least (1 - TV) / (1 + TV).
#
#   scripts/acceptance.sh             # needs ../shared and a release build
#
# Knobs: TOKENS (128), K (5), THREADS (2), PROMPTS (../shared/bench/prompts_py.json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
shared="${SHARED:-$repo/../shared}"
models="$shared/models"
tokens="${TOKENS:-128}"
k="${K:-5}"
threads="${THREADS:-2}"
prompts="${PROMPTS:-$shared/bench/prompts_py.json}"
cargo build --release --example speedup
speedup="$repo/target/release/examples/speedup"
rows=()
for draft in py-s py-xs; do
  for t in 0.7 1.0; do
    for mode in rejection reproducible; do
      flag=()
      [[ $mode == reproducible ]] && flag=(--reproducible)
      echo "running py-m + $draft, T=$t, $mode" >&2
      rows+=("$("$speedup" --target "$models/py-m" --draft "$models/$draft" --prompts "$prompts" \
        --max-new-tokens "$tokens" --threads "$threads" --k "$k" --temperature "$t" "${flag[@]}" --json 2>/dev/null)")
    done
  done
done
lines="$(mktemp)"
printf '%s\n' "${rows[@]}" > "$lines"
python3 - "$lines" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {(r["draft"], round(r["temperature"], 3), r["sampling_mode"]): r["runs"][0] for r in runs}
first = runs[0]
print(f"py-m target, window k = {first['runs'][0]['k']}, {first['max_new_tokens']} tokens x {first['prompts']} prompts")
print("| draft | T | rejection acceptance | reproducible acceptance | rejection tokens/pass | reproducible tokens/pass | reproducible identical to plain |")
print("|---|---:|---:|---:|---:|---:|:---:|")
for draft, t in sorted({(d, t) for d, t, _ in by}):
    a, b = by[(draft, t, "rejection")], by[(draft, t, "reproducible")]
    same = {True: "yes", False: "NO", None: "n/a"}[b["identical"]]
    print(f"| {draft} | {t} | {a['acceptance_rate']:.3f} | {b['acceptance_rate']:.3f} | "
          f"{a['tokens_per_target_call']:.2f} | {b['tokens_per_target_call']:.2f} | {same} |")
PY
rm -f "$lines"
