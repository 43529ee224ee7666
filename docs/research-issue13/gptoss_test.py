"""Tiny random GptOssForCausalLM -> hand-written GGUF (f32 / MXFP4 experts) -> llama.cpp logits vs transformers."""
import sys, numpy as np, torch, gguf, llama_cpp as lc
from llama_cpp import Llama
from transformers import GptOssConfig, GptOssForCausalLM
torch.set_num_threads(2); torch.manual_seed(0)
TRUNC = sys.argv[1] == "trunc" if len(sys.argv) > 1 else True
rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": TRUNC,
        "original_max_position_embeddings": 4096, "rope_theta": 150000.0}
cfg = GptOssConfig(vocab_size=512, hidden_size=64, intermediate_size=64, head_dim=16, num_attention_heads=4,
                   num_key_value_heads=2, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2,
                   sliding_window=8, max_position_embeddings=131072, rope_parameters=rope, initializer_range=0.15,
                   attn_implementation="eager")
m = GptOssForCausalLM(cfg).eval()
with torch.no_grad():  # make norms/biases non-trivial
    for n, p in m.named_parameters():
        if "norm" in n: p.copy_(1 + 0.2 * torch.randn_like(p))
        elif "bias" in n: p.copy_(0.1 * torch.randn_like(p))
print("layer_types", cfg.layer_types)
sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}

def tensors(sd, kept, mx):
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output.weight": sd["lm_head.weight"],
           "output_norm.weight": sd["model.norm.weight"]}
    for j, i in enumerate(kept):
        p = f"model.layers.{i}."; b = f"blk.{j}."
        out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[b + "post_attention_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            out[b + gg + ".weight"] = sd[p + f"self_attn.{hf}.weight"]; out[b + gg + ".bias"] = sd[p + f"self_attn.{hf}.bias"]
        out[b + "attn_sinks.weight"] = sd[p + "self_attn.sinks"]
        out[b + "ffn_gate_inp.weight"] = sd[p + "mlp.router.weight"]; out[b + "ffn_gate_inp.bias"] = sd[p + "mlp.router.bias"]
        gu, gub = sd[p + "mlp.experts.gate_up_proj"], sd[p + "mlp.experts.gate_up_proj_bias"]   # [E,d,2f], [E,2f]
        out[b + "ffn_gate_exps.weight"] = np.ascontiguousarray(gu[..., ::2].transpose(0, 2, 1))   # [E,f,d]
        out[b + "ffn_up_exps.weight"] = np.ascontiguousarray(gu[..., 1::2].transpose(0, 2, 1))
        out[b + "ffn_down_exps.weight"] = np.ascontiguousarray(sd[p + "mlp.experts.down_proj"].transpose(0, 2, 1))  # [E,d,f]
        out[b + "ffn_gate_exps.bias"] = np.ascontiguousarray(gub[:, ::2]); out[b + "ffn_up_exps.bias"] = np.ascontiguousarray(gub[:, 1::2])
        out[b + "ffn_down_exps.bias"] = sd[p + "mlp.experts.down_proj_bias"]
    return out

def write(path, kept, mx, pattern):
    w = gguf.GGUFWriter(path, "gpt-oss"); a = "gpt-oss"
    u = lambda k, v: w.add_uint32(f"{a}.{k}", v); f = lambda k, v: w.add_float32(f"{a}.{k}", v)
    u("block_count", len(kept)); u("context_length", 131072); u("embedding_length", 64); u("feed_forward_length", 64)
    u("attention.head_count", 4); u("attention.head_count_kv", 2); u("attention.key_length", 16); u("attention.value_length", 16)
    f("attention.layer_norm_rms_epsilon", cfg.rms_norm_eps); f("rope.freq_base", 150000.0)
    u("expert_count", 4); u("expert_used_count", 2); u("expert_feed_forward_length", 64); u("attention.sliding_window", 8)
    w.add_string(f"{a}.rope.scaling.type", "yarn"); f("rope.scaling.factor", 32.0); u("rope.scaling.original_context_length", 4096)
    u("vocab_size", 512)
    if pattern is not None: w.add_sliding_window_pattern(pattern)
    w.add_string("tokenizer.ggml.model", "none")
    for name, arr in tensors(sd, kept, mx).items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if mx and "_exps.weight" in name:
            w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.MXFP4), raw_dtype=gguf.GGMLQuantizationType.MXFP4)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

