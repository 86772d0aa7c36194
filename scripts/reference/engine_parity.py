"""Reference outputs from Hugging Face transformers for kvbench's engine parity tests.

  engine_parity.py tiny OUT_DIR        tiny random Llama/Mistral/Qwen2 models (saved as safetensors)
                                       and their f32 and f16 logits over a 64-token input
  engine_parity.py gguf GGUF OUT_DIR   logits of a GGUF model (loaded by transformers from the same
                                       file) over a 512-token text, and 64 greedy tokens on 5 prompts

Outputs are .npy arrays and JSON; the Rust tests in kvcore/tests/parity_transformers.rs compare.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("KVBENCH_REF_THREADS", "2")))

TINY_CASES = {
    # name: (model class config name, extra config)
    "llama": ("llama", {"tie_word_embeddings": True}),
    "llama31": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "llama_linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "mistral": ("mistral", {"sliding_window": 16}),
    "qwen2": ("qwen2", {"tie_word_embeddings": False}),
}


def tiny(out_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, 49152, (1, 64), generator=gen)
    np.save(os.path.join(out_dir, "input_ids.npy"), ids.numpy().astype(np.int64))
    for name, (model_type, extra) in TINY_CASES.items():
        kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=49152, max_position_embeddings=256,
                  rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
        kw.update(extra)
        cfg = AutoConfig.for_model(model_type, **kw)
        torch.manual_seed(7)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", torch_dtype=torch.float32)
        # Default init leaves norms at 1 and biases at 0, which would hide bugs in both: perturb all.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif pname.endswith(".bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.05 * torch.randn_like(p))
        model.eval()
        d = os.path.join(out_dir, name)
        model.save_pretrained(d, safe_serialization=True)
        with torch.no_grad():
            logits = model(ids).logits[0].float().numpy()
        np.save(os.path.join(d, "logits.npy"), logits)
        # The same model in f16 (the paper's dtype): weights and compute cast, as `.half()`.
        with torch.no_grad():
            logits16 = model.half()(ids).logits[0].float().numpy()
        np.save(os.path.join(d, "logits_f16.npy"), logits16)
        print(f"{name}: {logits.shape}", file=sys.stderr)


def reference_text():
    """Plain English from the docstrings of standard-library modules (deterministic per Python)."""
    import inspect
    import argparse, collections, json as js, logging, pathlib, shutil, subprocess, threading, unittest, zipfile
    mods = [argparse, collections, js, logging, pathlib, shutil, subprocess, threading, unittest, zipfile]
    return "\n\n".join(inspect.getdoc(m) or "" for m in mods)


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in two sentences.",
    "List three uses of copper.",
    "def fibonacci(n):",
]


def gguf(gguf_path, out_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.makedirs(out_dir, exist_ok=True)
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    ids = tok(reference_text(), add_special_tokens=False)["input_ids"][:512]
    assert len(ids) == 512, len(ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0].float().numpy()
    np.save(os.path.join(out_dir, "text_ids.npy"), np.array(ids, dtype=np.int64))
    np.save(os.path.join(out_dir, "text_logits.npy"), logits)
    gens = []
    for p in PROMPTS:
        if p.startswith("def "):
            prompt_ids = tok(p, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
            if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
                prompt_ids = prompt_ids["input_ids"]
        x = torch.tensor([prompt_ids])
        with torch.no_grad():
            # An explicit all-ones attention mask: with pad_token_id == eos (id 2 = <|im_end|>),
            # transformers would otherwise mask the prompt's own <|im_end|> tokens as padding.
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        new = out[0, len(prompt_ids):].tolist()
        gens.append({"prompt": p, "prompt_ids": list(map(int, prompt_ids)), "generated_ids": new,
                     "text": tok.decode(new, skip_special_tokens=True)})
        print(f"{p!r} -> {gens[-1]['text']!r}", file=sys.stderr)
    with open(os.path.join(out_dir, "generations.json"), "w") as fh:
        json.dump({"eos_token_id": tok.eos_token_id, "generations": gens}, fh, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "tiny":
        tiny(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "gguf":
        gguf(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
