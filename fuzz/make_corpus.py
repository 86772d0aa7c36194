#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (fuzz/corpus/<target>/) from real files:
the SmolLM2-135M GGUF header (metadata arrays trimmed, tensors shrunk), one small GGUF per ggml
type, safetensors files and index JSONs, the repository's configs, a quickstart run's records,
plugin handshakes, torch.save pickles (with torch, when importable) and World vocabulary lines.
Otherwise standard library only; deterministic; re-run it to refresh the seeds.

    python3 fuzz/make_corpus.py [--gguf PATH_TO_SmolLM2-135M-Instruct.Q4_1.gguf] [--run RUN_DIR]

Without --gguf the SmolLM2 file is looked up in $KVBENCH_HOME/models and ~/.cache/kvbench/models;
when absent, the SmolLM2 seeds already in the corpus are kept.
"""

import argparse
import glob
import json
import os
import random
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

# --- GGUF -----------------------------------------------------------------------------------

# (type id, name, elements per block, bytes per block)
GGML_TYPES = [
    (0, "F32", 1, 4), (1, "F16", 1, 2), (30, "BF16", 1, 2),
    (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20), (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34), (12, "Q4_K", 256, 144), (13, "Q5_K", 256, 176), (14, "Q6_K", 256, 210),
    # sized but not dequantised: the reader must open the file and refuse only the tensor
    (10, "Q2_K", 256, 84), (20, "IQ4_NL", 32, 18),
]
SIZES = {t[0]: (t[2], t[3]) for t in GGML_TYPES}
SIZES.update({9: (32, 36), 11: (256, 110), 15: (256, 292)})


class GgufReader:
    """Just enough of a GGUF v2/v3 reader to copy a header."""

    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.p)
        self.p += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.d[self.p:self.p + n]
        self.p += n
        return s

    def value(self, t):
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
        if t in scalar:
            return self.take(scalar[t])
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("I"), self.take("Q")
            return (et, [self.value(et) for _ in range(n)])
        raise ValueError(f"value type {t}")

    def header(self):
        assert self.d[:4] == b"GGUF"
        self.p = 4
        version, nt, nkv = self.take("I"), self.take("Q"), self.take("Q")
        kvs = []
        for _ in range(nkv):
            k = self.string()
            t = self.take("I")
            kvs.append((k, t, self.value(t)))
        tensors = []
        for _ in range(nt):
            name = self.string()
            nd = self.take("I")
            dims = [self.take("Q") for _ in range(nd)]
            tensors.append((name, dims, self.take("I"), self.take("Q")))
        align = 32
        for k, t, v in kvs:
            if k == b"general.alignment":
                align = v
        data_start = (self.p + align - 1) // align * align
        return version, kvs, tensors, data_start


def enc_value(t, v):
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    if t in scalar:
        return struct.pack("<" + scalar[t], v)
    if t == 8:
        return struct.pack("<Q", len(v)) + v
    if t == 9:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(enc_value(et, x) for x in items)
    raise ValueError(t)


def header_bytes(version, kvs, infos, align=32):
    """The header: kvs (key bytes, type, value), tensor infos (name bytes, dims, type id, offset),
    padded to the alignment."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs)))
    for k, t, v in kvs:
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + enc_value(t, v)
    for name, dims, ty, offset in infos:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)
    return bytes(out + b"\0" * ((-len(out)) % align))


def gguf_bytes(kvs, tensors, version=3, align=32):
    """A whole file; tensors: (name bytes, dims, type id, data bytes), laid out in order."""
    offset, infos, blobs = 0, [], []
    for name, dims, ty, blob in tensors:
        infos.append((name, dims, ty, offset))
        pad = (-len(blob)) % align
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad
    return header_bytes(version, kvs, infos, align) + b"".join(blobs)


def tensor_size(dims, ty):
    block, size = SIZES[ty]
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def trim_kvs(kvs, keep=64):
    """Arrays cut to their first `keep` items (the 49152-token vocabulary would be 1 MB)."""
    out = []
    for k, t, v in kvs:
        if t == 9:
            v = (v[0], v[1][:keep])
        out.append((k, t, v))
    return out


