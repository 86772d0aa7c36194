"""Reference ids from BlinkDL's `rwkv` package (TRIE_TOKENIZER) for kvbench's World tokenizer test.

  world_tokenizer_reference.py IN_JSON OUT_JSON

IN_JSON: {"texts": [str, ...], "byte_strings": [hex str, ...]}. Writes OUT_JSON:
{"vocab": path of rwkv_vocab_v20230424.txt in the installed package,
 "texts": [[id, ...], ...]          TRIE_TOKENIZER.encode(text) for each text,
 "byte_strings": [[id, ...], ...]   encodeBytes(bytes) for each byte string,
 "decoded_hex": [hex str, ...]}     decodeBytes(ids) of each text's ids (must give the text back).

kvformats/tests/world_tokenizer.rs compares. Runs offline: the vocabulary ships inside the package.
"""
import json
import os
import sys

from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
import rwkv


def main(in_path, out_path):
    vocab = os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt")
    tok = TRIE_TOKENIZER(vocab)
    with open(in_path, encoding="utf-8") as f:
        inp = json.load(f)
    texts = [tok.encode(t) for t in inp["texts"]]
    byte_strings = [tok.encodeBytes(bytes.fromhex(h)) for h in inp["byte_strings"]]
    decoded = [tok.decodeBytes(ids).hex() for ids in texts]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"vocab": vocab, "texts": texts, "byte_strings": byte_strings, "decoded_hex": decoded}, f)
    print(f"{len(texts)} texts, {len(byte_strings)} byte strings, vocab {len(tok.idx2token)} tokens", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
