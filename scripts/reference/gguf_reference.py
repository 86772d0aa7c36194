#!/usr/bin/env python3
"""GGUF reference data for kvformats' reader, computed with gguf-py (the llama.cpp project's Python
package), so the Rust reader and dequantisation are checked against an independent implementation.

  gguf_reference.py synth OUTDIR
      Writes OUTDIR/synth.gguf with gguf.GGUFWriter: metadata of every value type (and nested
      arrays), alignment 64, and one tensor per supported ggml type filled with random block bytes
      (f16 scale fields replaced by sane finite values). Reads the file back with gguf.GGUFReader,
      dequantises every tensor with gguf.quants.dequantize and writes OUTDIR/reference.json plus one
      raw little-endian f32 file per tensor.

  gguf_reference.py dump GGUF OUTDIR [TENSOR ...]
      Reads an existing GGUF with gguf.GGUFReader; writes OUTDIR/reference.json (every metadata
      value with its type, every tensor's name/type/dims/absolute offset/size) and, for each named
      tensor, its gguf-py dequantisation as raw f32.

reference.json layout: {"version", "metadata": {key: typed}, "tensors": [{"name", "type",
"dims" (innermost first), "data_offset" (absolute), "n_bytes", "f32" (file name or null)}]}, where
typed = {"t": "u8"|...|"string"|"array", "v": value or list of typed}.
"""
import json
import sys
from pathlib import Path

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q, GGUFValueType as V
    from gguf.quants import dequantize
except ImportError as e:  # the Rust test shows this message
    sys.exit(f"gguf_reference.py: cannot import numpy/gguf-py ({e}); install numpy and gguf==0.19.0 into the KVBENCH_PYTHON environment")

TYPE_NAMES = {
    V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32", V.INT32: "i32",
    V.UINT64: "u64", V.INT64: "i64", V.FLOAT32: "f32", V.FLOAT64: "f64", V.BOOL: "bool",
    V.STRING: "string", V.ARRAY: "array",
}

# Byte offsets of the f16 scale fields inside one block of each quantised type (ggml-common.h).
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}


def typed(vtype, value, sub=None):
    """JSON form of a value as written; f32 values are rounded to what the file holds."""
    if vtype == V.ARRAY:
        return {"t": "array", "v": [typed(sub[0], x, sub[1:]) for x in value]}
    if vtype == V.FLOAT32:
        value = float(np.float32(value))
    return {"t": TYPE_NAMES[vtype], "v": value}


