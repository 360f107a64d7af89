#!/usr/bin/env bash
# N-gram drafting (prompt lookup, no draft model) against plain decoding, ours
# (examples/speedup --ngram) and Hugging Face transformers' prompt lookup
# (scripts/hf_peer_lookup.py --prompt-lookup), back to back in one run: py-m
# and the memory-bound py-m-wide (py-m widened to an 8192 MLP by
# ../shared/models/widen.py, identical logits), greedy, on the repeat prompts
# (Python functions followed by the start of a copy) and on the usual
# prompts_py.json (where little matches: the cost of trying).
# Writes docs/bench/ngram-*.{txt,json}.
#
#   scripts/bench-ngram.sh          # needs ../shared, PYTHON with torch + transformers
#
# Knobs (environment): TOKENS (128), THREADS (2), ROUNDS (2), NGRAM (3, our
# longest match), K (4,8,12: our windows), LOOKUP (10: transformers'
# prompt_lookup_num_tokens), WIDE (/tmp/py-m-wide), PEER=0 to skip transformers.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
shared="${SHARED:-$repo/../shared}"
models="$shared/models"
python="${PYTHON:-python3}"
tokens="${TOKENS:-128}"
threads="${THREADS:-2}"
rounds="${ROUNDS:-2}"
ngram="${NGRAM:-3}"
k="${K:-4,8,12}"
lookup="${LOOKUP:-10}"
out="${OUT:-$repo/docs/bench}"
mkdir -p "$out"
wide="${WIDE:-/tmp/py-m-wide}"
[[ -f "$wide/model.safetensors" ]] || python3 "$models/widen.py" "$models/py-m" "$wide" --intermediate-size 8192

cargo build --release --example speedup
speedup="$repo/target/release/examples/speedup"
{ echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
  echo "command: scripts/bench-ngram.sh (TOKENS=$tokens THREADS=$threads ROUNDS=$rounds NGRAM=$ngram K=$k LOOKUP=$lookup)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (with uncommitted changes)')"
  echo "transformers: $("$python" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo unknown)"
} > "$out/ngram-machine.txt"

for prompts in repeat py; do
  file="$shared/bench/prompts_$prompts.json"
  for model in py-m py-m-wide; do
    dir="$models/$model"
    [[ $model == py-m-wide ]] && dir="$wide"
    name="ngram-$model-$prompts"
    echo "== ours: $model, prompts_$prompts.json, --ngram $ngram"
    "$speedup" --target "$dir" --ngram "$ngram" --prompts "$file" --max-new-tokens "$tokens" \
      --threads "$threads" --rounds "$rounds" --k "$k" 2>/dev/null | tee "$out/$name.txt"
    if [[ "${PEER:-1}" != 0 ]]; then
      echo "== transformers: $model, prompts_$prompts.json, prompt_lookup_num_tokens $lookup"
      "$python" "$repo/scripts/hf_peer_lookup.py" --target "$dir" --prompts "$file" \
        --prompt-lookup "$lookup" --max-new-tokens "$tokens" --threads "$threads" 2>/dev/null \
        | tee "$out/$name-hf.txt" | tail -1 > "$out/$name-hf.json"
      cat "$out/$name-hf.txt"
    fi
  done
done
