"""Reference token ids for kvbench's GGUF tokenizer parity test.

Usage: tokenizer_reference.py --gguf MODEL.gguf --out result.json [--lines N] [--text T ...]

Loads the tokenizer that transformers builds from the GGUF (`AutoTokenizer.from_pretrained(dir,
gguf_file=name)`) and encodes the parity corpus (parity_corpus.py) or the given --text strings:

* `raw_special`: `tok(text).input_ids`, transformers' defaults (special tokens added, special-token
  text matched); `raw_plain`: `tok(text, add_special_tokens=False, split_special_tokens=True)`.
* `ref_special` / `ref_plain`: the same with transformers' backend tokenizer after the corrections
  listed in `corrections`, each derived from the GGUF metadata where transformers 5.2's GGUF
  converter departs from it (see `correct()`); `ref_decoded`: its decode of `ref_special`.
* `causes[i]`: why `raw_*` differs from `ref_*` on line i ([] when equal); "unexplained" means a
  difference no correction accounts for, which the Rust test rejects.
"""

import argparse
import json
import os
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import gguf
    import regex
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, processors
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
except ImportError as e:  # the Rust test shows this message
    sys.exit(f"tokenizer_reference.py needs transformers, tokenizers, gguf and regex: {e}")

import parity_corpus

CONTROL, USER_DEFINED = 3, 4
# Where GPT-2's regex alone (transformers) and smollm's digit-first split part ways: GPT-2 gives the
# whitespace character before a number to the number (" ?\p{N}+", "\s+(?!\S)"), so a run of two or
# more whitespace characters before a numeric character is split differently, and a space before a
# non-ASCII numeric character (①, ½, Ⅸ) is merged with its first byte ("Ġâ").
WS_RUN_BEFORE_NUMERIC = regex.compile(r"\s{2,}(?=\p{N})")
SPACE_BEFORE_NON_ASCII_NUMERIC = regex.compile(r"\s(?=(?![0-9])\p{N})")


def gguf_tokenizer_meta(path):
    reader = gguf.GGUFReader(path)
    get = lambda key: reader.fields[key].contents() if key in reader.fields else None
    return {
        "pre": get("tokenizer.ggml.pre"),
        "tokens": get("tokenizer.ggml.tokens"),
        "types": get("tokenizer.ggml.token_type"),
        "add_bos": bool(get("tokenizer.ggml.add_bos_token")),
        "add_eos": bool(get("tokenizer.ggml.add_eos_token")),
        "bos_id": get("tokenizer.ggml.bos_token_id"),
    }


def correct(backend, meta):
    """A copy of transformers' backend tokenizer that follows the GGUF metadata; returns it and the
    list of corrections applied, plus the special-token strings transformers failed to register."""
    fixed = Tokenizer.from_str(backend.to_str())
    applied = []
    if meta["pre"] == "smollm" and "Digits" not in backend.to_str():
        # SmolLM2's own tokenizer.json (and llama.cpp's `smollm`) split digits before GPT-2's regex;
        # transformers' GGUFLlamaConverter (chosen because general.architecture = llama) uses
        # ByteLevel's regex only.
        fixed.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
        applied.append("pre_tokenizer: Digits(individual) + ByteLevel, as tokenizer.ggml.pre = smollm")
    if not meta["add_bos"] and not meta["add_eos"] and '"TemplateProcessing"' in backend.to_str():
        # GGUFLlamaConverter prepends BOS through a TemplateProcessing although add_bos_token = false.
        fixed.post_processor = processors.ByteLevel(trim_offsets=False)
        applied.append("post_processor: no BOS, as tokenizer.ggml.add_bos_token = false")
    registered = set(fixed.get_added_tokens_decoder()[i].content for i in fixed.get_added_tokens_decoder())
    missing = [t for t, ty in zip(meta["tokens"], meta["types"]) if ty in (CONTROL, USER_DEFINED) and t not in registered]
    if missing:
        # GGUFQwen2Converter registers only <|endoftext|>, <|im_start|>, <|im_end|>.
        fixed.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in missing])
        applied.append(f"added tokens: {len(missing)} control/user-defined tokens of tokenizer.ggml.token_type")
    return fixed, applied, missing


def causes_for(text, raw, ref, extra_bos, missing, pre, special):
    """`extra_bos`: the BOS id transformers prepends against the GGUF's add_bos_token, or None."""
    if raw == ref:
        return []
    causes = []
    if special and extra_bos is not None and raw[:1] == [extra_bos]:
        causes.append("leading BOS")
        raw = raw[1:]
    if raw != ref:
        if special and any(t in text for t in missing):
            causes.append("unregistered special token")
        elif pre == "smollm" and WS_RUN_BEFORE_NUMERIC.search(text):
            causes.append("whitespace run before a numeric character")
        elif pre == "smollm" and SPACE_BEFORE_NON_ASCII_NUMERIC.search(text):
            causes.append("whitespace before a non-ASCII numeric character")
        else:
            causes.append("unexplained")
    return causes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--text", action="append", help="encode these strings instead of the corpus")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()

    meta = gguf_tokenizer_meta(args.gguf)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf))
    ref, corrections, missing = correct(tok.backend_tokenizer, meta)
    extra_bos = meta["bos_id"] if any(c.startswith("post_processor") for c in corrections) else None
    ref_plain_tok = Tokenizer.from_str(ref.to_str())
    ref_plain_tok.encode_special_tokens = True

    lines = args.text if args.text else parity_corpus.corpus(args.lines)
    out = {"transformers_class": type(tok).__name__, "corrections": corrections, "lines": []}
    for text in lines:
        raw_special = tok(text).input_ids
        raw_plain = tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
        ref_special = ref.encode(text, add_special_tokens=True).ids
        ref_plain = ref_plain_tok.encode(text, add_special_tokens=False).ids
        out["lines"].append({
            "text": text,
            "nfc": unicodedata.normalize("NFC", text),
            "raw_special": raw_special,
            "raw_plain": raw_plain,
            "ref_special": ref_special,
            "ref_plain": ref_plain,
            "ref_decoded": ref.decode(ref_special, skip_special_tokens=False),
            "hf_decoded": tok.decode(raw_special, skip_special_tokens=False),
            "causes_special": causes_for(text, raw_special, ref_special, extra_bos, missing, meta["pre"], True),
            "causes_plain": causes_for(text, raw_plain, ref_plain, extra_bos, missing, meta["pre"], False),
        })
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
