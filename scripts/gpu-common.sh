# Sourced (not run) by the scripts that run on the GPU machine from the
# repo root, carrying .cuda-out (bench-gpu-7b.sh, ab-gpu.sh,
# breakdown-gpu.sh, profile-gpu.sh): their common setup, and the grown 7B / 1.1B pair.
# Sets repo, out (results, $OUT), work (grown checkpoints, $WORK; never in
# the repository), N (tokens a generation), bin and shared; unpacks the
# binaries and models; exports what the binaries read.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${OUT:-/tmp/gpu-out}"
work="${WORK:-/tmp/specdec-7b}"
N="${N:-128}"
mkdir -p "$out" "$work"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export SPECDEC_MODELS="$repo/models" SPECDEC_SHARED_MODELS="$repo/.cuda-out/models"
sh .cuda-out/unpack.sh
bin="$repo/.cuda-out/bin"
shared="$repo/.cuda-out/shared"

# grow SRC DST PRESET: ../shared/models/grow.py, skipped when DST is there
# (from an earlier step of the same call); its log goes to $out.
grow() {
  if [[ ! -f "$2/config.json" ]]; then
    python3 "$shared/grow.py" "$1" "$2" --preset "$3" > "$out/grow-$(basename "$2").txt" 2>&1 \
      || { tail -20 "$out/grow-$(basename "$2").txt"; exit 1; }
  fi
}

# The pair: py-m grown to Llama-2-7B's shapes ($work/py-7b, 13 GB) and
# py-s to TinyLlama-1.1B's ($work/py-1b, 2 GB).
grow_pair() {
  grow "$SPECDEC_SHARED_MODELS/py-m" "$work/py-7b" llama2-7b
  grow "$SPECDEC_SHARED_MODELS/py-s" "$work/py-1b" tinyllama-1.1b
}
