"""Reference outputs from Hugging Face transformers for kvbench's RecurrentGemma (Griffin) parity test.

  recurrent_gemma_parity.py OUT_DIR

Creates small random-initialised `RecurrentGemmaForCausalLM` models (CPU, f32), saves each with
`save_pretrained(..., safe_serialization=True)` under OUT_DIR/<case>, and writes:

  OUT_DIR/input_ids.npy          int64 [64]       the input, shared by all cases
  OUT_DIR/<case>/logits.npy      float32 [64, V]  logits at every input position
  OUT_DIR/<case>/greedy.npy      int64 [32]       32 greedy tokens after the input

Which transformers path is the reference: its cached path (a prefill of at most
`attention_window_size` tokens, then one token per call with the sliding-window KV cache), in
which every token attends to itself and the `attention_window_size - 1` tokens before it. Its
other two paths are only right while the sequence fits in the window: the no-cache forward
attends to the whole causal prefix (no window), and a cached prefill longer than the window
attends to the last `window` keys from every query, which garbles the early positions that later
recurrent layers consume (so generate() with a 64-token prompt is wrong for the small windows).
For the case whose window holds the whole 96-token run, this script checks that all three paths
agree (no-cache logits, cached logits, generate()), so the cached path is tied to the others.

The Rust test kvcore/tests/recurrent_gemma_parity.rs compares. Runs offline: nothing is downloaded.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("KVBENCH_REF_THREADS", "2")))

VOCAB = 1000
SEQ = 64
NEW = 32
# Scales on the default init: a larger embedding (the logits of a tied head grow with it) and
# much larger block outputs, so that the blocks, not the current token's own embedding, decide
# the next token (else greedy decoding repeats one token and tests little).
EMB_SCALE = 4.0
OUT_SCALE = 10.0

CASES = {
    # recurrentgemma-2b's structure shrunk: pattern (recurrent, recurrent, attention) over 5 layers,
    # MQA (one KV head), an RG-LRU narrower than the residual stream, tied head, no q/k/v bias,
    # and a window of 8 so that 64 tokens wrap the KV ring eight times. hidden 48 makes the
    # embedding scale sqrt(48) differ from its bf16 rounding (transformers' normaliser is bf16).
    "mqa_window8": dict(hidden_size=48, intermediate_size=144, num_attention_heads=4, num_key_value_heads=1,
                        lru_width=32, num_hidden_layers=5, attention_window_size=8, conv1d_width=4,
                        block_types=["recurrent", "recurrent", "attention"], attention_bias=False,
                        tie_word_embeddings=True, logits_soft_cap=30.0),
    # The other switches: attention first, grouped-query attention (2 KV heads of 4), q/k/v
    # biases, untied head, conv width 3, another rope_theta, a soft cap that bites, and a window
    # of 128 that holds the whole run (so every transformers path must agree).
    "gqa_bias_untied_window128": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                      num_key_value_heads=2, lru_width=64, num_hidden_layers=4,
                                      attention_window_size=128, conv1d_width=3,
                                      block_types=["attention", "recurrent"], attention_bias=True,
                                      tie_word_embeddings=False, logits_soft_cap=4.0,
                                      rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                       "partial_rotary_factor": 0.5}),
    # A window of 16 with two attention layers in a row and an even conv width: wraps four times.
    "window16_att_att_rec": dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                 num_key_value_heads=1, lru_width=32, num_hidden_layers=3,
                                 attention_window_size=16, conv1d_width=2,
                                 block_types=["attention", "attention", "recurrent"], attention_bias=False,
                                 tie_word_embeddings=True, logits_soft_cap=10.0),
}


def build(extra):
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    cfg = RecurrentGemmaConfig(vocab_size=VOCAB, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0,
                               bos_token_id=2, eos_token_id=1, hidden_activation="gelu_pytorch_tanh", **extra)
    torch.manual_seed(7)
    model = RecurrentGemmaForCausalLM(cfg).to(torch.float32)
    # The default init leaves norms at 0 (scale 1 + w), biases at 0, tiny gate weights and an
    # embedding so small that the residual stream stays near zero: perturb everything so that
    # bugs cannot hide behind symmetric parameters, and make the blocks matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith("recurrent_param"):
                p.add_(0.5 * torch.randn_like(p))
            elif name.endswith("gate_weight"):
                p.mul_(8.0)
            elif name.endswith("gate_bias") or name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.mul_(EMB_SCALE)
            elif any(name.endswith(f"{o}.weight") for o in ("linear_out", "o_proj", "down_proj")):
                p.mul_(OUT_SCALE)
            elif name.endswith("conv_1d.weight"):
                p.mul_(3.0)
            elif name.endswith(".weight"):
                p.mul_(2.0)
    model.eval()
    return model


def cached_run(model, ids, new):
    """Logits at every position of `ids` and `new` greedy tokens, through transformers' cached path
    with every call inside the window: a prefill of min(window, len) tokens, then single tokens."""
    window = model.config.attention_window_size
    n = ids.shape[1]
    p = min(window, n)
    rows = []
    with torch.no_grad():
        out = model(ids[:, :p], cache_position=torch.arange(p), use_cache=True)
        rows.extend(out.logits[0].float())
        for pos in range(p, n):
            out = model(ids[:, pos:pos + 1], cache_position=torch.tensor([pos]), use_cache=True)
            rows.append(out.logits[0, -1].float())
        greedy = []
        nxt = rows[-1].argmax()
        for pos in range(n, n + new):
            greedy.append(int(nxt))
            if len(greedy) == new:
                break
            out = model(nxt.view(1, 1), cache_position=torch.tensor([pos]), use_cache=True)
            nxt = out.logits[0, -1].argmax()
    return torch.stack(rows), torch.tensor(greedy, dtype=torch.int64)


def main(out_dir):
    from transformers import GenerationConfig

    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=gen)
    np.save(os.path.join(out_dir, "input_ids.npy"), ids[0].numpy().astype(np.int64))
    for case, extra in CASES.items():
        model = build(extra)
        assert not any(m.training for m in model.modules())
        d = os.path.join(out_dir, case)
        model.save_pretrained(d, safe_serialization=True)
        logits, greedy = cached_run(model, ids, NEW)
        assert logits.shape == (SEQ, VOCAB) and greedy.shape == (NEW,)
        np.save(os.path.join(d, "logits.npy"), logits.numpy().astype(np.float32))
        np.save(os.path.join(d, "greedy.npy"), greedy.numpy().astype(np.int64))

        with torch.no_grad():
            nocache = model(ids, use_cache=False).logits[0].float()
        diff = (nocache - logits).abs().max().item()
        if model.config.attention_window_size >= SEQ + NEW:
            # Everything fits in the window: the three transformers paths must agree.
            assert diff <= 1e-4, f"{case}: no-cache and cached logits differ by {diff}"
            gcfg = GenerationConfig(do_sample=False, max_new_tokens=NEW, min_new_tokens=0, eos_token_id=None,
                                    pad_token_id=0, use_cache=True)
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gcfg)
            assert torch.equal(out[0, SEQ:], greedy), f"{case}: generate() {out[0, SEQ:].tolist()} != {greedy.tolist()}"
        print(f"{case}: logits {tuple(logits.shape)} (|logit| max {logits.abs().max().item():.2f}), "
              f"no-cache vs cached max diff {diff:.2e}, greedy {greedy.tolist()[:12]}...", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
