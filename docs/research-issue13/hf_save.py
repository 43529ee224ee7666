import time, torch
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM, AutoTokenizer
t=time.time()
tok = AutoTokenizer.from_pretrained("/tmp/gemma", gguf_file="gemma3-270m.gguf")
print("tok", time.time()-t); t=time.time()
model = AutoModelForCausalLM.from_pretrained("/tmp/gemma", gguf_file="gemma3-270m.gguf", dtype=torch.float32)
print("model", time.time()-t)
print("quant cfg", getattr(model.config, "quantization_config", None))
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"): del model.config.quantization_config
t=time.time(); model.save_pretrained("/tmp/gemma/hf270m"); tok.save_pretrained("/tmp/gemma/hf270m"); print("save", time.time()-t)
t=time.time(); m2 = AutoModelForCausalLM.from_pretrained("/tmp/gemma/hf270m"); t2 = AutoTokenizer.from_pretrained("/tmp/gemma/hf270m"); print("reload", time.time()-t, m2.dtype, type(t2).__name__)
ids = t2("The capital of France is", return_tensors="pt").input_ids
print(ids.tolist())
with torch.no_grad(): print(m2(ids).logits[0,-1].argmax().item())
