"""Reference outputs from BlinkDL's `rwkv` package (0.8.32, strategy 'cpu fp32') for kvbench's
RWKV-5/6 parity test.

  rwkv_parity.py OUT_DIR

Creates small random RWKV checkpoints in the published `.pth` layout (torch.save of a flat dict of
tensors, key names and shapes as the RWKV-LM trainers write them), every parameter perturbed so
bugs cannot hide behind default inits, saves each as OUT_DIR/<case>/model.pth, and writes:

  OUT_DIR/input_ids.npy         int64 [64]       the input, shared by all cases
  OUT_DIR/<case>/logits.npy     float32 [64, V]  forward(ids, None, full_output=True)
  OUT_DIR/<case>/greedy.npy     int64 [32]       32 greedy tokens: forward(ids) once, then one
                                                 token at a time through the package's state
  OUT_DIR/<case>/case.json      what the case is (for the Rust test's messages and checks)

Also OUT_DIR/v6_safetensors/model.safetensors: the v6 case's tensors under the same names, and
OUT_DIR/broken/model.pth: the v6 case without `blocks.1.ffn.value.weight`.
kvcore/tests/rwkv_parity.rs compares. Runs offline: nothing is downloaded.
"""
import json
import os
import sys

os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ.pop("RWKV_V7_ON", None)

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("KVBENCH_REF_THREADS", "2")))

VOCAB = 1000
SEQ = 64
NEW = 32

CASES = {
    # RWKV-6: attention width = n_embd, 4 heads of 16, LoRA ranks 8 (mix) and 16 (decay).
    "v6": dict(version=6, n_embd=64, dim_att=64, head_size=16, dim_ffn=224, n_layer=3, mix_rank=8, decay_rank=16,
               faaaa=True, time_state=False, bf16_matrices=False, odd_layout=False),
    # RWKV-5.2: 6 heads of 8; matrices stored in bf16 (as published),
    # some tensors saved as non-contiguous views (transposed, offset into a larger storage).
    "v5": dict(version=5, n_embd=48, dim_att=48, head_size=8, dim_ffn=160, n_layer=2,
               faaaa=True, time_state=False, bf16_matrices=True, odd_layout=True),
    # RWKV-5.2 with the older `time_first` (ln u) name and a tuned initial state (`time_state`).
    "v5_first_state": dict(version=5, n_embd=32, dim_att=32, head_size=16, dim_ffn=96, n_layer=2,
                           faaaa=False, time_state=True, bf16_matrices=False, odd_layout=False),
}


def build(c, gen):
    """The state dict, in the trainers' key order."""
    C, A, N, F, L = c["n_embd"], c["dim_att"], c["head_size"], c["dim_ffn"], c["n_layer"]
    H = A // N
    randn = lambda *s: torch.randn(*s, generator=gen)
    rand = lambda *s: torch.rand(*s, generator=gen)
    mat = lambda o, i, scale=1.0: randn(o, i) * (scale / i ** 0.5)
    w = {"emb.weight": randn(VOCAB, C)}
    for l in range(L):
        p = f"blocks.{l}."
        if l == 0:
            w[p + "ln0.weight"] = 1 + 0.2 * randn(C)
            w[p + "ln0.bias"] = 0.2 * randn(C)
        for ln in ("ln1", "ln2"):
            w[p + ln + ".weight"] = 1 + 0.2 * randn(C)
            w[p + ln + ".bias"] = 0.2 * randn(C)
        # Decay exponents spread over channels (slow to fast), plus noise.
        decay = torch.linspace(-5.0, 0.5, A) + 0.5 * randn(A)
        if c["version"] == 6:
            for m in "xwkvrg":
                w[p + f"att.time_maa_{m}"] = rand(1, 1, C)
            R, D = c["mix_rank"], c["decay_rank"]
            w[p + "att.time_maa_w1"] = 0.5 * randn(C, 5 * R) / C ** 0.5
            w[p + "att.time_maa_w2"] = 0.5 * randn(5, R, C)
            w[p + "att.time_decay"] = decay.view(1, 1, A)
            w[p + "att.time_decay_w1"] = 0.5 * randn(C, D) / C ** 0.5
            w[p + "att.time_decay_w2"] = 0.5 * randn(D, A)
        else:
            for m in "kvrg":
                w[p + f"att.time_mix_{m}"] = rand(1, 1, C)
            w[p + "att.time_decay"] = decay.view(H, N)
        if c["faaaa"]:
            w[p + "att.time_faaaa"] = 0.5 * randn(H, N)
        else:
            w[p + "att.time_first"] = 0.5 * randn(H, N)
        if c["time_state"]:
            w[p + "att.time_state"] = 0.3 * randn(H, N, N)
        for m in ("receptance", "key", "value"):
            w[p + f"att.{m}.weight"] = mat(A, C)
        w[p + "att.output.weight"] = mat(C, A, 2.0)
        w[p + "att.gate.weight"] = mat(A, C)
        w[p + "att.ln_x.weight"] = 1 + 0.2 * randn(A)
        w[p + "att.ln_x.bias"] = 0.2 * randn(A)
        if c["version"] == 6:
            w[p + "ffn.time_maa_k"] = rand(1, 1, C)
            w[p + "ffn.time_maa_r"] = rand(1, 1, C)
        else:
            w[p + "ffn.time_mix_k"] = rand(1, 1, C)
            w[p + "ffn.time_mix_r"] = rand(1, 1, C)
        w[p + "ffn.key.weight"] = mat(F, C)
        w[p + "ffn.receptance.weight"] = mat(C, C)
        w[p + "ffn.value.weight"] = mat(C, F, 2.0)
    w["ln_out.weight"] = 1 + 0.2 * randn(C)
    w["ln_out.bias"] = 0.2 * randn(C)
    w["head.weight"] = mat(VOCAB, C, 3.0)
    if c["bf16_matrices"]:
        # The embedding stays f32: the package layer-norms it at load in the stored dtype.
        w = {k: (v.to(torch.bfloat16) if v.dim() == 2 and k != "emb.weight" else v) for k, v in w.items()}
    if c["odd_layout"]:
        # Same values, other layouts: a transposed view, and a slice at an offset of a larger storage.
        t = w["blocks.0.att.output.weight"]
        w["blocks.0.att.output.weight"] = t.t().contiguous().t()
        v = w["blocks.1.ln1.weight"]
        big = torch.cat([torch.zeros(5), v, torch.zeros(3)])
        w["blocks.1.ln1.weight"] = big[5:5 + v.numel()]
        assert not w["blocks.0.att.output.weight"].is_contiguous()
    return w


