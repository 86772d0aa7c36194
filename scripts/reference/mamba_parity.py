"""Reference outputs from Hugging Face transformers for kvbench's Mamba (v1) parity test.

  mamba_parity.py OUT_DIR

Creates small random-initialised `MambaForCausalLM` models (pure-torch path on CPU, f32), saves
each with `save_pretrained(..., safe_serialization=True)` under OUT_DIR/<case>, and writes:

  OUT_DIR/input_ids.npy          int64 [64]       the input, shared by all cases
  OUT_DIR/<case>/logits.npy      float32 [64, V]  full-sequence logits (no cache)
  OUT_DIR/<case>/greedy.npy      int64 [32]       32 greedy tokens after the input (generate(),
                                                  cross-checked against a no-cache argmax loop)
  OUT_DIR/<case>_mamba_ssm/      the same weights in the original mamba_ssm layout
                                 (config.json with d_model/n_layer/ssm_cfg, pytorch_model.bin)

The Rust test kvcore/tests/mamba_parity.rs compares. Runs offline: nothing is downloaded.
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
    # Standard layout: tied lm_head (absent from the safetensors), no in/out projection bias,
    # time_step_rank "auto" (= ceil(hidden / 16)).
    # out_proj is scaled up 6x: at the default scale the embedding dominates the residual stream
    # and greedy decoding just repeats one token, which would test little.
    "tied": (dict(hidden_size=64, num_hidden_layers=3, state_size=16, conv_kernel=4, expand=2,
                  use_bias=False, use_conv_bias=True, tie_word_embeddings=True), 6.0),
    # The other switches: untied lm_head, projection biases, explicit time_step_rank, other
    # state/kernel sizes.
    "untied_bias": (dict(hidden_size=48, num_hidden_layers=2, state_size=8, conv_kernel=3, expand=2,
                         time_step_rank=5, use_bias=True, use_conv_bias=True, tie_word_embeddings=False), 1.0),
}


def build(extra, out_proj_scale):
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=VOCAB, layer_norm_epsilon=1e-5, use_mambapy=False, use_cache=True,
                      pad_token_id=0, bos_token_id=0, eos_token_id=0, **extra)
    torch.manual_seed(7)
    model = MambaForCausalLM(cfg).to(torch.float32)
    # The default init leaves norms at 1, D at 1, A_log at log(1..N) on every channel and biases
    # at 0, which would hide bugs in both implementations: perturb everything.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith(".D"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("dt_proj.bias"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("out_proj.weight"):
                p.mul_(out_proj_scale)
    model.eval()
    return model


def write_mamba_ssm_copy(model, d):
    """The same weights in the original mamba_ssm layout (as havenhq/mamba-chat publishes):
    config.json with d_model/n_layer/ssm_cfg and an unpadded vocab_size (997, padded back to the
    embedding's 1000 rows by pad_vocab_size_multiple 8), pytorch_model.bin written by torch.save
    with `backbone.embedding.weight` (tied heads saved as a second view of the same storage)."""
    c = model.config
    os.makedirs(d, exist_ok=True)
    import json
    cfg = {"d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": VOCAB - 3,
           "ssm_cfg": {"d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
                       "dt_rank": c.time_step_rank, "bias": c.use_bias, "conv_bias": c.use_conv_bias},
           "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
           "pad_vocab_size_multiple": 8, "tie_embeddings": c.tie_word_embeddings}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=gen)
    np.save(os.path.join(out_dir, "input_ids.npy"), ids[0].numpy().astype(np.int64))
    for case, (extra, out_proj_scale) in CASES.items():
        model = build(extra, out_proj_scale)
        assert not any(m.training for m in model.modules())
        d = os.path.join(out_dir, case)
        model.save_pretrained(d, safe_serialization=True)
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0].float()
        np.save(os.path.join(d, "logits.npy"), logits.numpy().astype(np.float32))

        # Greedy continuation through generate() (prefill, then the MambaCache one token at a
        # time). eos_token_id=None: no early stop on a random model, exactly NEW tokens.
        new = greedy_via_generate(model, ids, NEW, case)
        np.save(os.path.join(d, "greedy.npy"), new.numpy().astype(np.int64))
        write_mamba_ssm_copy(model, os.path.join(out_dir, case + "_mamba_ssm"))
        tensors = sorted(n for n, _ in model.named_parameters())
        print(f"{case}: logits {tuple(logits.shape)}, greedy {new.tolist()[:8]}..., {len(tensors)} params",
              file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
