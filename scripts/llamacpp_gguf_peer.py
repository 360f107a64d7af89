#!/usr/bin/env python3
"""llama.cpp on a real GGUF model, for scripts/bench-gguf.sh.

Runs binaries you built yourself (this repository does not build or ship
llama.cpp; `scripts/bench-gguf.sh` says how) on the same prompts as our
examples/speedup, greedy, prompt by prompt, the first prompt a warm-up:

- plain decoding of the quantized file (`llama-completion -no-cnv`) and of an
  F32 copy of it (`llama-quantize --allow-requantize FILE F32.gguf F32`);
- speculative decoding with the F32 copy as target and the quantized file as
  its draft (`llama-speculative-simple --spec-type draft-simple`), 4 and 8
  drafts a window;
- prompt lookup on the F32 copy (`llama-lookup`, 8 drafts) and plain F32, on
  the copy-heavy prompts.

Prints a table of medians over prompts and, last, one JSON line.

    scripts/llamacpp_gguf_peer.py --bin ~/llama.cpp/build/bin --gguf M.Q4_1.gguf \
        --f32 M.F32.gguf --prompts ../shared/bench/prompts_py.json \
        --repeat-prompts ../shared/bench/prompts_repeat.json --max-new-tokens 128

ms/token is end to end: (prompt pass + decoding) / generated tokens, as our
examples/speedup counts it; "decode" leaves the prompt pass out. Speculative
runs stop at the end of a window past -n, so each is divided by its own
token count.
"""
import argparse
import json
import os
import statistics
import tempfile

from llamacpp_peer import perf, run, spec_row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="llama.cpp's build/bin")
    ap.add_argument("--gguf", required=True, help="the quantized model file")
    ap.add_argument("--f32", required=True, help="its F32 copy")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--repeat-prompts", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n = args.max_new_tokens
    common = ["--no-escape", "--temp", "0", "--top-k", "1", "--ignore-eos",
              "-t", str(args.threads), "-c", "4096", "-s", "1"]
    plain = lambda model, path: [f"{args.bin}/llama-completion", "-m", model, "-f", path,
                                 "-no-cnv", "-n", str(n)] + common
    # It stops once it has more than -n tokens: -n n-1 gives >= n.
    spec = lambda k, path: [f"{args.bin}/llama-speculative-simple", "-m", args.f32,
                            "-md", args.gguf, "--spec-type", "draft-simple", "-f", path,
                            "-n", str(n - 1), "-td", str(args.threads),
                            "--spec-draft-n-max", str(k), "--spec-draft-n-min", "0"] + common
    lookup = lambda k, path: [f"{args.bin}/llama-lookup", "-m", args.f32, "-f", path,
                              "-n", str(n - 1), "--spec-draft-n-max", str(k)] + common
    suites = {
        "prompts": (args.prompts, {
            "plain quantized": ("plain", lambda p: plain(args.gguf, p)),
            "plain F32": ("plain", lambda p: plain(args.f32, p)),
            "F32 + quantized draft, 4 drafts": ("spec", lambda p: spec(4, p)),
            "F32 + quantized draft, 8 drafts": ("spec", lambda p: spec(8, p)),
        }),
        "repeat": (args.repeat_prompts, {
            "repeat: plain F32": ("plain", lambda p: plain(args.f32, p)),
            "repeat: lookup F32, 8 drafts": ("spec", lambda p: lookup(8, p)),
        }),
    }
    rows, commands = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for suite, (prompt_file, configs) in suites.items():
            prompts = json.load(open(prompt_file))
            for name in configs:
                rows[name] = []
            for i, prompt in enumerate(prompts):
                path = os.path.join(tmp, f"{suite}{i}.txt")
                # -f drops one trailing newline: add one so the prompt is exact.
                with open(path, "w") as f:
                    f.write(prompt + "\n")
                for name, (kind, make) in configs.items():
                    cmd = make(path)
                    commands[name] = (" ".join(cmd).replace(path, "PROMPT.txt")
                                      .replace(args.bin, "$LLAMA_CPP_BIN"))
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
    print(f"llama.cpp, {n} tokens, {args.threads} threads, greedy; medians over prompts "
          f"(the first of each file a warm-up); speedup over plain F32 on the same prompts")
    print("| run | ms/token | decode ms/token | speedup (decode) | acceptance |")
    print("|---|---:|---:|---:|---:|")
    summary = {}
    for name in rows:
        base = "repeat: plain F32" if name.startswith("repeat") else "plain F32"
        e2e, dec = med(name, "e2e"), med(name, "decode")
        speedup, speedup_dec = med(base, "e2e") / e2e, med(base, "decode") / dec
        acc = med(name, "acceptance") if "acceptance" in rows[name][0] else None
        summary[name] = dict(ms_per_token=e2e, decode_ms_per_token=dec, speedup=speedup,
                             decode_speedup=speedup_dec, acceptance_rate=acc,
                             command=commands[name])
        acc_s = f"{acc:.3f}" if acc is not None else ""
        print(f"| {name} | {e2e:.2f} | {dec:.2f} | {speedup:.2f}x ({speedup_dec:.2f}x) | {acc_s} |")
    for name, cmd in commands.items():
        print(f"# {name}: {cmd}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