def main(out_dir):
    from rwkv.model import RWKV

    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (SEQ,), generator=gen).tolist()
    np.save(os.path.join(out_dir, "input_ids.npy"), np.array(ids, dtype=np.int64))
    for case, c in CASES.items():
        d = os.path.join(out_dir, case)
        os.makedirs(d, exist_ok=True)
        w = build(c, torch.Generator().manual_seed(7 + len(case)))
        torch.save(w, os.path.join(d, "model.pth"))
        if case == "v6":
            from safetensors.torch import save_file

            sd = os.path.join(out_dir, "v6_safetensors")
            os.makedirs(sd, exist_ok=True)
            save_file({k: v.contiguous() for k, v in w.items()}, os.path.join(sd, "model.safetensors"))
            bd = os.path.join(out_dir, "broken")
            os.makedirs(bd, exist_ok=True)
            torch.save({k: v for k, v in w.items() if k != "blocks.1.ffn.value.weight"}, os.path.join(bd, "model.pth"))
        model = RWKV(model=os.path.join(d, "model"), strategy="cpu fp32", verbose=False)
        want_version = 6.0 if c["version"] == 6 else 5.2
        assert model.version == want_version, f"{case}: the package detected v{model.version}, expected v{want_version}"
        with torch.no_grad():
            logits, _ = model.forward(ids, None, full_output=True)
            logits = logits.float()
            assert logits.shape == (SEQ, VOCAB), logits.shape
            # The package's own one-token path must agree with its sequence path.
            state = None
            worst = 0.0
            for t, tok in enumerate(ids):
                one, state = model.forward([tok], state)
                worst = max(worst, (one - logits[t]).abs().max().item())
            assert worst < 1e-4, f"{case}: the package's token-by-token logits differ from its sequence logits by {worst}"
            # Greedy: the prompt at once, then one token at a time.
            out, state = model.forward(ids, None)
            new = []
            for _ in range(NEW):
                tok = int(out.argmax())
                new.append(tok)
                out, state = model.forward([tok], state)
        np.save(os.path.join(d, "logits.npy"), logits.numpy().astype(np.float32))
        np.save(os.path.join(d, "greedy.npy"), np.array(new, dtype=np.int64))
        with open(os.path.join(d, "case.json"), "w") as f:
            json.dump(dict(c, vocab_size=VOCAB, package_version=model.version), f)
        print(f"{case}: v{model.version}, logits {tuple(logits.shape)}, one-token vs sequence {worst:.2e}, "
              f"greedy {new[:8]}..., {len(set(new))} distinct", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
