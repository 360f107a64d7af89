#!/usr/bin/env python3
"""llama.cpp on the benchmark prompts, for scripts/bench-cpu.sh.

Runs binaries you built yourself (this repository does not build or ship
llama.cpp): plain greedy decoding of the target with `llama-cli -no-cnv`, and
speculative decoding with `llama-speculative-simple`, interleaved prompt by
prompt, the first prompt a warm-up, as examples/speedup does. Prints a table of
medians over prompts and, last, one JSON line.

    scripts/llamacpp_peer.py --bin ~/llama.cpp/build/bin --gguf DIR \
        --prompts ../shared/bench/prompts_py.json --max-new-tokens 128 --threads 2

DIR holds py-m-f32.gguf, py-m-bf16.gguf, py-s-f32.gguf and py-xs-f32.gguf
(convert_hf_to_gguf.py --outtype f32 / bf16 of ../shared/models/*).

ms/token is end to end: (prompt pass + decoding) / generated tokens, as our
examples/speedup and hf_peer.py count it. llama-speculative-simple stops at
the end of a window past -n, so its runs may generate a few tokens more than
the plain runs' n; each is divided by its own count. llama.cpp's BF16 path rounds the
activations to bf16 before each product (its vec_dot_type for BF16), so only
the F32 model computes what transformers and specdec compute.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile


def perf(err, which):
    """The last `llama_perf_context_print` line for `which` (the target's)."""
    # `llama_perf_context_print` in older llama.cpp, `common_perf_print` in newer.
    m = re.findall(
        rf"_perf_(?:context_)?print:\s+{which} time =\s+([\d.]+) ms /\s+(\d+) (?:tokens|runs)", err
    )
    if not m:
        sys.exit(f"no '{which} time' line in llama.cpp's output:\n{err[-2000:]}")
    return float(m[-1][0]), int(m[-1][1])


def spec_row(err):
    """ms/token end to end and decoding, and acceptance, of a speculative run
    (llama-speculative-simple, llama-lookup), each over its own token count."""
    enc = re.search(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds", err)
    dec = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", err)
    drafted = int(re.search(r"n_drafted\s*= (\d+)", err).group(1))
    accepted = int(re.search(r"n_accept\s*= (\d+)", err).group(1))
    tokens = int(dec.group(1))
    enc_ms, dec_ms = float(enc.group(2)) * 1e3, float(dec.group(2)) * 1e3
    return dict(e2e=(enc_ms + dec_ms) / tokens, decode=dec_ms / tokens,
                acceptance=accepted / max(drafted, 1))


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="llama.cpp's build/bin")
    ap.add_argument("--gguf", required=True, help="directory of the converted models")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n = args.max_new_tokens
    prompts = json.load(open(args.prompts))
    common = ["--no-escape", "--temp", "0", "--top-k", "1", "--ignore-eos",
              "-t", str(args.threads), "-c", "2048", "-s", "1"]
    g = lambda name: os.path.join(args.gguf, f"{name}.gguf")
    configs = {"plain F32": ("plain", "py-m-f32", None, None, None),
               "plain BF16": ("plain", "py-m-bf16", None, None, None)}
    for draft in ["py-xs", "py-s"]:
        for k, p_min in [(4, 0.0), (8, 0.0), (8, 0.75)]:
            # --draft-max k drafts k tokens: a verify window of k + 1 in
            # examples/speedup's terms.
            configs[f"{draft} draft-max {k} p-min {p_min:g}"] = ("spec", "py-m-f32", draft, k, p_min)
    rows = {name: [] for name in configs}
    commands = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, prompt in enumerate(prompts):
            path = os.path.join(tmp, f"p{i}.txt")
            # -f drops one trailing newline: add one so the prompt is exact.
            with open(path, "w") as f:
                f.write(prompt + "\n")
            for name, (kind, target, draft, k, p_min) in configs.items():
                if kind == "plain":
                    cmd = [f"{args.bin}/llama-cli", "-m", g(target), "-f", path, "-no-cnv",
                           "-n", str(n)] + common
                else:
                    # It stops once it has more than -n tokens: -n n-1 gives >= n.
                    cmd = [f"{args.bin}/llama-speculative-simple", "-m", g(target),
                           "-md", g(f"{draft}-f32"), "-f", path, "-n", str(n - 1),
                           "-td", str(args.threads), "--draft-max", str(k), "--draft-min", "0",
                           "--draft-p-min", str(p_min)] + common
                commands[name] = (" ".join(cmd).replace(path, "PROMPT.txt")
                                  .replace(args.bin, "$LLAMA_CPP_BIN").replace(args.gguf, "$GGUF_DIR"))
                err = run(cmd)
                if i == 0:
                    continue  # warm-up
                if kind == "plain":
                    pp_ms, _ = perf(err, "prompt eval")
                    ev_ms, ev_runs = perf(err, "eval")
                    rows[name].append(dict(e2e=(pp_ms + ev_ms) / n, decode=ev_ms / ev_runs))
                else:
                    rows[name].append(spec_row(err))
    med = lambda name, key: statistics.median(r[key] for r in rows[name])
    plain = med("plain F32", "e2e")
    print(f"llama.cpp, {len(prompts) - 1} prompts (+1 warm-up), {n} tokens, {args.threads} threads, "
          f"greedy; medians; speedup over plain F32")
    print("| run | ms/token | decode ms/token | speedup | acceptance |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for name in configs:
        e2e, dec = med(name, "e2e"), med(name, "decode")
        acc = med(name, "acceptance") if "acceptance" in rows[name][0] else None
        summary[name] = dict(ms_per_token=e2e, decode_ms_per_token=dec, speedup=plain / e2e,
                             acceptance_rate=acc, command=commands[name])
        acc_s = f"{acc:.3f}" if acc is not None else ""
        print(f"| {name} | {e2e:.2f} | {dec:.2f} | {plain / e2e:.2f}x | {acc_s} |")
    for name, cmd in commands.items():
        print(f"# {name}: {cmd}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