def synth(outdir: Path):
    rng = np.random.default_rng(20240611)
    meta = [
        ("test.u8", V.UINT8, 250, None),
        ("test.i8", V.INT8, -120, None),
        ("test.u16", V.UINT16, 65000, None),
        ("test.i16", V.INT16, -32000, None),
        ("test.u32", V.UINT32, 4_000_000_000, None),
        ("test.i32", V.INT32, -2_000_000_000, None),
        ("test.u64", V.UINT64, 2**64 - 3, None),
        ("test.i64", V.INT64, -(2**63) + 5, None),
        ("test.f32", V.FLOAT32, 0.1, None),
        ("test.f64", V.FLOAT64, -1.0e300 / 3.0, None),
        ("test.bool_true", V.BOOL, True, None),
        ("test.bool_false", V.BOOL, False, None),
        ("test.string", V.STRING, "héllo, wörld ✓ \u4e2d\u6587", None),
        ("test.empty_string", V.STRING, "", None),
        ("test.array_u8", V.ARRAY, [0, 1, 255], [V.UINT8]),
        ("test.array_i32", V.ARRAY, [-5, 0, 7, 2**31 - 1], [V.INT32]),
        ("test.array_f32", V.ARRAY, [0.5, -1.25, 3.0e-8], [V.FLOAT32]),
        ("test.array_bool", V.ARRAY, [True, False, True], [V.BOOL]),
        ("test.array_string", V.ARRAY, ["a", "", "<|im_start|>", "Ġworld"], [V.STRING]),
        ("test.array_nested", V.ARRAY, [[1, 2], [3], [4, 5, 6]], [V.ARRAY, V.INT32]),
    ]
    path = outdir / "synth.gguf"
    w = gguf.GGUFWriter(str(path), "synthetic")
    w.add_custom_alignment(64)
    for key, vtype, value, sub in meta:
        if vtype == V.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=sub[0])
        else:
            w.add_key_value(key, value, vtype)
    expected_meta = {key: typed(vtype, value, sub) for key, vtype, value, sub in meta}
    expected_meta["general.architecture"] = {"t": "string", "v": "synthetic"}
    expected_meta["general.alignment"] = {"t": "u32", "v": 64}

    def random_blocks(qtype, rows, cols):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        for off in F16_FIELDS[qtype]:
            scale = (rng.uniform(1e-3, 2.0, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)).astype(np.float16)
            raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        return raw.reshape(rows, cols // block * size)

    specials = np.array([0.0, -0.0, 1e-40, -3.5e-39, 65504.0, 1e30], dtype=np.float32)
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    f32.flat[: len(specials)] = specials
    w.add_tensor("t.f32", f32)
    w.add_tensor("t.f32_3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
    f16 = (rng.standard_normal((3, 64)) * 100).astype(np.float16)
    f16.flat[:4] = np.array([0.0, -0.0, 6e-8, -65504.0], dtype=np.float16)  # incl. an f16 subnormal
    w.add_tensor("t.f16", f16)
    bf16 = (rng.standard_normal((3, 64)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("t.bf16", bf16.view(np.uint8), raw_dtype=Q.BF16)
    for qtype in F16_FIELDS:
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        w.add_tensor(f"t.{qtype.name.lower()}", random_blocks(qtype, 3, 2 * block), raw_dtype=qtype)
    w.add_tensor("t.q8_0_1d", random_blocks(Q.Q8_0, 1, 64).reshape(-1), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(str(path))
    write_reference(outdir, reader, [t.name for t in reader.tensors], expected_meta)


def reader_metadata(reader):
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # gguf-py's pseudo-fields for the header
            continue
        vtype = field.types[0]
        if vtype == V.ARRAY:
            if len(field.types) != 2:
                raise SystemExit(f"{name}: nested arrays are not supported by GGUFReader.contents()")
            sub = field.types[1]
            out[name] = {"t": "array", "v": [{"t": TYPE_NAMES[sub], "v": x} for x in field.contents()]}
        else:
            out[name] = {"t": TYPE_NAMES[vtype], "v": field.contents()}
    return out


def write_reference(outdir: Path, reader, names, metadata):
    wanted = set(names)
    tensors = []
    for i, t in enumerate(reader.tensors):
        entry = {
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "data_offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
            "f32": None,
        }
        if t.name in wanted:
            values = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            if values.size != t.n_elements:
                raise SystemExit(f"{t.name}: gguf-py gave {values.size} values for {t.n_elements} elements")
            entry["f32"] = f"tensor{i}.f32"
            values.astype("<f4").tofile(outdir / entry["f32"])
            wanted.discard(t.name)
        tensors.append(entry)
    if wanted:
        raise SystemExit(f"tensors not in the file: {sorted(wanted)}")
    version = int(reader.fields["GGUF.version"].parts[-1][0])
    with open(outdir / "reference.json", "w", encoding="utf-8") as f:
        json.dump({"version": version, "metadata": metadata, "tensors": tensors}, f, allow_nan=False,
                  ensure_ascii=False)


def main(argv):
    if len(argv) >= 2 and argv[0] == "synth":
        synth(Path(argv[1]))
    elif len(argv) >= 3 and argv[0] == "dump":
        reader = gguf.GGUFReader(argv[1])
        write_reference(Path(argv[2]), reader, argv[3:], reader_metadata(reader))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
