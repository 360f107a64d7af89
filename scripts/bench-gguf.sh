#!/usr/bin/env bash
# A real GGUF model (SmolLM2-135M-Instruct, Q4_1) on the CPU: ours
# (examples/speedup) and llama.cpp (scripts/llamacpp_gguf_peer.py) back to
# back in one run, same prompts, same threads, greedy unless said:
#
#   1. plain decoding on the file's blocks (--target-as-stored), the row to
#      hold against llama.cpp's plain Q4_1;
#   2. the dequantized f32 target with its own 4-bit copy as the draft
#      (--draft-as-stored: the same file twice), greedy and at T = 0.7;
#   3. the n-gram drafter on the dequantized target, on the copy-heavy
#      prompts_repeat.json (llama.cpp: llama-lookup on an F32 copy).
#
# Writes docs/bench/gguf-*.txt.
#
#   LLAMA_CPP_BIN=<your llama.cpp build/bin> scripts/bench-gguf.sh
#
# llama.cpp is yours to build (this repository does not build or ship it):
# e.g. from the vendored sources of the llama-cpp-python sdist on PyPI,
# `cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build
# --target llama-completion llama-speculative-simple llama-lookup
# llama-quantize`. Without LLAMA_CPP_BIN only our rows run. Its F32 copy of the
# model is made with its llama-quantize (--allow-requantize ... F32).
#
# Knobs (environment): TOKENS (128), THREADS (2), ROUNDS (2), GGUF (the Q4_1
# file in ../shared), F32 (/tmp/smollm2-f32.gguf).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
shared="${SHARED:-$repo/../shared}"
gguf="${GGUF:-$shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
tokens="${TOKENS:-128}"
threads="${THREADS:-2}"
rounds="${ROUNDS:-2}"
prompts="$shared/bench/prompts_py.json"
repeat="$shared/bench/prompts_repeat.json"
out="${OUT:-$repo/docs/bench}"
mkdir -p "$out"

cargo build --release --example speedup
speedup="$repo/target/release/examples/speedup"
{ echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
  echo "command: scripts/bench-gguf.sh (TOKENS=$tokens THREADS=$threads ROUNDS=$rounds)"
  echo "model: $(basename "$gguf")"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (with uncommitted changes)')"
} > "$out/gguf-machine.txt"

common=(--prompts "$prompts" --max-new-tokens "$tokens" --threads "$threads" --rounds "$rounds")
echo "== ours: plain on the Q4_1 blocks (and the n-gram drafter beside it)"
"$speedup" --target "$gguf" --target-as-stored --ngram 3 --k 8 "${common[@]}" 2>/dev/null \
  | tee "$out/gguf-plain-q4.txt"
echo "== ours: dequantized target + its Q4_1 blocks as the draft, greedy"
"$speedup" --target "$gguf" --draft "$gguf" --draft-as-stored --k 2,3,4,5,6,8 --adaptive-k 4,8 \
  "${common[@]}" 2>/dev/null | tee "$out/gguf-self-draft.txt"
echo "== ours: dequantized target + its Q4_1 blocks as the draft, T = 0.7"
"$speedup" --target "$gguf" --draft "$gguf" --draft-as-stored --k 4,8 --adaptive-k 8 \
  --temperature 0.7 "${common[@]}" 2>/dev/null | tee "$out/gguf-self-draft-t07.txt"
echo "== ours: dequantized target, n-gram drafter, prompts_repeat.json"
"$speedup" --target "$gguf" --ngram 3 --k 4,8,12 --prompts "$repeat" --max-new-tokens "$tokens" \
  --threads "$threads" --rounds "$rounds" 2>/dev/null | tee "$out/gguf-ngram-repeat.txt"

if [[ -n "${LLAMA_CPP_BIN:-}" ]]; then
  f32="${F32:-/tmp/smollm2-f32.gguf}"
  [[ -f "$f32" ]] || "$LLAMA_CPP_BIN/llama-quantize" --allow-requantize "$gguf" "$f32" F32 >/dev/null 2>&1
  echo "== llama.cpp"
  python3 "$repo/scripts/llamacpp_gguf_peer.py" --bin "$LLAMA_CPP_BIN" --gguf "$gguf" --f32 "$f32" \
    --prompts "$prompts" --repeat-prompts "$repeat" --max-new-tokens "$tokens" --threads "$threads" \
    | tee "$out/gguf-llamacpp.txt"
fi
