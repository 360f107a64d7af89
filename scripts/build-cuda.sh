#!/usr/bin/env bash
# Builds the `cuda` feature on a machine with no GPU and no CUDA toolkit, and
# packs the binaries plus the models they need into .cuda-out/ (git-ignored),
# ready to be carried to the lent GPU machine and run there with
#   LD_LIBRARY_PATH=/usr/local/cuda/lib64
# (unpack first: `xz -d -k .cuda-out/bin/*.xz`).
#
# Usage (from anywhere):
#   scripts/build-cuda.sh
#
# Environment (all optional):
#   CUDA_SETUP      toolchain script to source   (default: <repo>/../shared/cuda/setup-toolchain.sh)
#   CUDA_TOOLCHAIN  where the CUDA wheels live   (default: /opt/cuda13)
#   CARGO_TARGET_DIR cargo target dir            (default: <repo>/target-cuda)
#   MODELS          space-separated model dirs  (default: <repo>/../shared/models/py-m <repo>/../shared/models/py-s)
#   CARGO_NICE      niceness for cargo           (default: 10)
#
# A cold build (candle's CUDA kernels) takes ~15 minutes on 2 cores; keep the
# target dir to make later builds incremental.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

CUDA_SETUP="${CUDA_SETUP:-$repo/../shared/cuda/setup-toolchain.sh}"
CUDA_TOOLCHAIN="${CUDA_TOOLCHAIN:-/opt/cuda13}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target-cuda}"
MODELS="${MODELS:-$repo/../shared/models/py-m $repo/../shared/models/py-s}"
CARGO_NICE="${CARGO_NICE:-10}"
out="$repo/.cuda-out"

# --- 1. toolchain: nvcc, cuBLAS, cuRAND, runtime, stub libcuda --------------
# The setup script is meant to be sourced and may reference unset variables,
# so relax `-u` while it runs.
if [[ ! -f "$CUDA_SETUP" ]]; then
  echo "error: toolchain script not found: $CUDA_SETUP (set CUDA_SETUP)" >&2
  exit 1
fi
set +u
# shellcheck source=/dev/null
source "$CUDA_SETUP" "$CUDA_TOOLCHAIN"
set -u

# --- 2. build ----------------------------------------------------------------
# Examples and integration tests wanted on the GPU; missing ones are skipped.
examples=()
for ex in generate speedup; do
  if [[ -f "examples/$ex.rs" ]]; then
    examples+=("$ex")
  else
    echo "skip: examples/$ex.rs does not exist"
  fi
done
tests=()
for t in cuda; do
  if [[ -f "tests/$t.rs" ]]; then
    tests+=("$t")
  else
    echo "skip: tests/$t.rs does not exist"
  fi
done

cargo_nice() { nice -n "$CARGO_NICE" cargo "$@"; }

start=$(date +%s)
if ((${#examples[@]})); then
  args=()
  for ex in "${examples[@]}"; do args+=(--example "$ex"); done
  echo "+ cargo build --release --features cuda ${args[*]}  (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  cargo_nice build --release --features cuda "${args[@]}"
fi

# Test binaries have hashed names; ask cargo for their paths via JSON messages.
test_bins=()
if ((${#tests[@]})); then
  args=()
  for t in "${tests[@]}"; do args+=(--test "$t"); done
  echo "+ cargo test --release --features cuda --no-run ${args[*]}"
  json="$(cargo_nice test --release --features cuda --no-run --message-format=json "${args[@]}")"
  for t in "${tests[@]}"; do
    path="$(printf '%s\n' "$json" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and m["target"]["name"] == name and "test" in m["target"]["kind"]):
        print(m["executable"])
' "$t" | tail -n1)"
    # Fallback: newest executable deps/<name>-<hash>.
    if [[ -z "$path" ]]; then
      path="$(find "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -type f -executable \
                -name "$t-*" ! -name '*.d' -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)"
    fi
    if [[ -z "$path" ]]; then
      echo "error: no test binary found for tests/$t.rs" >&2
      exit 1
    fi
    test_bins+=("$t=$path")
  done
fi
echo "build took $(( $(date +%s) - start )) s"

# --- 3. pack binaries: strip, xz ---------------------------------------------
# Stripped copies are staged in the target dir; only the .xz goes to .cuda-out.
stage="$CARGO_TARGET_DIR/cuda-stage"
rm -rf "$out/bin" "$stage"
mkdir -p "$out/bin" "$stage"
pack() { # pack NAME SRC
  local name="$1" src="$2"
  cp "$src" "$stage/$name"
  strip "$stage/$name"
  rm -f "$stage/$name.xz"
  xz -T2 -k "$stage/$name"
  mv "$stage/$name.xz" "$out/bin/$name.xz"
  printf '  %-12s raw %6s  stripped %6s  xz %6s\n' "$name" \
    "$(du -h "$src" | cut -f1)" "$(du -h "$stage/$name" | cut -f1)" \
    "$(du -h "$out/bin/$name.xz" | cut -f1)"
}
echo "binaries -> $out/bin/"
for ex in ${examples[@]+"${examples[@]}"}; do
  pack "$ex" "$CARGO_TARGET_DIR/release/examples/$ex"
done
for tb in ${test_bins[@]+"${test_bins[@]}"}; do
  pack "test-${tb%%=*}" "${tb#*=}"
done

# --- 4. models -----------------------------------------------------------------
rm -rf "$out/models"
mkdir -p "$out/models"
for m in $MODELS; do
  name="$(basename "$m")"
  mkdir -p "$out/models/$name"
  for f in config.json tokenizer.json generation_config.json model.safetensors; do
    if [[ -f "$m/$f" ]]; then
      cp "$m/$f" "$out/models/$name/"
    else
      echo "warning: $m/$f missing" >&2
    fi
  done
  echo "model $name -> $out/models/$name/"
done

# --- 5. size check (the device tool's carry limit is 64 MiB) -------------------
bytes=$(du -sb "$out" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "total .cuda-out: $bytes bytes (~$mib MiB)"
if (( bytes > 64 * 1048576 )); then
  echo "error: .cuda-out exceeds the 64 MiB carry limit" >&2
  exit 1
elif (( bytes > 60 * 1048576 )); then
  echo "warning: .cuda-out is over 60 MiB; little headroom under the 64 MiB carry limit" >&2
fi
