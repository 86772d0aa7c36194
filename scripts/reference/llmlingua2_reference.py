"""Reference outputs for kvbench's LLMLingua-2 tests (kvcore/tests/llmlingua.rs).

  llmlingua2_reference.py model OUT_DIR
      Builds, offline, a tiny random-initialised XLM-RoBERTa token classifier in
      OUT_DIR/tiny-xlm-roberta-large-random/ (config.json, model.safetensors, tokenizer.json):
      a Unigram tokenizer trained here with the `tokenizers` library (XLM-R's layout: Metaspace
      pre-tokenizer, <s> <pad> </s> <unk> at ids 0..3, <mask>, then llmlingua's [NEW0]..[NEW99]
      force-token placeholders, so `resize_token_embeddings` is a no-op), and transformers'
      XLMRobertaForTokenClassification logits over a padded batch (parity_ids.npy,
      parity_mask.npy, parity_logits.npy).

  llmlingua2_reference.py compress MODEL_DIR OUT_JSON RATIO...
      Runs llmlingua==0.2.2's compress_prompt_llmlingua2 with the paper's arguments on the texts
      of TEXTS (written to OUT_JSON too) at each keep rate 1/RATIO, and records the compressed
      prompt, the per-word labels and the token counts.

Why the directory name contains "xlm-roberta-large": llmlingua picks its word-merging rules by
looking for that string in the model name.

Why tiktoken is patched: PromptCompressor.__init__ calls tiktoken.encoding_for_model
("gpt-3.5-turbo"), which downloads the cl100k_base ranks from the internet; tests run offline.
llmlingua uses that encoder for (1) the reported origin/compressed token counts and (2) the
weight of each word in the percentile threshold (each word's probability is repeated once per
GPT token of the word). The stand-in counts with the compressor's own tokenizer instead: the
word's tokens under the tiny model's tokenizer.json, at least 1. kvbench's Rust implementation
uses exactly that counter (documented there as a deviation: cl100k_base is not available offline),
so the comparison checks the same algorithm on both sides. nltk is imported by llmlingua but only
used by other compression modes, so it needs no patch.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("KVBENCH_REF_THREADS", "2")))

MODEL_SUBDIR = "tiny-xlm-roberta-large-random"
N_FORCE = 100  # llmlingua's max_force_token: [NEW0]..[NEW99]

# The paper's call (paper-protocol.md §2.5).
FORCE_TOKENS = ["\n", ".", "!", "?", ","]
CHUNK_END_TOKENS = [".", "\n"]

CORPUS = """The committee met on Tuesday to review the budget for the coming year. Members asked
whether the new library could open before the winter, and the chair said the contractor had
promised a date in October. Several residents spoke about traffic near the school; one parent
asked for a crossing guard, another for lower speed limits. The council agreed to study both.
In other business, the parks department reported that the summer programme served more children
than ever before, and that volunteers planted two hundred trees along the river. Questions?
Yes! How much will the bridge repair cost, and who will pay for it? The engineer estimated the
cost at four million dollars, shared between the city and the state. Motion carried, seven to two.
Meeting notes: attendance, budget, library, traffic, parks, bridge, adjournment at nine o'clock.
Alice wrote the minutes; Bob checked the numbers; Carol read them aloud to the audience.
"""

# The texts: plain prose, punctuation-heavy, newlines, repeated punctuation (drop_consecutive),
# one long enough to need several 512-token chunks, and NO_END.
LONG = " ".join(
    f"Item {i}: the {w} report was discussed, and members agreed to revisit it next week."
    for i, w in zip(range(120), ["budget", "library", "traffic", "parks", "bridge", "school"] * 20)
)
# More than 512 tokens with no chunk-end token: chunks are cut at 511 tokens and re-tokenized.
NO_END = ", ".join(f"alpha{i % 7} beta{i % 5} gamma" for i in range(160))
TEXTS = [
    "The committee met on Tuesday to review the budget for the coming year and agreed to study the traffic near the school before the winter.",
    "Questions? Yes! How much will the bridge cost, and who pays: the city, the state, or both? The engineer said: four million dollars.",
    "Meeting notes\nattendance: seven members\nbudget: approved\n\nlibrary: opens in October\nparks: two hundred trees planted\n",
    "Wait... really?! Yes!!! The motion carried,,, seven to two.... Then, then, the chair spoke. Adjourned!!\n\n\nEnd.",
    LONG,
    NO_END,
]


def model_dir(out_dir):
    return os.path.join(out_dir, MODEL_SUBDIR)


def build_tokenizer(d):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    # XLM-R's sentencepiece normaliser maps all whitespace to spaces and collapses runs of them.
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Replace(Regex(r"[\t\n\r\f\v]"), " "),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False,
    )
    tok.train_from_iterator([CORPUS] + TEXTS, trainer=trainer)
    tok.add_special_tokens(["<mask>"] + [f"[NEW{i}]" for i in range(N_FORCE)])
    assert [tok.token_to_id(t) for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
            "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
            "model_max_length": 512,
        }, f, indent=1)
    return tok.get_vocab_size(with_added_tokens=True)


def model(out_dir):
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    d = model_dir(out_dir)
    os.makedirs(d, exist_ok=True)
    vocab = build_tokenizer(d)
    cfg = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, num_labels=2, hidden_act="gelu", architectures=["XLMRobertaForTokenClassification"],
    )
    torch.manual_seed(11)
    m = XLMRobertaForTokenClassification(cfg).eval()
    # Default init leaves LayerNorms at 1/0 and biases at 0, which would hide bugs in them: perturb all.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    m.save_pretrained(d, safe_serialization=True)

    # A padded batch: right padding with <pad> (id 1, so positions skip it) and llmlingua's own
    # padding (its dataset pads with "[PAD]", which XLM-R maps to <unk>, id 3, masked out).
    gen = torch.Generator().manual_seed(5)
    lens = [512, 300, 37, 5]
    ids = torch.full((len(lens), 512), 1, dtype=torch.long)
    mask = torch.zeros((len(lens), 512), dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, :n] = torch.randint(4, vocab, (n,), generator=gen)
        ids[b, 0] = 0
        ids[b, n - 1] = 2
        mask[b, :n] = 1
    ids[2, 37:] = 3  # llmlingua-style padding
    with torch.no_grad():
        logits = m(input_ids=ids, attention_mask=mask).logits
    np.save(os.path.join(out_dir, "parity_ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(out_dir, "parity_mask.npy"), mask.numpy().astype(np.int64))
    np.save(os.path.join(out_dir, "parity_logits.npy"), logits.numpy().astype(np.float32))


class _CompressorTokenCounter:
    """tiktoken stand-in: counts tokens with the compressor's tokenizer.json (see the docstring)."""

    def __init__(self, tokenizer_json):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_json)

    def encode(self, text, *args, **kwargs):
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ids if ids else [0]


