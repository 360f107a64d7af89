#!/usr/bin/env bash
# Builds the `cuda` feature on a machine with no GPU and no CUDA toolkit, and
# packs the binaries plus the models they need into .cuda-out/ (git-ignored),
# ready to be carried to the lent GPU machine (name `.cuda-out` in `carry`):
#   .cuda-out/bin/bins.tar.xz                all binaries, stripped, one solid xz
#   .cuda-out/models/<name>/                 config.json, generation_config.json,
#                                            tokenizer.json.xz, model.safetensors.xz (or .from:
#                                            the same file in the repo's models/)
#   .cuda-out/shared/                        grow.py and the benchmark prompts (for
#                                            scripts/bench-gpu-7b.sh; ../shared does not travel)
#   .cuda-out/commit.txt                     the commit the binaries were built from
#   .cuda-out/unpack.sh                      unpacks both in place
# There:
#   sh .cuda-out/unpack.sh
#   SPECDEC_MODELS=$PWD/models LD_LIBRARY_PATH=/usr/local/cuda/lib64 .cuda-out/bin/generate ...
#   SPECDEC_MODELS=$PWD/models SPECDEC_SHARED_MODELS=$PWD/.cuda-out/models \
#     LD_LIBRARY_PATH=/usr/local/cuda/lib64 .cuda-out/bin/test-cuda
# (SPECDEC_MODELS: the embedded pair, which the binaries otherwise look for at
# this machine's absolute path of the checkout.)
# Everything that travels (tracked tree ~15 MiB + .cuda-out) must fit in
# 64 MiB; the script checks this at the end and fails if it does not.
#
# Usage (from anywhere):
#   scripts/build-cuda.sh
#
# Environment (all optional):
#   CUDA_SETUP      toolchain script to source   (default: <repo>/../shared/cuda/setup-toolchain.sh)
#   CUDA_TOOLCHAIN  where the CUDA wheels live   (default: /opt/cuda13)
#   CARGO_TARGET_DIR cargo target dir            (default: <repo>/target-cuda)
#   MODELS          space-separated model dirs  (default: py-m, py-s and
#                   arch/qwen2-tiny of <repo>/../shared/models: q/k/v biases,
#                   head_dim 16; the other tiny ones would not fit in 64 MiB)
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
shared="$repo/../shared"
MODELS="${MODELS:-$shared/models/py-m $shared/models/py-s $shared/models/arch/qwen2-tiny}"
CARGO_NICE="${CARGO_NICE:-10}"
out="$repo/.cuda-out"

# A target dir inside the checkout must be git-ignored, or it would count
# towards (and blow) the 64 MiB working tree the device tool carries. .gitignore
# names only /target, so mark the dir ignored from inside, as cargo does for
# its default target dir.
mkdir -p "$CARGO_TARGET_DIR"
if [[ "$(cd "$CARGO_TARGET_DIR" && pwd)/" == "$repo/"* ]] && ! git check-ignore -q "$CARGO_TARGET_DIR"; then
  echo '*' > "$CARGO_TARGET_DIR/.gitignore"
fi

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
    echo "  test binary $t: $path"
    test_bins+=("$t=$path")
  done
fi
echo "build took $(( $(date +%s) - start )) s"


# --- 3. pack binaries: strip, one solid xz archive -----------------------------
# Each stripped binary is ~53 MB and ~6.7 MB as its own .xz, but they share
# almost everything (candle's PTX and its 33 MB .nv_fatbin), so one tar with
# xz -9 (64 MiB dictionary) holds all of them for little more than one.
# Stripped copies are staged in the target dir; only the archive goes to
# .cuda-out. Skipped when the stripped binaries did not change.
stage="$CARGO_TARGET_DIR/cuda-stage"
rm -rf "$stage/bin"
mkdir -p "$stage/bin" "$out/bin"
find "$out/bin" -mindepth 1 ! -name bins.tar.xz -exec rm -rf {} +   # older layouts
names=()
stage_bin() { # stage_bin NAME SRC
  cp "$1" "$stage/bin/$2"
  strip "$stage/bin/$2"
  names+=("$2")
  printf '  %-12s raw %6s  stripped %6s\n' "$2" \
    "$(du -h "$1" | cut -f1)" "$(du -h "$stage/bin/$2" | cut -f1)"
}
echo "binaries:"
for ex in ${examples[@]+"${examples[@]}"}; do
  stage_bin "$CARGO_TARGET_DIR/release/examples/$ex" "$ex"
done
for tb in ${test_bins[@]+"${test_bins[@]}"}; do
  stage_bin "${tb#*=}" "test-${tb%%=*}"
