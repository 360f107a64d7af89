#!/usr/bin/env python3
"""Peer baseline on the GPU: Hugging Face transformers generate(), plain greedy
vs assisted generation (its speculative decoding), on the same models and
prompts as `examples/speedup` with the `cuda` feature. Adapted from
../shared/bench/hf_peer.py: device and dtype are arguments, and the clock is
read after torch.cuda.synchronize().

  python3 scripts/hf_peer_gpu.py --target DIR --draft DIR --prompts prompts.json \
      --max-new-tokens 128 --device cuda --dtype bfloat16

Prints ms/token for each mode (median over prompts; the first prompt is a
warm-up), the speedup, whether assisted output equals plain output, and one
JSON line.
"""
import argparse, json, statistics, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--target", required=True)
ap.add_argument("--draft", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--device", default="cuda")
ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
ap.add_argument("--num-assistant-tokens", type=int, default=None)
args = ap.parse_args()
dtype = getattr(torch, args.dtype)
dev = torch.device(args.device)
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
tok = AutoTokenizer.from_pretrained(args.target)
tgt = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(dev).eval()
dr = AutoModelForCausalLM.from_pretrained(args.draft, dtype=dtype).to(dev).eval()
if args.num_assistant_tokens:
    dr.generation_config.num_assistant_tokens = args.num_assistant_tokens
prompts = [tok(p, return_tensors="pt").input_ids.to(dev) for p in json.load(open(args.prompts))]
N = args.max_new_tokens
result = {}
for mode in ["plain", "assisted"]:
    per_tok, outs = [], []
    for i, p in enumerate(prompts):
        kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False)
        if mode == "assisted":
            kw["assistant_model"] = dr
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            o = tgt.generate(p, attention_mask=torch.ones_like(p), **kw)
        sync()
        dt = time.perf_counter() - start
        if i > 0:
            per_tok.append(1000 * dt / N)
        outs.append(o[0, p.shape[1]:].tolist())
    result[mode] = {"ms_per_token": statistics.median(per_tok), "outputs": outs}
    print(f"{mode:9s} {result[mode]['ms_per_token']:8.3f} ms/token")
same = result["plain"]["outputs"] == result["assisted"]["outputs"]
speedup = result["plain"]["ms_per_token"] / result["assisted"]["ms_per_token"]
print(f"speedup {speedup:.2f}x, assisted output identical to plain: {same}")
print(json.dumps({"peer": "transformers", "device": args.device, "dtype": args.dtype,
                  "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
                  "plain_ms_per_token": result["plain"]["ms_per_token"],
                  "assisted_ms_per_token": result["assisted"]["ms_per_token"],
                  "speedup": speedup, "identical": same}))