def compress(model_path, out_json, ratios):
    import tiktoken

    counter = _CompressorTokenCounter(os.path.join(model_path, "tokenizer.json"))
    tiktoken.encoding_for_model = lambda name: counter  # offline; see the module docstring
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=model_path, device_map="cpu", use_llmlingua2=True)
    assert len(pc.tokenizer) == pc.model.config.vocab_size, "the [NEW*] tokens must already be in the vocabulary"
    results = []
    for r in ratios:
        for i, text in enumerate(TEXTS):
            res = pc.compress_prompt_llmlingua2(
                [text], rate=1 / r, force_tokens=FORCE_TOKENS, chunk_end_tokens=CHUNK_END_TOKENS,
                return_word_label=True, drop_consecutive=True,
            )
            pairs = [w.rsplit(" ", 1) for w in res["fn_labeled_original_prompt"].split("\t\t|\t\t")]
            results.append({
                "ratio": r, "text_index": i,
                "compressed_prompt": res["compressed_prompt"],
                "words": [p[0] for p in pairs], "labels": [int(p[1]) for p in pairs],
                "origin_tokens": res["origin_tokens"], "compressed_tokens": res["compressed_tokens"],
                "n_model_tokens": len(pc.tokenizer.tokenize(text)),
            })
    with open(out_json, "w") as f:
        json.dump({"texts": TEXTS, "force_tokens": FORCE_TOKENS, "results": results}, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "model":
        model(sys.argv[2])
    elif cmd == "compress":
        compress(sys.argv[2], sys.argv[3], [float(x) for x in sys.argv[4:]])
    else:
        sys.exit(f"unknown command {cmd}")