def llama_logits(path, ids):
    llm = Llama(path, n_ctx=256, n_threads=2, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids); out = np.array(llm.scores[:len(ids)]); del llm; return out

def hf_logits(model, ids):
    with torch.no_grad(): return model(torch.tensor([ids])).logits[0].numpy()

def mx_roundtrip(model):
    with torch.no_grad():
        for layer in model.model.layers:
            e = layer.mlp.experts
            for pname in ("gate_up_proj", "down_proj"):
                p = getattr(e, pname); a = p.detach().float().numpy().transpose(0, 2, 1).copy()  # rows = out features
                q = gguf.quants.dequantize(gguf.quants.quantize(a, gguf.GGMLQuantizationType.MXFP4), gguf.GGMLQuantizationType.MXFP4)
                p.copy_(torch.from_numpy(q.reshape(a.shape).transpose(0, 2, 1).copy()))
    return model

ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(1)).tolist()
ref = hf_logits(m, ids); scale = np.abs(ref).max()
write("/tmp/issue13/gptoss/f32.gguf", [0, 1, 2, 3], False, None)
d = np.abs(llama_logits("/tmp/issue13/gptoss/f32.gguf", ids) - ref).max()
print(f"truncate={TRUNC} f32 full: max|d|={d:.2e} rel={d/scale:.2e} (max|logit| {scale:.2f})")
write("/tmp/issue13/gptoss/mx.gguf", [0, 1, 2, 3], True, None)
import copy
mref = hf_logits(mx_roundtrip(copy.deepcopy(m)), ids)
l = llama_logits("/tmp/issue13/gptoss/mx.gguf", ids)
print(f"MXFP4 experts: llama vs hf(mxfp4-roundtripped) max|d|={np.abs(l-mref).max():.2e}; vs hf(f32) max|d|={np.abs(l-ref).max():.2e}; top1 agree {np.mean(l.argmax(-1)==ref.argmax(-1)):.2f}")
# pruned: keep [0, 2, 3] (types S, S, F); index rule would give S, F, S
kept = [0, 2, 3]
small = copy.deepcopy(m); small.model.layers = torch.nn.ModuleList([small.model.layers[i] for i in kept])
for j, layer in enumerate(small.model.layers): layer.self_attn.layer_idx = j
small.config.num_hidden_layers = 3; small.config.layer_types = [cfg.layer_types[i] for i in kept]
sref = hf_logits(small, ids)
write("/tmp/issue13/gptoss/p_index.gguf", kept, False, None)
write("/tmp/issue13/gptoss/p_array.gguf", kept, False, [cfg.layer_types[i] == "sliding_attention" for i in kept])
for n in ("p_index", "p_array"):
    d = np.abs(llama_logits(f"/tmp/issue13/gptoss/{n}.gguf", ids) - sref).max()
    print(f"pruned {kept} types {small.config.layer_types}: {n}: max|d| vs hf compact = {d:.2e}")
# mlp-fold across MoE: T on the expert-mix output, folded into each expert's down_proj and bias
T = torch.eye(64) + 0.1 * torch.randn(64, 64)
hooked = copy.deepcopy(m); folded = copy.deepcopy(m)
h = hooked.model.layers[1].mlp.experts.register_forward_hook(lambda mod, a, out: out @ T.T)
with torch.no_grad():
    e = folded.model.layers[1].mlp.experts
    e.down_proj.copy_(e.down_proj @ T.T); e.down_proj_bias.copy_(e.down_proj_bias @ T.T)
print("mlp-fold across MoE: max|hooked - folded| =", float(np.abs(hf_logits(hooked, ids) - hf_logits(folded, ids)).max()))