def smollm2_seeds(path, out):
    data = open(path, "rb").read()
    version, kvs, tensors, data_start = GgufReader(data).header()
    kvs = trim_kvs(kvs)
    first_layer = [t for t in tensors if t[0].startswith(b"blk.0.") or not t[0].startswith(b"blk.")]
    # 1. The real header (trimmed metadata, the real tensor table of layer 0 and the top-level
    #    tensors) without the data: the reader must refuse every tensor as beyond the file.
    table = header_bytes(version, kvs, first_layer)
    write(out, "smollm2-header-no-data.gguf", table)
    # 2. The same metadata with layer 0's tensors shrunk to one or two blocks per row, each holding
    #    the first bytes of the real tensor's data: a file that opens and dequantises.
    small = []
    for name, dims, ty, off in first_layer:
        block, _ = SIZES[ty]
        new_dims = [max(block, min(dims[0], block))] + ([2] if len(dims) > 1 else [])
        n = tensor_size(new_dims, ty)
        start = data_start + off
        small.append((name, new_dims, ty, data[start:start + n]))
    write(out, "smollm2-tiny.gguf", gguf_bytes(kvs, small, version))
    # 3. Metadata only (the tokenizer arrays included): the metadata getters' seed.
    write(out, "smollm2-metadata.gguf", gguf_bytes(kvs, [], version))


def gguf_seeds(out):
    rng = random.Random(11)
    meta = [(b"general.architecture", 8, b"llama"), (b"general.alignment", 4, 32)]
    for ty, name, block, size in GGML_TYPES:
        blob = bytes(rng.randrange(256) for _ in range(2 * size))
        if name in ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
            # keep the f16 scales finite and small: 0x3c00 = 1.0, 0x3800 = 0.5
            blob = bytearray(blob)
            for b in range(2):
                blob[b * size:b * size + 2] = b"\x00\x38"
            blob = bytes(blob)
        tensors = [(f"t.{name.lower()}".encode(), [block, 2], ty, blob)]
        write(out, f"tiny-{name}.gguf", gguf_bytes(meta, tensors))
        # the direct dequantisation path: [type id, mode, block bytes]
        for mode in range(4):
            write(out, f"dequant-{name}-{mode}.bin", bytes([ty, mode]) + blob)
    # every metadata value type, nested arrays, v2, a non-default alignment
    kvs = [
        (b"u8", 0, 1), (b"i8", 1, -1), (b"u16", 2, 2), (b"i16", 3, -2), (b"u32", 4, 3), (b"i32", 5, -3),
        (b"f32", 6, 0.5), (b"bool", 7, True), (b"str", 8, "é".encode()), (b"u64", 10, 4), (b"i64", 11, -4),
        (b"f64", 12, 0.25), (b"arr", 9, (9, [(4, [1, 2]), (8, [b"a", b"b"])])),
        (b"general.alignment", 4, 64),
    ]
    q8 = bytes([0, 0x3c]) + bytes(range(32))
    write(out, "all-value-types-v2.gguf", gguf_bytes(kvs, [(b"a", [32], 8, q8), (b"b", [4, 1, 1, 1], 0, b"\0" * 16)], 2, 64))


# --- safetensors --------------------------------------------------------------------------------

def safetensors_bytes(tensors, metadata=None, pad_to=8):
    """tensors: (name, dtype, shape, data bytes), laid out in order."""
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % pad_to)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def safetensors_seeds(out):
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    write(out, "llama-like.safetensors", safetensors_bytes([
        ("model.embed_tokens.weight", "F32", [2, 2], f32),
        ("model.layers.0.input_layernorm.weight", "BF16", [2], b"\x80\x3f\x00\x40"),
        ("model.layers.0.self_attn.q_proj.weight", "F16", [2, 1], b"\x00\x3c\x00\xc0"),
        ("model.norm.weight", "F64", [1], struct.pack("<d", 1.0)),
    ], {"format": "pt"}))
    write(out, "ints-bool-empty.safetensors", safetensors_bytes([
        ("empty", "F32", [0, 3], b""),
        ("flag", "BOOL", [2], b"\x01\x00"),
        ("ids", "I64", [2], struct.pack("<2q", 7, -7)),
        ("pos", "I32", [1], struct.pack("<i", 3)),
        ("bytes", "U8", [3], b"abc"),
        ("scalar", "F32", [], struct.pack("<f", 2.0)),
    ]))
    write(out, "subbyte-fp8.safetensors", safetensors_bytes([
        ("f4", "F4", [4], b"\x12\x34"),
        ("f8", "F8_E4M3", [2], b"\x38\x40"),
        ("c64", "C64", [1], b"\0" * 8),
    ], {}))
    write(out, "no-tensors.safetensors", safetensors_bytes([], {"a": "b"}))
    try:  # the reference writer (its header padding and key order), when the test venv has it
        import numpy as np
        from safetensors.numpy import save
        write(out, "reference-writer.safetensors", save({
            "model.layers.0.mlp.up_proj.weight": np.arange(6, dtype=np.float16).reshape(3, 2),
            "model.layers.0.self_attn.k_proj.bias": np.array([1.5, -1.5], dtype=np.float32),
            "position_ids": np.array([[0, 1, 2]], dtype=np.int64),
        }, metadata={"format": "pt"}))
    except ImportError:
        print("numpy/safetensors not importable: keeping the committed reference-writer seed", file=sys.stderr)
    index = {
        "metadata": {"total_size": 538090408},
        "weight_map": {
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.mlp.down_proj.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        },
    }
    write(out, "model.safetensors.index.json", json.dumps(index, indent=2).encode())
    write(out, "index-escapes.json", b'{"weight_map":{"a":"../x.safetensors","b":7}}')


