//! Fuzzes the GGUF reader (header, metadata, tensor table, dequantisation) and the GGUF
//! tokenizer metadata: an input starting with `GGUF` is a whole file; any other input drives
//! `dequantize` directly (byte 0 picks the ggml type, byte 1 how the sizes are given).
#![no_main]

use kvformats::gguf::{dequantize, GgmlType, GgufFile};
use kvformats::tokenizer::{tokenizer_json, GgufTokenizerSpec};
use libfuzzer_sys::fuzz_target;

/// Most f32 values one input may make the harness produce (the reader already bounds every
/// tensor by the file's length; this keeps each execution fast).
const MAX_ELEMENTS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"GGUF") {
        file(data);
    } else {
        kernels(data);
    }
});

fn file(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else { return };
    let mut budget = MAX_ELEMENTS;
    for t in &f.tensors {
        // The reader promised these ranges lie inside the file.
        let bytes = f.tensor_bytes(&t.name).expect("a tensor accepted at open time has its bytes");
        assert_eq!(bytes.len() as u64, t.n_bytes);
        assert!(f.tensor_info(&t.name).is_some());
        let _ = t.torch_shape();
        let n = t.n_elements();
        if n > budget {
            continue;
        }
        budget -= n;
        match f.dequantize_f32(&t.name) {
            Ok(v) => assert_eq!(v.len() as u64, n),
            Err(e) => {
                assert!(!t.ggml_type.can_dequantize(), "{} {:?}: {e}", t.ggml_type, t.dims);
                assert!(e.to_string().contains("fuzz.gguf"), "{e}");
            }
        }
    }
    for (key, value) in &f.metadata {
        let _ = (f.meta_u64(key), f.meta_f64(key), f.meta_str(key), f.meta_bool(key), f.meta_string_array(key));
        let _ = (value.to_string(), value.type_name(), value.as_i64());
    }
    let _ = (f.architecture(), f.meta_u64("missing.key"), f.tensor_bytes("missing.tensor"));
    if let Ok(spec) = GgufTokenizerSpec::from_gguf(&f) {
        let _ = (spec.token(0), spec.bos_token(), spec.eos_token());
        let _ = tokenizer_json(&spec);
    }
}

fn kernels(data: &[u8]) {
    let [ty, mode, rest @ ..] = data else { return };
    let ty = GgmlType::from_id(u32::from(*ty) % 48);
    let (Some(block), Some(size)) = (ty.block_size(), ty.type_size()) else {
        assert!(!ty.can_dequantize());
        return;
    };
    let blocks = rest.len() / size;
    let whole = rest.get(..blocks * size).unwrap_or_default();
    let n = blocks * block;
    let ok = ty.can_dequantize();
    match mode % 4 {
        // Consistent sizes: must succeed for every supported type.
        0 => {
            let mut out = vec![0f32; n];
            assert_eq!(dequantize(ty, whole, n, &mut out).is_ok(), ok);
        }
        // One element more than the bytes hold (not a whole block, or one block short).
        1 => {
            let mut out = vec![0f32; n + 1];
            assert!(dequantize(ty, whole, n + 1, &mut out).is_err());
        }
        // All the bytes, whole blocks or not.
        2 => {
            let mut out = vec![0f32; n];
            assert_eq!(dequantize(ty, rest, n, &mut out).is_ok(), ok && rest.len() == whole.len());
        }
        // An output of the wrong length.
        _ => {
            let mut out = vec![0f32; n / 2];
            assert_eq!(dequantize(ty, whole, n, &mut out).is_ok(), ok && n == 0);
        }
    }
}