done
archive="$out/bin/bins.tar.xz"
if ((${#names[@]})); then
  sums="$(cd "$stage/bin" && sha256sum "${names[@]}")"
  if [[ -f "$archive" && -f "$stage/bins.sha256" && "$sums" == "$(cat "$stage/bins.sha256")" ]]; then
    echo "  $archive unchanged"
  else
    rm -f "$stage/bins.sha256"
    tar -C "$stage/bin" -cf - "${names[@]}" | nice -n "$CARGO_NICE" xz -9 -T2 > "$archive.tmp"
    mv "$archive.tmp" "$archive"
    printf '%s\n' "$sums" > "$stage/bins.sha256"
  fi
  echo "  -> $archive ($(du -h "$archive" | cut -f1); ${names[*]})"
else
  rm -f "$archive"
fi

# --- 4. models -----------------------------------------------------------------
# The working tree that travels to the GPU machine (tracked files + carried
# paths) may hold 64 MiB in all, and the tracked tree is ~15 MiB, so the
# weights go xz-compressed: bf16 safetensors shrink ~30% with lc=0,lp=1,pb=1
# (2-byte aligned data). config.json and generation_config.json stay plain;
# tokenizer.json and model.safetensors become .xz. Recompressed only when the
# source is newer than the .xz.
mkdir -p "$out/models"
wanted=()
for m in $MODELS; do
  name="$(basename "$m")"
  wanted+=("$name")
  dst="$out/models/$name"
  mkdir -p "$dst"
  # drop anything left from an older layout
  find "$dst" -mindepth 1 -maxdepth 1 ! -name config.json ! -name generation_config.json \
    ! -name tokenizer.json.xz ! -name model.safetensors.xz \
    ! -name tokenizer.json.from ! -name model.safetensors.from -exec rm -rf {} +
  for f in config.json generation_config.json; do
    if [[ -f "$m/$f" ]]; then install -m 0644 "$m/$f" "$dst/$f"; else echo "warning: $m/$f missing" >&2; fi
  done
  for f in tokenizer.json model.safetensors; do
    if [[ ! -f "$m/$f" ]]; then echo "warning: $m/$f missing" >&2; continue; fi
    # A file the repository already carries (the embedded default pair's)
    # is copied from there by unpack.sh, not packed twice.
    if cmp -s "$m/$f" "$repo/models/$name/$f"; then
      rm -f "$dst/$f.xz"
      echo "../../../models/$name/$f" > "$dst/$f.from"
      continue
    fi
    rm -f "$dst/$f.from"
    if [[ -f "$dst/$f.xz" && "$dst/$f.xz" -nt "$m/$f" ]]; then continue; fi
    opts=(-6)
    [[ "$f" == *.safetensors ]] && opts=(--lzma2=preset=6,lc=0,lp=1,pb=1)
    nice -n "$CARGO_NICE" xz -T2 "${opts[@]}" -c "$m/$f" > "$dst/$f.xz.tmp"
    mv "$dst/$f.xz.tmp" "$dst/$f.xz"
  done
  echo "model $name -> $dst/ ($(du -sh "$dst" | cut -f1))"
done
# drop model dirs no longer asked for
for d in "$out/models"/*/; do
  [[ -d "$d" ]] || continue
  n="$(basename "$d")"
  [[ " ${wanted[*]-} " == *" $n "* ]] || rm -rf "$d"
done

# --- 4b. what scripts/bench-gpu-7b.sh needs from ../shared, and the commit -----
# (../shared does not travel to the GPU machine; .cuda-out does.)
mkdir -p "$out/shared"
for f in models/grow.py bench/prompts_py.json bench/prompts_repeat.json; do
  if [[ -f "$shared/$f" ]]; then install -m 0644 "$shared/$f" "$out/shared/"; else echo "warning: $shared/$f missing" >&2; fi
done
commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- src examples tests build.rs Cargo.toml || commit="$commit+dirty"
echo "$commit" > "$out/commit.txt"
echo "commit $commit -> $out/commit.txt"

# --- 5. unpack script for the GPU machine --------------------------------------
cat > "$out/unpack.sh" <<'UNPACK'
#!/bin/sh
# On the GPU machine, from the repo root:
#   sh .cuda-out/unpack.sh
#   LD_LIBRARY_PATH=/usr/local/cuda/lib64 .cuda-out/bin/generate ...
# Unpacks bin/bins.tar.xz into bin/ and models/*/*.xz beside themselves,
# and copies the files the repository already holds (models/*/*.from).
set -e
cd "$(dirname "$0")"
unxz() {
  if command -v xz >/dev/null 2>&1; then xz -d -c "$1"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}
[ -f bin/bins.tar.xz ] && unxz bin/bins.tar.xz | tar -xf - -C bin
for f in models/*/*.xz; do [ -f "$f" ] && unxz "$f" > "${f%.xz}"; done
# A file named by a .from (a path relative to its folder) is in the repo.
for f in models/*/*.from; do [ -f "$f" ] && cp "$(dirname "$f")/$(cat "$f")" "${f%.from}"; done
echo "unpacked: $(ls bin | grep -v '\.xz$' | tr '\n' ' ')"
UNPACK
chmod +x "$out/unpack.sh"

# --- 6. size check: everything that travels must fit in 64 MiB -----------------
# That is the tracked + untracked-not-ignored files of the checkout, plus
# .cuda-out named in `carry`.
out_bytes=$(du -sb "$out" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | python3 -c '
import os, sys
print(sum(os.path.getsize(p) for p in sys.stdin.buffer.read().split(b"\0") if p and os.path.isfile(p)))')
total=$((out_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "size: .cuda-out $(mib "$out_bytes") + working tree $(mib "$tree_bytes") = $(mib "$total") (limit 64 MiB)"
if (( total > 64 * 1048576 )); then
  echo "error: over the 64 MiB the device tool carries" >&2
  exit 1
elif (( total > 62 * 1048576 )); then
  echo "warning: less than 2 MiB headroom under the 64 MiB limit" >&2
fi
