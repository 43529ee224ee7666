import numpy as np, torch, json, sys
torch.set_num_threads(2)
from gguf import GGUFReader
for p in ():# ("/tmp/gemma/g6_array.gguf",):
    rr = GGUFReader(p)
    f = rr.get_field("gemma3.attention.sliding_window_pattern"); print("pattern field", f.types, f.contents())
    print([ (t.name, t.tensor_type.name, [int(x) for x in t.shape]) for t in rr.tensors if t.name.startswith("blk.5.")][:3])
from llama_cpp import Llama
from transformers import AutoConfig, AutoTokenizer, Gemma3ForCausalLM
from safetensors.torch import load_file
KEPT = [0, 1, 2, 5, 11, 17]
tok = AutoTokenizer.from_pretrained("/tmp/gemma/hf270m")
text = "Count slowly: " + ", ".join(str(i) for i in range(1, 330)) + ","
ids = tok(text).input_ids
print("prompt tokens", len(ids))
sd = load_file("/tmp/gemma/hf270m/model.safetensors")
def hf_model(types):
    cfg = AutoConfig.from_pretrained("/tmp/gemma/hf270m")
    cfg.num_hidden_layers = len(KEPT); cfg.layer_types = types
    m = Gemma3ForCausalLM(cfg).eval()
    new = {}
    for k, v in sd.items():
        if k.startswith("model.layers."):
            i = int(k.split(".")[2])
            if i not in KEPT: continue
            k = "model.layers.%d.%s" % (KEPT.index(i), k.split(".", 3)[3])
        new[k] = v
    missing, unexpected = m.load_state_dict(new, strict=False)
    assert not unexpected and all("lm_head" in x for x in missing), (missing, unexpected)
    m.tie_weights()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0, -1].numpy()
full_types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(18)]
kept_types = [full_types[i] for i in KEPT]
index_types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(6)]
print("kept types ", kept_types); print("index types", index_types)
hf_kept, hf_index = hf_model(kept_types), hf_model(index_types)
res = {}
for name in ("array", "index"):
    llm = Llama(f"/tmp/gemma/g6_{name}.gguf", n_ctx=2048, n_threads=2, verbose=False)
    llm.eval(ids)
    import llama_cpp as lc; lg = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    res[name] = lg
    for hname, h in (("hf_kept", hf_kept), ("hf_index", hf_index)):
        print(f"llama[{name}] vs {hname}: max|d| {np.abs(lg-h).max():.3f} corr {np.corrcoef(lg,h)[0,1]:.5f} top1 {int(lg.argmax())} vs {int(h.argmax())}")
    del llm
print("hf_kept vs hf_index max|d|", float(np.abs(hf_kept - hf_index).max()))
