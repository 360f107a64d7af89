"""Writes seed inputs for the load_checkpoint fuzz target: tiny valid
checkpoints (llama with GQA and an untied head, qwen2 with q/k/v biases, a
sharded one, one with generation_config.json) in the target's input layout;
and for the load_gguf target, tiny valid GGUF files (f32 llama with a
byte-level BPE tokenizer and chat template, Q8_0 llama with an untied head,
f16 qwen2 with biases), a few KB each.

    python3 fuzz/seeds.py   (from the repository root; writes fuzz/corpus/load_checkpoint/
                             and fuzz/corpus/load_gguf/)
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "load_checkpoint")
OUT_GGUF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "load_gguf")


def safetensors(tensors, dtype="F32"):
    header, blob = {}, b""
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        size = 2 if dtype in ("BF16", "F16") else 4
        data = bytes(((i * 37 + len(name)) % 251 for i in range(n * size)))
        if dtype == "F32":
            data = b"".join(struct.pack("<f", ((i % 13) - 6) / 10.0) for i in range(n))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def model(qwen=False, layers=1, tied=False):
    hidden, inter, heads, kv, vocab = 8, 16, 2, 1, 16
    hd = hidden // heads
    t = [("model.embed_tokens.weight", [vocab, hidden]), ("model.norm.weight", [hidden])]
    for i in range(layers):
        p = f"model.layers.{i}"
        t += [(f"{p}.input_layernorm.weight", [hidden]), (f"{p}.post_attention_layernorm.weight", [hidden]),
              (f"{p}.self_attn.q_proj.weight", [heads * hd, hidden]),
              (f"{p}.self_attn.k_proj.weight", [kv * hd, hidden]),
              (f"{p}.self_attn.v_proj.weight", [kv * hd, hidden]),
              (f"{p}.self_attn.o_proj.weight", [hidden, heads * hd]),
              (f"{p}.mlp.gate_proj.weight", [inter, hidden]), (f"{p}.mlp.up_proj.weight", [inter, hidden]),
              (f"{p}.mlp.down_proj.weight", [hidden, inter])]
        if qwen:
            t += [(f"{p}.self_attn.q_proj.bias", [heads * hd]), (f"{p}.self_attn.k_proj.bias", [kv * hd]),
                  (f"{p}.self_attn.v_proj.bias", [kv * hd])]
    if not tied:
        t.append(("lm_head.weight", [vocab, hidden]))
    config = {"model_type": "qwen2" if qwen else "llama", "hidden_size": hidden, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
              "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
              "tie_word_embeddings": tied, "eos_token_id": 2, "hidden_act": "silu"}
    return config, t


def pack(flags, n_pos, config, weights, index=None, generation=None):
    out = bytes([flags, n_pos])
    for part in [json.dumps(config).encode()] + ([json.dumps(index).encode()] if index is not None else []) \
            + ([json.dumps(generation).encode()] if generation is not None else []):
        out += struct.pack("<H", len(part)) + part
    return out + weights


def gguf_string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_value(v):
    """(type, bytes) of a metadata value: int -> u32, float -> f32, bool, str, list of str / int."""
    if isinstance(v, bool):
        return 7, bytes([v])
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, gguf_string(v)
    if all(isinstance(x, str) for x in v):
        return 9, struct.pack("<IQ", 8, len(v)) + b"".join(gguf_string(x) for x in v)
    return 9, struct.pack("<IQ", 5, len(v)) + b"".join(struct.pack("<i", x) for x in v)


def gguf_tensor_data(ty, rows, cols, seed):
    n = rows * cols
    vals = [(((i * 37 + seed * 11) % 13) - 6) / 10.0 for i in range(n)]
    if ty == 0:
        return b"".join(struct.pack("<f", x) for x in vals)
    if ty == 1:
        return b"".join(struct.pack("<e", x) for x in vals)
    # Q8_0: blocks of 32, an f16 scale then 32 int8.
    out = b""
    for b in range(n // 32):
        block = vals[32 * b:32 * b + 32]
        scale = max(abs(x) for x in block) / 127 or 1.0
        out += struct.pack("<e", scale) + bytes((round(x / scale) & 0xFF) for x in block)
    return out


def gguf(metadata, tensors):
    """A GGUF v3 file; tensors are (name, rows, cols or None, ggml type)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, v in metadata.items():
        ty, b = gguf_value(v)
        out += gguf_string(k) + struct.pack("<I", ty) + b
    blobs, offset = [], 0
    for i, (name, rows, cols, ty) in enumerate(tensors):
        dims = [rows] if cols is None else [cols, rows]
        out += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        data = gguf_tensor_data(ty, rows, cols or 1, i)
        data += b"\0" * (-len(data) % 32)
        blobs.append(data)
        offset += len(data)
    out += b"\0" * (-len(out) % 32)
    return out + b"".join(blobs)


