"""Question-agnostic kvpress on one kvbench sample, the end-to-end check behind
reports/offline-v1/README.md: prefill the context under a press (SnapKV, TOVA, Knorm at
compression 0.5 = kvbench ratio 2, or none), then the question and 12 greedy tokens without it,
as kvpress's pipeline does. Prints each press's kept tokens and answer.

  kvpress_question_agnostic.py SMOLLM2.gguf SAMPLE.json
  (SAMPLE.json: one line of `kvbench task dump`, e.g. ruler/niah_single_1 --lengths 2048
   --samples 400 --seed 42, id ruler-niah_single_1-2048-225)
"""
import json, os, sys, torch
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from kvpress import SnapKVPress, TOVAPress, KnormPress
gguf_dir, gguf = os.path.split(sys.argv[1])
s = json.load(open(sys.argv[2]))
tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf, torch_dtype=torch.float32, attn_implementation="eager")
user = s["prefix_instruction"] + s["context"] + s["question"]
text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True) + s.get("answer_prefix", "")
cut = text.index(s["question"])
ctx = tok(text[:cut], return_tensors="pt", add_special_tokens=False).input_ids
q = tok(text[cut:], return_tensors="pt", add_special_tokens=False).input_ids
print("context tokens", ctx.shape[1], "question tokens", q.shape[1], flush=True)
for name, press in [("full", None), ("snapkv 0.5", SnapKVPress(compression_ratio=0.5, window_size=64, kernel_size=5)), ("tova 0.5", TOVAPress(compression_ratio=0.5)), ("knorm 0.5", KnormPress(compression_ratio=0.5))]:
    cache = DynamicCache()
    with torch.no_grad():
        if press is None:
            model(ctx, past_key_values=cache)
        else:
            with press(model):
                model(ctx, past_key_values=cache)
        kept = cache.get_seq_length()
        pos = torch.arange(ctx.shape[1], ctx.shape[1] + q.shape[1]).unsqueeze(0)
        out = model(q, past_key_values=cache, position_ids=pos)
        ids = []
        nxt = out.logits[0, -1].argmax()
        p = ctx.shape[1] + q.shape[1]
        for _ in range(12):
            ids.append(int(nxt))
            out = model(nxt.view(1, 1), past_key_values=cache, position_ids=torch.tensor([[p]]))
            p += 1
            nxt = out.logits[0, -1].argmax()
    print(name, "kept", kept, repr(tok.decode(ids)), "answer", s["answers"], flush=True)