# --- configs, runs, plugins -----------------------------------------------------------------------

def config_seeds(out):
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.toml"), recursive=True)):
        rel = os.path.relpath(path, os.path.join(ROOT, "configs")).replace(os.sep, "-")
        write(out, rel, open(path, "rb").read())
    write(out, "inline-methods.toml", b'''name = "inline"
models = ["tiny-random", "smollm2-135m"]
tasks = ["passkey-quick", "ruler-niah-1k"]
methods = ["full", "kivi-2bit", "my-h2o", "snapkv"]
ratios = [2, 4.5, 8]
plugins = []

[[method]]
name = "my-h2o"
preset = "h2o"
params = { ratio = 4, decode_evict = false, storage = { method = "kivi", bits = 2 } }

[run]
threads = 2
device = "cuda:1"
seed = 7
prefill_chunk = 512
query_aware = true
''')
    write(out, "shard.txt", b"1/4")


def jsonl_seeds(out, run):
    cells = sorted(glob.glob(os.path.join(run, "cells", "*")))
    for cell in cells[:6]:
        name = os.path.basename(cell)
        lines = open(os.path.join(cell, "records.jsonl"), "rb").read().splitlines(keepends=True)
        write(out, f"records-{name}.jsonl", b"".join(lines[:2]))
        write(out, f"cell-{name}.json", open(os.path.join(cell, "cell.json"), "rb").read())
    write(out, "run.json", open(os.path.join(run, "run.json"), "rb").read())
    if cells:
        lines = open(os.path.join(cells[0], "records.jsonl"), "rb").read().splitlines(keepends=True)
        # a crash mid-write: the last line cut short
        write(out, "records-truncated.jsonl", lines[0] + lines[1][: len(lines[1]) // 2])
        # the same sample twice, a blank line, CRLF
        write(out, "records-duplicate-crlf.jsonl", lines[0].rstrip(b"\n") + b"\r\n\n" + lines[0])


def plugin_seeds(out):
    def handshake(abi, n, strings):
        return struct.pack("<II", abi, n) + b"\0".join(strings)

    params = "\n".join([
        "ratio\t4\tkeep 1/N of the context tokens per head (the paper's N\u00d7); 1 = no compression",
        "tokens\t(unset)\tkeep this many tokens per head instead (absolute per-layer budget)",
        "decode_evict\ttrue\tkeep the cache at its budget while decoding",
        "panic\tfalse\tpanic while building (tests the boundary)",
    ]).encode()
    method = [b"example-recent", b"example-external",
              b"template external plugin: keep the newest tokens (a sliding window)",
              b"Keeps the newest floor(S/N) tokens per head after prefill and slides while decoding.", params]
    write(out, "example-external", handshake(1, 1, [b"0.1.0", b"2.13.0"] + method))
    write(out, "two-methods", handshake(1, 2, [b"0.1.0", b"2.13.0"] + method + [b"second", b"", b"", b"", b"a\tb"]))
    write(out, "version-skew", handshake(1, 1, [b"0.0.1", b"2.13.0"] + [b"version-skew fixture"] * 5))
    write(out, "abi-2", handshake(2, 0, [b"0.1.0", b"2.13.0"]))
    write(out, "null-fields", handshake(1, 3, [b"0.1.0", b"2.13.0", b"\xff", b"m", b"\xff"]))
    write(out, "many-methods", handshake(1, 0xFFFFFFFF, [b"0.1.0", b"2.13.0"]))


# --- torch.save pickles, World vocabularies -----------------------------------------------------

def torch_pickle_seeds(out):
    """data.pkl of real torch.save files (needs torch; without it the committed seeds are kept):
    a dict of f32/bf16/f16/int64 tensors, an OrderedDict (as state_dict() returns), two tensors
    viewing one storage (a tied head), a transposed and an offset view, an empty tensor."""
    try:
        import collections
        import io
        import zipfile
        import torch
    except ImportError:
        print("torch not importable: keeping the committed torch_pickle seeds", file=sys.stderr)
        return

    def pkl(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))

    torch.manual_seed(0)
    w = torch.randn(4, 6)
    write(out, "rwkv-like", pkl({"emb.weight": torch.randn(8, 4), "blocks.0.att.time_maa_x": torch.rand(1, 1, 4),
                                 "blocks.0.att.key.weight": torch.randn(4, 4).bfloat16(), "head.weight": torch.randn(8, 4).half()}))
    write(out, "ordered-dict", pkl(collections.OrderedDict([("a", torch.zeros(3)), ("b", torch.arange(5)), ("c", torch.ones(2, 2, dtype=torch.bool))])))
    emb = torch.randn(10, 4)
    write(out, "tied", pkl({"backbone.embedding.weight": emb, "lm_head.weight": emb}))
    write(out, "views", pkl({"t": w.t(), "row": w[2], "tail": w.view(-1)[5:17], "empty": torch.zeros(0, 3)}))


def world_vocab_seeds(out):
    """Vocabulary lines in rwkv_vocab_v20230424.txt's format (str and bytes literals, escapes,
    Chinese, tokens longer than one byte), a NUL, then a text the target encodes with them."""
    write(out, "ascii", b"257 'ab' 2\n258 'abc' 3\n259 ' the' 4\n\0abc the abcab the")
    write(out, "escapes", b"300 '\\n\\n' 2\n301 b'\\xe4\\xb8' 2\n302 '\\'s' 2\n303 \"it's\" 4\n\0it's\n\n\xe4\xb8\xad's")
    write(out, "unicode", "400 '\u4e2d\u6587' 6\n401 '\\u4e2d' 3\n\0\u4e2d\u6587 \u4e2d".encode())
    write(out, "text", b"\0The cat sat on the mat.\n  def f(x):\n      return x\n")


# --- main -----------------------------------------------------------------------------------------

def write(out, name, data):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def find_smollm2():
    homes = [os.environ.get("KVBENCH_HOME", ""), os.path.expanduser("~/.cache/kvbench"), os.path.join(ROOT, ".kvbench")]
    for h in homes:
        hits = sorted(glob.glob(os.path.join(h, "models", "smollm2-135m", "*.gguf"))) if h else []
        if hits:
            return hits[0]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="the SmolLM2-135M GGUF (default: the kvbench model cache)")
    ap.add_argument("--run", default=os.path.join(ROOT, "runs", "quickstart"), help="a run directory")
    args = ap.parse_args()
    gguf = args.gguf or find_smollm2()
    for target, fill in [
        ("gguf", gguf_seeds), ("safetensors", safetensors_seeds), ("config", config_seeds),
        ("plugin_handshake", plugin_seeds), ("torch_pickle", torch_pickle_seeds), ("world_vocab", world_vocab_seeds),
    ]:
        fill(os.path.join(CORPUS, target))
    if gguf:
        smollm2_seeds(gguf, os.path.join(CORPUS, "gguf"))
    else:
        print("SmolLM2 GGUF not found: keeping the committed SmolLM2 seeds", file=sys.stderr)
    if os.path.isdir(args.run):
        jsonl_seeds(os.path.join(CORPUS, "jsonl"), args.run)
    else:
        print(f"{args.run}: no run directory: keeping the committed jsonl seeds", file=sys.stderr)
    total = 0
    for target in sorted(os.listdir(CORPUS)):
        files = glob.glob(os.path.join(CORPUS, target, "*"))
        size = sum(os.path.getsize(f) for f in files)
        total += size
        print(f"{target}: {len(files)} files, {size} bytes")
    print(f"total: {total} bytes")


if __name__ == "__main__":
    main()
