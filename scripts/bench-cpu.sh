#!/usr/bin/env bash
# The CPU benchmark behind README.md's tables: our speculative vs plain
# decoding (examples/speedup) and Hugging Face transformers' plain vs
# assisted generation (../shared/bench/hf_peer.py), back to back in one run,
# on the in-cache pair (py-m target) and the memory-bound one (py-m widened
# to 8192 MLP, identical logits). Writes docs/bench/cpu-*.{txt,json,svg}.
#
#   scripts/bench-cpu.sh            # needs ../shared, a release build, and
#                                   # PYTHON with torch + transformers for the peer
#
# llama.cpp, optional: LLAMA_CPP_BIN=<your llama.cpp build/bin> and
# GGUF_DIR=<py-m-f32.gguf, py-m-bf16.gguf, py-s-f32.gguf, py-xs-f32.gguf>
# add scripts/llamacpp_peer.py to the run (this repository does not build or
# ship llama.cpp; convert the checkpoints with its convert_hf_to_gguf.py).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
shared="${SHARED:-$repo/../shared}"
models="$shared/models"
prompts="$shared/bench/prompts_py.json"
python="${PYTHON:-python3}"
tokens="${TOKENS:-128}"
threads="${THREADS:-2}"
rounds="${ROUNDS:-2}"
out="$repo/docs/bench"
mkdir -p "$out"
wide="${WIDE:-/tmp/py-m-wide}"
[[ -f "$wide/model.safetensors" ]] || python3 "$models/widen.py" "$models/py-m" "$wide" --intermediate-size 8192

cargo build --release --example speedup
speedup="$repo/target/release/examples/speedup"
l3="$(lscpu | awk -F: '/^L3 cache/ {gsub(/^ +/, "", $2); print $2}')"
hf_version="$("$python" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo unknown)"
{ echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), L3 $l3, $(date -u +%F)"
  echo "command: scripts/bench-cpu.sh (TOKENS=$tokens THREADS=$threads ROUNDS=$rounds)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (with uncommitted changes)')"
  echo "threads: $threads"
  echo "transformers: $hf_version"; } > "$out/cpu-machine.txt"
# A llama.cpp table from an earlier run must not sit beside this run's.
rm -f "$out/cpu-llamacpp.txt"

run() { # name target draft [extra args]
  local name=$1 target=$2 draft=$3; shift 3
  echo "== ours: $name"
  "$speedup" --target "$target" --draft "$draft" --prompts "$prompts" --max-new-tokens "$tokens" \
    --threads "$threads" --rounds "$rounds" --k 2,3,4,5,6,8,12 --adaptive-k 4,8,12 --svg "$out/cpu-$name.svg" "$@" 2>/dev/null | tee "$out/cpu-$name.txt"
}
peer() { # name target draft
  local name=$1 target=$2 draft=$3
  echo "== transformers: $name"
  "$python" "$shared/bench/hf_peer.py" --target "$target" --draft "$draft" --prompts "$prompts" \
    --max-new-tokens "$tokens" --threads "$threads" 2>/dev/null | tail -1 | tee "$out/cpu-$name-hf.json"
}

run py-m-py-s "$models/py-m" "$models/py-s"
run py-m-py-s-q8 "$models/py-m" "$models/py-s" --quantize-draft
peer py-m-py-s "$models/py-m" "$models/py-s"
run py-m-py-xs "$models/py-m" "$models/py-xs"
peer py-m-py-xs "$models/py-m" "$models/py-xs"
if [[ -n "${LLAMA_CPP_BIN:-}" ]]; then
  echo "== llama.cpp: py-m with py-xs and py-s"
  python3 scripts/llamacpp_peer.py --bin "$LLAMA_CPP_BIN" --gguf "${GGUF_DIR:?set GGUF_DIR}" \
    --prompts "$prompts" --max-new-tokens "$tokens" --threads "$threads" | tee "$out/cpu-llamacpp.txt"
fi
run wide-py-s "$wide" "$models/py-s"
run wide-py-s-q8 "$wide" "$models/py-s" --quantize-draft
peer wide-py-s "$wide" "$models/py-s"
python3 "$repo/scripts/readme_bench.py"
