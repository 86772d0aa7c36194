"""Greedy tokens from BlinkDL's `rwkv` package PIPELINE.generate with PIPELINE_ARGS(top_p=0)
(the paper's RWKV decoding: the default presence/frequency penalties) over synthetic logits,
for kvbench's penalty test (kvcore/tests/rwkv_parity.rs).

  rwkv_penalties_reference.py OUT_JSON STEPS

The model is a stand-in whose logits are a fixed function of the step and the last token fed:
noise[j] = ((j * 2654435761 + last * 40503 + step * 97) mod 2^24) / 2^24 * 0.05 for every token,
plus a base of 10 + 0.15 k for the k-th of a few candidates (a space, digits, words, a newline,
the unknown id 0 and the last id), computed in float64 and rounded to float32, so the Rust side
computes the very same values. Without penalties the top candidate would win every step; with
them the choice rotates among the candidates, spaces and digits counting 0. The prompt is
"Hello" encoded by the World tokenizer. The tokens the pipeline chooses are recorded from its
own sample_logits. Writes OUT_JSON: {"vocab": path of rwkv_vocab_v20230424.txt, "prompt_last":
last prompt token, "candidates": [[id, base], ...], "tokens": [chosen token, ...]}.
"""
import json
import os
import sys

import numpy as np
import torch

import rwkv
from rwkv.utils import PIPELINE, PIPELINE_ARGS

VOCAB = 65536


CANDIDATES = []


def logits(step, last):
    j = np.arange(VOCAB, dtype=np.uint64)
    h = (j * np.uint64(2654435761) + np.uint64(last * 40503 + step * 97)) % np.uint64(1 << 24)
    x = h.astype(np.float64) / float(1 << 24) * 0.05
    for t, base in CANDIDATES:
        x[t] += base
    return torch.from_numpy(x.astype(np.float32))


class StandIn:
    """`forward(tokens, state)` as RWKV's: logits of the last token, and a state (the step)."""

    def forward(self, tokens, state):
        step = 0 if state is None else state + 1
        return logits(step, tokens[-1]), step


class Recording(PIPELINE):
    def __init__(self, *a):
        super().__init__(*a)
        self.chosen = []

    def sample_logits(self, *a, **k):
        t = super().sample_logits(*a, **k)
        self.chosen.append(t)
        return t


def main(out_path, steps):
    torch.manual_seed(0)
    np.random.seed(0)
    pipe = Recording(StandIn(), "rwkv_vocab_v20230424")
    prompt = pipe.encode("Hello")
    ids = [pipe.encode(t)[0] for t in [" ", "1", "23", "7", "\n", " the", "Hello"]] + [0, VOCAB - 1]
    CANDIDATES.extend((t, 10.0 + 0.15 * k) for k, t in enumerate(ids))
    pipe.generate("Hello", token_count=steps, args=PIPELINE_ARGS(top_p=0))
    vocab = os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"vocab": vocab, "prompt_last": prompt[-1], "candidates": CANDIDATES, "tokens": pipe.chosen}, f)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]))
