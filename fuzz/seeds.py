"""Writes seed inputs for the load_checkpoint fuzz target: tiny valid
checkpoints (llama with GQA and an untied head, qwen2 with q/k/v biases, a
sharded one, one with generation_config.json) in the target's input layout.

    python3 fuzz/seeds.py   (from the repository root; writes fuzz/corpus/load_checkpoint/)
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "load_checkpoint")


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


if __name__ == "__main__":
    main()
