#!/usr/bin/env python3
"""Peer baseline, extended: ../shared/bench/hf_peer.py (Hugging Face transformers
generate() on the CPU, plain greedy vs assisted generation with a draft model),
plus transformers' prompt lookup (`prompt_lookup_num_tokens`), its speculation
with no draft model, for comparison with our n-gram drafter (`--ngram`).

Run:  python3 scripts/hf_peer_lookup.py --target ../shared/models/py-m \
          --prompts ../shared/bench/prompts_repeat.json --prompt-lookup 10 --max-new-tokens 128
      (add --draft DIR to time assisted generation too, as hf_peer.py does)
Prints ms/token for each mode (median over prompts, first prompt is warm-up),
decode-only ms/token (the prompt pass timed on its own and subtracted), each
mode's speedup over plain, whether its output equals plain output, and a JSON
line.
"""
import argparse, json, statistics, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--target", required=True)
ap.add_argument("--draft", default=None, help="draft model directory: also time assisted generation")
ap.add_argument("--prompts", required=True)
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--num-assistant-tokens", type=int, default=None,
                help="draft tokens per round (transformers' own default if unset)")
ap.add_argument("--prompt-lookup", type=int, default=None, metavar="N",
                help="also time prompt lookup: transformers' prompt_lookup_num_tokens = N")
ap.add_argument("--max-matching-ngram-size", type=int, default=None,
                help="longest n-gram prompt lookup matches (transformers' default, 2, if unset)")
args = ap.parse_args()
if args.draft is None and args.prompt_lookup is None:
    ap.error("give --draft DIR, --prompt-lookup N, or both")
torch.set_num_threads(args.threads)
tok = AutoTokenizer.from_pretrained(args.target)
tgt = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
modes = {"plain": {}}
if args.draft:
    dr = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    if args.num_assistant_tokens:
        dr.generation_config.num_assistant_tokens = args.num_assistant_tokens
    modes["assisted"] = {"assistant_model": dr}
if args.prompt_lookup:
    modes["lookup"] = {"prompt_lookup_num_tokens": args.prompt_lookup}
    if args.max_matching_ngram_size:
        modes["lookup"]["max_matching_ngram_size"] = args.max_matching_ngram_size
prompts = [tok(p, return_tensors="pt").input_ids for p in json.load(open(args.prompts))]
N = args.max_new_tokens


def timed(p, **kw):
    start = time.perf_counter()
    with torch.no_grad():
        o = tgt.generate(p, attention_mask=torch.ones_like(p), **kw)
    return time.perf_counter() - start, o


result = {}
for mode, extra in modes.items():
    per_tok, decode_per_tok, outs = [], [], []
    for i, p in enumerate(prompts):
        kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, **extra)
        dt, o = timed(p, **kw)
        # The prompt pass alone (one new token, plain), to report decoding apart.
        prefill, _ = timed(p, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        if i > 0:
            per_tok.append(1000 * dt / N)
            decode_per_tok.append(1000 * max(dt - prefill, 0.0) / N)
        outs.append(o[0, p.shape[1]:].tolist())
    result[mode] = {"ms_per_token": statistics.median(per_tok),
                    "decode_ms_per_token": statistics.median(decode_per_tok), "outputs": outs}
    print(f"{mode:9s} {result[mode]['ms_per_token']:8.2f} ms/token, "
          f"{result[mode]['decode_ms_per_token']:8.2f} decoding")
summary = {"peer": "transformers", "threads": args.threads, "prompt_lookup": args.prompt_lookup,
           "max_new_tokens": N, "prompts": len(prompts) - 1}
for mode in modes:
    summary[f"{mode}_ms_per_token"] = result[mode]["ms_per_token"]
    summary[f"{mode}_decode_ms_per_token"] = result[mode]["decode_ms_per_token"]
    if mode != "plain":
        same = result[mode]["outputs"] == result["plain"]["outputs"]
        speedup = result["plain"]["ms_per_token"] / result[mode]["ms_per_token"]
        print(f"{mode}: speedup {speedup:.2f}x, output identical to plain: {same}")
        summary[f"{mode}_speedup"] = speedup
        summary[f"{mode}_identical"] = same
print(json.dumps(summary))
