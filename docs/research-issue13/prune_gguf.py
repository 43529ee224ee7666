"""Write a 6-layer gemma3 GGUF from the 270M Q4_K_M one by copying quantized tensors (renumbered)."""
import sys, time, numpy as np, gguf
from gguf import GGUFReader, GGUFWriter, GGUFValueType
KEPT = [0, 1, 2, 5, 11, 17]          # original types: S S S F F F
t = time.time()
r = GGUFReader("/tmp/gemma/gemma3-270m.gguf")
print("read", round(time.time() - t, 1))
def write(path, pattern):
    w = GGUFWriter(path, "gemma3")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = f.types[0]
        val = f.contents()
        if key == "gemma3.block_count":
            val = len(KEPT)
        sub = f.types[1] if vt == GGUFValueType.ARRAY else None
        w.add_key_value(key, val, vt, sub_type=sub)
    if pattern is not None:
        w.add_sliding_window_pattern(pattern)
    for tns in r.tensors:
        name = tns.name
        if name.startswith("blk."):
            i = int(name.split(".")[1])
            if i not in KEPT:
                continue
            name = "blk.%d.%s" % (KEPT.index(i), name.split(".", 2)[2])
        w.add_tensor(name, np.asarray(tns.data), raw_shape=np.asarray(tns.data).shape, raw_dtype=tns.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    print("wrote", path, round(time.time() - t, 1))
types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(18)]
write("/tmp/gemma/g6_array.gguf", [types[i] == "sliding_attention" for i in KEPT])
write("/tmp/gemma/g6_index.gguf", None)