def gguf_model(arch="llama", hidden=8, matrices=0, tied=True, tokenizer=True):
    inter, heads, kv, vocab = 2 * hidden, 2, 1, 16
    hd = hidden // heads
    md = {"general.architecture": arch, "general.alignment": 32, f"{arch}.block_count": 1,
          f"{arch}.context_length": 64, f"{arch}.embedding_length": hidden,
          f"{arch}.feed_forward_length": inter, f"{arch}.attention.head_count": heads,
          f"{arch}.attention.head_count_kv": kv, f"{arch}.rope.freq_base": 10000.0,
          f"{arch}.attention.layer_norm_rms_epsilon": 1e-5}
    if tokenizer:
        tokens = [chr(ord("a") + i) for i in range(vocab - 2)] + ["ab", "<|im_end|>"]
        md.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
                   "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [1] * (vocab - 1) + [3],
                   "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.bos_token_id": 0,
                   "tokenizer.ggml.eos_token_id": vocab - 1, "tokenizer.ggml.add_bos_token": True,
                   "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"})
    t = [("token_embd.weight", vocab, hidden, matrices)]
    p = "blk.0"
    t += [(f"{p}.attn_q.weight", heads * hd, hidden, matrices), (f"{p}.attn_k.weight", kv * hd, hidden, matrices),
          (f"{p}.attn_v.weight", kv * hd, hidden, matrices), (f"{p}.attn_output.weight", hidden, heads * hd, matrices),
          (f"{p}.ffn_gate.weight", inter, hidden, matrices), (f"{p}.ffn_up.weight", inter, hidden, matrices),
          (f"{p}.ffn_down.weight", hidden, inter, matrices)]
    if arch == "qwen2":
        t += [(f"{p}.attn_q.bias", heads * hd, None, 0), (f"{p}.attn_k.bias", kv * hd, None, 0),
              (f"{p}.attn_v.bias", kv * hd, None, 0)]
    t += [(f"{p}.attn_norm.weight", hidden, None, 0), (f"{p}.ffn_norm.weight", hidden, None, 0),
          ("output_norm.weight", hidden, None, 0)]
    if not tied:
        t.append(("output.weight", vocab, hidden, matrices))
    return gguf(md, t)


def gguf_seeds():
    os.makedirs(OUT_GGUF, exist_ok=True)
    seeds = {"llama-f32": gguf_model(), "llama-q8_0": gguf_model(hidden=32, matrices=8, tied=False),
             "qwen2-f16": gguf_model(arch="qwen2", matrices=1, tokenizer=False)}
    for name, data in seeds.items():
        with open(os.path.join(OUT_GGUF, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT_GGUF} ({sum(map(len, seeds.values()))} bytes)")


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}
    c, t = model()
    seeds["llama"] = pack(0, 15, c, safetensors(t))
    seeds["llama-bf16"] = pack(0, 3, c, safetensors(t, "BF16"))
    c2, t2 = model(qwen=True, layers=2, tied=True)
    seeds["qwen2"] = pack(0, 7, c2, safetensors(t2))
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00001.safetensors" for name, _ in t}}
    seeds["sharded"] = pack(1, 31, c, safetensors(t), index=index)
    seeds["generation"] = pack(2, 9, c, safetensors(t), generation={"eos_token_id": [1, 2]})
    c3 = dict(c, model_type="mistral", sliding_window=4,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    seeds["mistral-llama3"] = pack(0, 63, c3, safetensors(t))
    for name, data in seeds.items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")
    gguf_seeds()


if __name__ == "__main__":
    main()
