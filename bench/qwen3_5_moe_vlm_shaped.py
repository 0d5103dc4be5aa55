"""A Qwen3.6-35B-A3B-shaped VLM checkpoint (model_type qwen3_5_moe; the Hub's layout: experts fused,
the MTP layer's experts per expert, vision tower) as sparse safetensors shards: real headers, the
data a hole (67 GiB apparent, nothing on disk).

    python bench/qwen3_5_moe_vlm_shaped.py /tmp/q35/src
    /usr/bin/time -f "%e s, %M KB" prune-surgery run /tmp/q35/src /tmp/q35/out --hidden-size 1536 \
        --num-experts 128 --moe-intermediate-size 384 --num-hidden-layers 30 -q

Measured (2 shared cores, load 8-10): plan 1.2 s and 57 MiB RSS; run 183 s, 16.9 GiB written,
peak RSS 295 MiB; `prune-surgery verify` checks out.
"""
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
H, L, E, I, S, V = 2048, 40, 256, 512, 512, 248320
heads, kv, hd, lk, lv, dk, dv = 16, 2, 256, 16, 32, 128, 128
types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(L)]
def layer(p, kind, fused):
    t = {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)}
    if kind == "full_attention":
        a = p + "self_attn."
        t.update({a + "q_proj.weight": (2 * heads * hd, H), a + "k_proj.weight": (kv * hd, H), a + "v_proj.weight": (kv * hd, H),
                  a + "o_proj.weight": (H, heads * hd), a + "q_norm.weight": (hd,), a + "k_norm.weight": (hd,)})
    else:
        a, c = p + "linear_attn.", 2 * lk * dk + lv * dv
        t.update({a + "in_proj_qkv.weight": (c, H), a + "in_proj_z.weight": (lv * dv, H), a + "in_proj_a.weight": (lv, H),
                  a + "in_proj_b.weight": (lv, H), a + "conv1d.weight": (c, 1, 4), a + "A_log": (lv,), a + "dt_bias": (lv,),
                  a + "norm.weight": (dv,), a + "out_proj.weight": (H, lv * dv)})
    m = p + "mlp."
    t.update({m + "gate.weight": (E, H), m + "shared_expert.gate_proj.weight": (S, H), m + "shared_expert.up_proj.weight": (S, H),
              m + "shared_expert.down_proj.weight": (H, S), m + "shared_expert_gate.weight": (1, H)})
    if fused:
        t.update({m + "experts.gate_up_proj": (E, 2 * I, H), m + "experts.down_proj": (E, H, I)})
    else:
        for e in range(E):
            t.update({m + f"experts.{e}.gate_proj.weight": (I, H), m + f"experts.{e}.up_proj.weight": (I, H), m + f"experts.{e}.down_proj.weight": (H, I)})
    return t
tensors = {"model.language_model.embed_tokens.weight": (V, H), "model.language_model.norm.weight": (H,), "lm_head.weight": (V, H)}
for i in range(L):
    tensors.update(layer(f"model.language_model.layers.{i}.", types[i], True))
tensors.update(layer("mtp.layers.0.", "full_attention", False))
tensors.update({"mtp.fc.weight": (H, 2 * H), "mtp.pre_fc_norm_embedding.weight": (H,), "mtp.pre_fc_norm_hidden.weight": (H,), "mtp.norm.weight": (H,)})
VH = 1152
v = {"model.visual.patch_embed.proj.weight": (VH, 3, 2, 16, 16), "model.visual.patch_embed.proj.bias": (VH,), "model.visual.pos_embed.weight": (2304, VH),
     "model.visual.merger.norm.weight": (VH,), "model.visual.merger.norm.bias": (VH,), "model.visual.merger.linear_fc1.weight": (4 * VH, 4 * VH),
     "model.visual.merger.linear_fc1.bias": (4 * VH,), "model.visual.merger.linear_fc2.weight": (H, 4 * VH), "model.visual.merger.linear_fc2.bias": (H,)}
for b in range(27):
    p = f"model.visual.blocks.{b}."
    v.update({p + "attn.qkv.weight": (3 * VH, VH), p + "attn.qkv.bias": (3 * VH,), p + "attn.proj.weight": (VH, VH), p + "attn.proj.bias": (VH,),
              p + "mlp.linear_fc1.weight": (4304, VH), p + "mlp.linear_fc1.bias": (4304,), p + "mlp.linear_fc2.weight": (VH, 4304),
              p + "mlp.linear_fc2.bias": (VH,), p + "norm1.weight": (VH,), p + "norm1.bias": (VH,), p + "norm2.weight": (VH,), p + "norm2.bias": (VH,)})
tensors.update(v)
# shards of about 4 GB, as the Hub's
shards, cur, size = [], {}, 0
for name, shape in tensors.items():
    n = int(np.prod(shape)) * 2
    if cur and size + n > 4 << 30:
        shards.append(cur); cur, size = {}, 0
    cur[name] = shape; size += n
shards.append(cur)
wmap = {}
for k, shard in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shard.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}; off += n
        wmap[name] = fname
    raw = json.dumps(header).encode(); raw += b" " * (-len(raw) % 8)
    with open(out / fname, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw); f.truncate(8 + len(raw) + off)
(out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
text = dict(model_type="qwen3_5_moe_text", hidden_size=H, num_hidden_layers=L, num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
            linear_num_key_heads=lk, linear_num_value_heads=lv, linear_key_head_dim=dk, linear_value_head_dim=dv, linear_conv_kernel_dim=4,
            num_experts=E, num_experts_per_tok=8, moe_intermediate_size=I, shared_expert_intermediate_size=S, vocab_size=V,
            layer_types=types, full_attention_interval=4, mtp_num_hidden_layers=1, mtp_use_dedicated_embeddings=False, rms_norm_eps=1e-6,
            tie_word_embeddings=False)
vision = dict(model_type="qwen3_5_moe", depth=27, hidden_size=VH, intermediate_size=4304, num_heads=16, out_hidden_size=H, patch_size=16,
              spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304)
(out / "config.json").write_text(json.dumps({"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
                                             "text_config": text, "vision_config": vision, "tie_word_embeddings": False}))
print(len(tensors), "tensors,", sum(int(np.prod(s)) for s in tensors.values()) / 1e9, "B params,", len(shards), "shards")
