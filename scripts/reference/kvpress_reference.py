"""Kept positions of NVIDIA kvpress presses, for kvbench's cross-check (kvcore/tests/kvpress_crosscheck.rs).

  kvpress_reference.py GGUF OUT.json

Loads the GGUF with transformers (f32, eager attention, so ObservedAttentionPress sees the weights),
tokenises 3 fixed prompts, and runs one prefill per (prompt, press) inside `with press(model)`:
StreamingLLMPress(n_sink=4), KnormPress, SnapKVPress(window 64, kernel 5), TOVAPress,
ObservedAttentionPress, KeyDiffPress, ExpectedAttentionPress (defaults: 512 future positions, 4 sinks,
covariance and value norms), and ChunkKVPress (chunk_length 20) around KnormPress and around
SnapKVPress, all at compression_ratio 0.75 (kvbench's ratio = 4). ChunkKVPress refuses attention
weights, so it runs with SDPA attention (the others with eager). For every layer it records the
(wrapped) press's scores and which positions survive (by matching the compressed keys to the originals).

KVzipPress (defaults, and chunk_size 64) runs on each prompt behind the chat template's prefix (system
and user-turn opening, as kvpress's pipeline formats a context; KVzip skips that many tokens), cut
to a multiple of 4 tokens so that 0.75 of every layer and head is a whole number, with SDPA
attention. Its scores are those after the sinks are raised, its kept positions the complement of
the pruned indices it leaves on each attention module.

Output JSON: {"kvpress": version, "compression_ratio": 0.75, "prompts": [{"ids": [...],
"presses": {name: {"kept": [layer][kv_head][positions], "scores": [layer][kv_head][position]}},
"kvzip": {"ids": [...], "presses": {name: {...}}}}]}.
Exits 3 with a message when kvpress is not installed.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

torch.set_num_threads(int(os.environ.get("KVBENCH_REF_THREADS", "2")))

PROMPTS = [
    "The history of the printing press begins in the fifteenth century. Johannes Gutenberg, a goldsmith from Mainz, "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could produce books far "
    "faster than scribes. Within fifty years presses operated in more than two hundred European cities, and the price "
    "of books fell sharply. Scholars exchanged identical copies of texts, which made it possible to cite page numbers "
    "and to correct errors across editions. Pamphlets spread religious and political arguments quickly, and literacy "
    "rose as reading material became common. Historians still debate how much the press caused these changes and how "
    "much it amplified trends that were already under way.\nQuestion: Who built the first European printing press with "
    "movable type, and what did it change?\nAnswer:",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n    i, j, out = 0, 0, []\n"
    "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n"
    "        else:\n            out.append(b[j])\n            j += 1\n    out.extend(a[i:])\n    out.extend(b[j:])\n"
    "    return out\n\n\ndef merge_sort(xs):\n    if len(xs) <= 1:\n        return xs\n    mid = len(xs) // 2\n"
    "    return merge_sorted(merge_sort(xs[:mid]), merge_sort(xs[mid:]))\n\n\nclass Inventory:\n    def __init__(self):\n"
    "        self.items = {}\n\n    def add(self, name, count=1):\n        self.items[name] = self.items.get(name, 0) + count\n\n"
    "    def remove(self, name, count=1):\n        left = self.items.get(name, 0) - count\n        if left < 0:\n"
    "            raise ValueError(name)\n        self.items[name] = left\n\n# Write a function that returns the three most common items.\n",
    "Meeting notes, project Atlas, week 12. Present: Maria (lead), Tom (backend), Aiko (design), Sam (QA). Maria opened "
    "with the release schedule: the beta moves from May 3 to May 17 because the payment provider changed its API. Tom "
    "estimated four days to migrate the checkout service and two more for the refund flow. Aiko showed three new "
    "onboarding screens; the team preferred the second, with the progress bar at the top. Sam reported 41 open bugs, "
    "9 of them critical, mostly in offline sync. Action items: Tom writes the migration plan by Tuesday; Aiko "
    "prepares the final onboarding assets; Sam sets up nightly regression runs on the staging cluster; Maria informs "
    "the sales team about the new date. The password for the staging cluster is kept in the team vault under the "
    "name atlas-staging-7. Next meeting on Thursday at 10:00.\nWhat is the new beta date and why did it move?",
]

RATIO = 0.75


def main(gguf, out_path):
    try:
        import kvpress
        from kvpress import ChunkKVPress, ExpectedAttentionPress, KeyDiffPress, KnormPress, ObservedAttentionPress, SnapKVPress, StreamingLLMPress, TOVAPress
    except ImportError as e:
        print(f"kvpress is not installed in {sys.executable}: {e}", file=sys.stderr)
        sys.exit(3)
    from importlib.metadata import version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    model.eval()

    presses = {
        "streamingllm": lambda: StreamingLLMPress(compression_ratio=RATIO, n_sink=4),
        "knorm": lambda: KnormPress(compression_ratio=RATIO),
        "snapkv": lambda: SnapKVPress(compression_ratio=RATIO, window_size=64, kernel_size=5),
        "tova": lambda: TOVAPress(compression_ratio=RATIO),
        "observed_attention": lambda: ObservedAttentionPress(compression_ratio=RATIO),
        "keydiff": lambda: KeyDiffPress(compression_ratio=RATIO),
        "expected_attention": lambda: ExpectedAttentionPress(compression_ratio=RATIO),
        "chunkkv_knorm": lambda: ChunkKVPress(press=KnormPress(compression_ratio=RATIO), chunk_length=20),
        "chunkkv_snapkv": lambda: ChunkKVPress(press=SnapKVPress(compression_ratio=RATIO, window_size=64, kernel_size=5), chunk_length=20),
    }
    prompts = []
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        entry = {"ids": ids[0].tolist(), "presses": {}}
        for pname, make in presses.items():
            press = make()
            layers = {}
            inner_compress = press.compress
            # A wrapper (ChunkKVPress) calls its wrapped press's score: record that.
            scorer = getattr(press, "press", press)
            inner_score = scorer.score
            model.set_attn_implementation("sdpa" if pname.startswith("chunkkv") else "eager")

            def score(module, *args, _inner=inner_score, _layers=layers, **kw):
                s = _inner(module, *args, **kw)
                _layers.setdefault(module.layer_idx, {})["scores"] = s[0].float().tolist()
                return s

            def compress(module, hidden_states, keys, values, attentions, kwargs, _inner=inner_compress, _layers=layers):
                nk, nv = _inner(module, hidden_states, keys, values, attentions, kwargs)
                kept = []
                for h in range(keys.shape[1]):
                    # Each kept key equals exactly one original key (gather copies values).
                    eq = (nk[0, h][:, None, :] == keys[0, h][None, :, :]).all(-1)
                    hits = eq.nonzero()
                    if hits.shape[0] != nk.shape[2]:
                        raise SystemExit(f"layer {module.layer_idx} head {h}: cannot match kept keys to positions")
                    kept.append(sorted(hits[:, 1].tolist()))
                _layers.setdefault(module.layer_idx, {})["kept"] = kept
                return nk, nv

            scorer.score = score
            press.compress = compress
            with torch.no_grad(), press(model):
                model(ids, use_cache=True)
            n = model.config.num_hidden_layers
            if sorted(layers) != list(range(n)):
                raise SystemExit(f"{pname}: compressed layers {sorted(layers)}, expected 0..{n}")
            entry["presses"][pname] = {
                "kept": [layers[i]["kept"] for i in range(n)],
                "scores": [layers[i]["scores"] for i in range(n)],
            }
            print(f"prompt of {ids.shape[1]} tokens, {pname}: {len(layers[0]['kept'][0])} kept per head", file=sys.stderr)
        entry["kvzip"] = run_kvzip(model, tok, text)
        prompts.append(entry)
    with open(out_path, "w") as f:
        json.dump({"kvpress": version("kvpress"), "compression_ratio": RATIO, "prompts": prompts}, f)


def run_kvzip(model, tok, text):
    import kvpress.presses.kvzip_press as kz
    from transformers import DynamicCache

    # KVzipPress loads the tokenizer by the model's name; this model came from a GGUF file.
    kz.AutoTokenizer = type("Tok", (), {"from_pretrained": staticmethod(lambda *a, **k: tok)})
    rendered = tok.apply_chat_template([{"role": "user", "content": "dummy context"}], add_generation_prompt=True, tokenize=False)
    prefix = rendered.split("dummy context")[0]
    ids = tok.encode(prefix, add_special_tokens=False) + tok.encode(text, add_special_tokens=False)
    ids = ids[: len(ids) - len(ids) % 4]
    ids_t = torch.tensor([ids])
    model.set_attn_implementation("sdpa")
    out = {"ids": ids, "presses": {}}
    n = model.config.num_hidden_layers
    for pname, chunk in [("kvzip", 2048), ("kvzip_chunk64", 64)]:
        press = kz.KVzipPress(compression_ratio=RATIO, chunk_size=chunk)
        seen = {}
        inner_post = press.compress_post

        def compress_post(m, _inner=inner_post, _press=press, _seen=seen):
            _inner(m)
            _seen["scores"] = _press.score_val[:, 0].float().tolist()

        press.compress_post = compress_post
        for layer in model.model.layers:
            layer.self_attn.masked_key_indices = None
        with torch.no_grad(), press(model):
            model(ids_t, past_key_values=DynamicCache(), use_cache=True)
        kept = []
        s = len(ids)
        for layer in model.model.layers:
            _, heads, seqs = layer.self_attn.masked_key_indices
            pruned = {}
            for h, j in zip(heads.tolist(), seqs.tolist()):
                pruned.setdefault(h, set()).add(j)
            kept.append([[j for j in range(s) if j not in pruned.get(h, set())] for h in range(model.config.num_key_value_heads)])
            layer.self_attn.masked_key_indices = None
        out["presses"][pname] = {"kept": kept, "scores": seen["scores"]}
        total = sum(len(h) for l in kept for h in l)
        print(f"kvzip prompt of {s} tokens (chunk {chunk}): {total} kept of {s * n * model.config.num_key_value_heads}", file=sys.stderr)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
