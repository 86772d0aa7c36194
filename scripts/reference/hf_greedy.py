"""Greedy continuations from transformers for the linear-time parity scripts (mamba_parity.py,
mamba2_parity.py): generate() through the model's cache, cross-checked against a no-cache argmax
loop. Imported by those scripts (they run from this directory)."""
import sys

import torch


def greedy_via_generate(model, ids, new, label):
    """`new` greedy tokens after `ids` ([1, T]) through generate() (prefill into the model's cache,
    then one token at a time). eos_token_id=None: no early stop on a random model, exactly `new`
    tokens. A disagreement with the no-cache loop is printed as a warning."""
    from transformers import GenerationConfig

    seq_len = ids.shape[1]
    gcfg = GenerationConfig(do_sample=False, max_new_tokens=new, min_new_tokens=0,
                            eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gcfg)
    got = out[0, seq_len:]
    assert got.shape[0] == new, f"{label}: generate returned {got.shape[0]} new tokens, expected {new}"
    # Cross-check: argmax of a full no-cache forward pass after each appended token.
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(new):
            nxt = model(seq, use_cache=False).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    if not torch.equal(seq[0, seq_len:], got):
        print(f"{label}: WARNING generate() and the no-cache loop disagree:\n  {got.tolist()}\n  {seq[0, seq_len:].tolist()}",
              file=sys.stderr)
    return got
