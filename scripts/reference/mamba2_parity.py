"""Reference outputs from Hugging Face transformers for kvbench's Mamba-2 parity test.

  mamba2_parity.py OUT_DIR

Creates small random-initialised `Mamba2ForCausalLM` models (pure-torch `torch_forward` path on
CPU, f32), saves each with `save_pretrained(..., safe_serialization=True)` under OUT_DIR/<case>,
and writes:

  OUT_DIR/input_ids.npy          int64 [64]       the input, shared by all cases
  OUT_DIR/<case>/logits.npy      float32 [64, V]  full-sequence logits (no cache)
  OUT_DIR/<case>/greedy.npy      int64 [32]       32 greedy tokens after the input (generate(),
                                                  cross-checked against a no-cache argmax loop)

The Rust test kvcore/tests/mamba2_parity.rs compares. Runs offline: nothing is downloaded.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

from hf_greedy import greedy_via_generate

torch.set_num_threads(int(os.environ.get("KVBENCH_REF_THREADS", "2")))

VOCAB = 1000
SEQ = 64
NEW = 32

CASES = {
    # mamba2-130m's switches: tied head, one B/C group, no projection bias, dt unclamped
    # (time_step_limit (0, inf)). chunk_size 16: the 64-token reference crosses SSD chunks.
    "tied_g1": dict(hidden_size=64, num_heads=8, head_dim=16, expand=2, n_groups=1, state_size=16,
                    num_hidden_layers=3, conv_kernel=4, chunk_size=16, use_bias=False, use_conv_bias=True,
                    tie_word_embeddings=True),
    # The other switches: untied head, two groups of heads sharing B/C, projection biases, dt
    # clamped to time_step_limit (both bounds hit), other kernel/state sizes, a chunk size that
    # does not divide the input (padding in the reference).
    "untied_g2_bias_clamp": dict(hidden_size=48, num_heads=6, head_dim=16, expand=2, n_groups=2, state_size=8,
                                 num_hidden_layers=2, conv_kernel=3, chunk_size=24, use_bias=True,
                                 use_conv_bias=True, tie_word_embeddings=False, time_step_limit=(0.1, 0.5)),
    # One group per head, no conv bias, residual stream not forced to f32, eps 1e-6.
    "g_per_head_no_conv_bias": dict(hidden_size=32, num_heads=4, head_dim=16, expand=2, n_groups=4, state_size=12,
                                    num_hidden_layers=2, conv_kernel=4, chunk_size=256, use_bias=False,
                                    use_conv_bias=False, tie_word_embeddings=False, residual_in_fp32=False,
                                    layer_norm_epsilon=1e-6),
}


def build(extra):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    cfg = Mamba2Config(vocab_size=VOCAB, use_cache=True, pad_token_id=0, bos_token_id=0, eos_token_id=0, **extra)
    torch.manual_seed(7)
    model = Mamba2ForCausalLM(cfg).to(torch.float32)
    # The default init leaves norms at 1, D at 1, A_log at log(1..H), biases at 0 and dt small,
    # which would hide bugs in both implementations: perturb everything.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(".D"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif name.endswith("dt_bias"):
                # dt = softplus(...) from about 0.02 to 2: decays that matter within 64 tokens,
                # and values on both sides of the clamped case's limits.
                p.copy_(1.5 * torch.randn_like(p) - 1.0)
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.eval()
    return model


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=gen)
    np.save(os.path.join(out_dir, "input_ids.npy"), ids[0].numpy().astype(np.int64))
    for case, extra in CASES.items():
        model = build(extra)
        assert not any(m.training for m in model.modules())
        d = os.path.join(out_dir, case)
        model.save_pretrained(d, safe_serialization=True)
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0].float()
        np.save(os.path.join(d, "logits.npy"), logits.numpy().astype(np.float32))

        # Greedy continuation through generate() (chunked prefill into the Mamba2Cache, then the
        # recurrent step one token at a time). eos_token_id=None: exactly NEW tokens.
        new = greedy_via_generate(model, ids, NEW, case)
        np.save(os.path.join(d, "greedy.npy"), new.numpy().astype(np.int64))
        tensors = sorted(n for n, _ in model.named_parameters())
        print(f"{case}: logits {tuple(logits.shape)}, greedy {new.tolist()}, {len(set(new.tolist()))} distinct, "
              f"{len(tensors)} params", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
